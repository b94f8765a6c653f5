"""Subject–verb agreement experiment: data, model, correlation helper and the --quick pipeline."""

import csv
from dataclasses import asdict

import numpy as np
import pytest
import torch

from captum_attnflow.evaluation import per_example_spearman
from captum_attnflow.experiments.sva.cli import build_parser, main
from captum_attnflow.experiments.sva.data import (
    CLS,
    EOS,
    GROUP_FILES,
    PAD,
    UNK,
    Example,
    Vocabulary,
    collate,
    load_examples,
    parse_line,
    split_examples,
)
from captum_attnflow.experiments.sva.evaluate import BatchCorrelator, BatchScores, reference_keys
from captum_attnflow.experiments.sva.model import SvaConfig, SvaTransformer
from captum_attnflow.experiments.sva.protocol import AUTHORS_LOG, FACTORS, METHODS, PAPER, PROTOCOLS, configurations
from captum_attnflow.experiments.sva.report import RESULT_COLUMNS
from captum_attnflow.experiments.sva.runs import RunData, load_run, save_run
from captum_attnflow.experiments.sva.tables import Selection, cell_table, finding_rows, lookup, result_rows
from captum_attnflow.experiments.sva.train import TrainSettings, stratified_subset


@pytest.fixture(scope="module")
def examples():
    return load_examples()


def _toy_examples(n_per_group=30):
    return [Example(tokens=("the", f"w{i % 7}", group), label=i % 2, group=group)
            for group in GROUP_FILES for i in range(n_per_group)]


# --------------------------------------------------------------------------- data


def test_parse_line():
    assert parse_line("VBZ\tthe dog\n", "1") == Example(("the", "dog"), 0, "1")
    assert parse_line("VBP\tthe dogs", "random").label == 1
    assert parse_line("", "1") is None
    assert parse_line("XYZ\tthe dog", "1") is None
    assert parse_line("VBZ\t   ", "1") is None


def test_load_examples_covers_every_group(examples):
    groups = {ex.group for ex in examples}
    assert groups == set(GROUP_FILES)
    assert len(examples) > 80_000
    assert {ex.label for ex in examples} == {0, 1}


def test_split_is_deterministic_disjoint_and_stratified(examples):
    first = split_examples(examples, seed=0)
    second = split_examples(examples, seed=0)
    other = split_examples(examples, seed=1)
    assert first.test == second.test and first.train == second.train
    assert first.test != other.test
    assert len(first.train) + len(first.validation) + len(first.test) == len(examples)
    assert len(first.test) >= 2000
    test_ids = {id(ex) for ex in first.test}
    assert not test_ids & {id(ex) for ex in first.train}
    assert not test_ids & {id(ex) for ex in first.validation}
    test_groups = first.sizes_by_group()["test"]
    assert set(test_groups) == set(GROUP_FILES)
    assert min(test_groups.values()) >= 50


def test_stratified_subset_keeps_every_group():
    subset = stratified_subset(_toy_examples(100), 60, seed=0)
    assert {ex.group for ex in subset} == set(GROUP_FILES)
    assert subset == stratified_subset(_toy_examples(100), 60, seed=0)


def test_vocabulary_and_collate():
    train = [Example(("a", "b", "a"), 0, "1"), Example(("a", "c"), 1, "1")]
    vocab = Vocabulary.build(train, min_count=2)
    assert vocab.itos[:4] == [PAD, CLS, UNK, EOS] and vocab.pad_id == 0
    assert "a" in vocab.stoi and "b" not in vocab.stoi
    assert vocab.encode(["a", "zzz"]) == [vocab.cls_id, vocab.stoi["a"], vocab.unk_id]
    assert vocab.encode(["a"], end_token=True) == [vocab.cls_id, vocab.stoi["a"], vocab.eos_id]
    batch = collate(train, vocab)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["input_ids"][1, 3] == vocab.pad_id
    assert batch["labels"].tolist() == [0, 1]
    with_end = collate(train, vocab, end_token=True)
    assert with_end["input_ids"][1].tolist() == [vocab.cls_id, vocab.stoi["a"], vocab.unk_id, vocab.eos_id, 0]


# --------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return SvaTransformer(SvaConfig(vocab_size=20, num_layers=3, num_heads=2, hidden_size=16, max_positions=12,
                                    embedding_dropout=0.0, attention_dropout=0.0, residual_dropout=0.0)).eval()


def test_model_shapes_and_attention_rows(tiny_model):
    ids = torch.randint(3, 20, (4, 7))
    logits, attentions = tiny_model(ids, output_attentions=True)
    assert logits.shape == (4, 2)
    assert len(attentions) == 3
    for layer in attentions:
        assert layer.shape == (4, 2, 7, 7)
        assert torch.allclose(layer.sum(-1), torch.ones(4, 2, 7), atol=1e-5)
    assert tiny_model(ids).shape == (4, 2)


def test_padding_does_not_change_real_tokens(tiny_model):
    ids = torch.randint(3, 20, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], dim=1).long()
    logits, attentions = tiny_model(ids, output_attentions=True)
    padded_logits, padded_attentions = tiny_model(padded, attention_mask=mask, output_attentions=True)
    assert torch.allclose(logits, padded_logits, atol=1e-5)
    for plain, with_pad in zip(attentions, padded_attentions):
        assert torch.allclose(plain, with_pad[:, :, :5, :5], atol=1e-5)
        assert torch.all(with_pad[..., 5:] == 0)


def test_flow_matrices_are_the_flow_of_every_real_row_after_every_layer(tiny_model):
    from captum_attnflow.experiments.sva.evaluate import attention_matrices
    from captum_attnflow.functional import attention_flow, attention_rollout

    ids = torch.randint(3, 20, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0  # the second example is padded
    timings = {"attention": 0.0, "flow": 0.0}
    matrices = attention_matrices(tiny_model, ids, mask, "networkx", timings)
    _, attentions = tiny_model(ids, attention_mask=mask, output_attentions=True)
    assert matrices["flow"].shape == matrices["rollout"].shape == (3, 2, 6, 6)
    for example, length in ((0, 6), (1, 4)):
        single = [layer[example:example + 1, :, :length, :length] for layer in attentions]
        for layer in range(3):
            for row in range(length):
                expected = attention_flow(single, token_index=row, layer=layer, backend="networkx")[0]
                assert torch.allclose(matrices["flow"][layer, example, row, :length], expected, atol=1e-5)
        assert torch.allclose(matrices["rollout"][:, example, :length, :length],
                              attention_rollout(single)[:, 0], atol=1e-5)
    assert torch.all(matrices["flow"][:, 1, 4:] == 0)  # rows of padding
    assert timings["flow"] > 0


def test_embeddings_are_token_plus_position(tiny_model):
    ids = torch.randint(3, 20, (2, 6))
    expected = tiny_model.get_input_embeddings()(ids) + tiny_model.embeddings.position.weight[:6][None]
    assert torch.allclose(tiny_model.embeddings(ids), expected)


def test_protocol_dropouts_reach_the_layers():
    settings = TrainSettings.for_protocol("authors")
    model = SvaTransformer(SvaConfig(vocab_size=10, embedding_dropout=settings.embedding_dropout,
                                     attention_dropout=settings.attention_dropout,
                                     residual_dropout=settings.residual_dropout, init_std=settings.init_std))
    block = model.blocks[0]
    assert (model.dropout.p, block.attention.dropout.p, block.dropout.p, block.mlp[-1].p) == (0.2, 0.6, 0.4, 0.4)
    assert model.classifier.weight.std().item() == pytest.approx(0.05, rel=0.5)


# --------------------------------------------------------------------------- pipeline


def test_quick_settings_are_small():
    quick = TrainSettings.for_protocol("authors", quick=True)
    assert quick.subset is not None and quick.subset <= 1000 and quick.hidden_size < 128
    assert quick.end_token and quick.attention_dropout == 0.6  # the protocol's model choices stay


@pytest.mark.slow  # end to end: trains and evaluates tiny models (about 15 s)
def test_quick_pipeline_end_to_end(tmp_path):
    out = tmp_path / "runs"
    argv = ["all", "--quick", "--seeds", "0", "1", "--out", str(out), "--no-progress", "--threads", "1",
            "--bootstrap", "200"]
    assert main(argv) == 0
    results = out / "results"  # the default: never the committed docs/results
    for name in ("sva.md", "sva_correlations.png", "sva_correlations.csv", "sva_ablation.csv", "sva_findings.csv"):
        assert (results / name).is_file()
    for protocol in ("authors", "library"):
        for seed in (0, 1):
            assert (out / protocol / f"seed{seed}" / "checkpoint.pt").is_file()
    with open(results / "sva_correlations.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == RESULT_COLUMNS
    layers = TrainSettings.for_protocol("library", quick=True).num_layers
    pooled = [r for r in rows if r["seed"] == "all"]
    assert len(pooled) == 2 * 2 * 2 * 3 * layers  # protocols x [CLS] variants x references x methods
    assert len(rows) == 3 * len(pooled)  # pooled + one row per seed
    for row in pooled:
        assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
    cell = {(r["protocol"], r["cls_variant"], r["reference"], r["method"], r["layer"]): float(r["mean"])
            for r in pooled}
    for protocol in ("authors", "library"):
        # Layer-1 flow from [CLS] is layer-1 rollout (normalised): same ranking, same correlation.
        assert cell[(protocol, "with_cls", "blank_out", "flow", "1")] == pytest.approx(
            cell[(protocol, "with_cls", "blank_out", "rollout", "1")], abs=1e-9)
    # Without [CLS] (and no end token), raw attention ranks the inputs like them too.
    assert cell[("library", "without_cls", "blank_out", "raw", "1")] == pytest.approx(
        cell[("library", "without_cls", "blank_out", "rollout", "1")], abs=1e-9)
    with open(results / "sva_ablation.csv") as handle:
        ablation = list(csv.DictReader(handle))
    switched = {(r["protocol"], r["factor"]) for r in ablation}
    assert ("authors", "gradient_reducer") in switched and ("authors", "model") in switched
    assert ("library", "ranks") in switched and ("library", "rank_end_token") not in switched
    assert not any(r["factor"] == "blank_out_class" for r in ablation)  # no effect with two classes
    # Switching the reducer leaves blank-out cells alone.
    assert all(float(r["delta"]) == 0 for r in ablation
               if r["factor"] == "gradient_reducer" and r["reference"] == "blank_out")
    markdown = (results / "sva.md").read_text()
    assert "## The two protocols, factor by factor" in markdown and "attention_flow.ipynb@d28ddd5" in markdown


@pytest.mark.slow  # end to end: trains and evaluates one tiny model
def test_report_rebuilds_from_stored_runs_without_training(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    assert main(["all", "--quick", "--protocol", "library", "--seeds", "3", "--out", str(out), "--no-progress",
                 "--threads", "1", "--bootstrap", "50", "--n-eval", "30"]) == 0
    monkeypatch.setattr("captum_attnflow.experiments.sva.cli.train_run", _fail)
    monkeypatch.setattr("captum_attnflow.experiments.sva.cli.evaluate_run", _fail)
    assert main(["report", "--protocol", "library", "--seeds", "3", "--out", str(out), "--results-dir",
                 str(tmp_path / "again"), "--bootstrap", "50"]) == 0
    assert (tmp_path / "again" / "sva.md").is_file()


def _fail(*args, **kwargs):
    raise AssertionError("the report must not train or evaluate")


@pytest.mark.parametrize("bad", [["--flow-backend", "nope"], ["--n-eval", "0"], ["--seeds", "1", "1"],
                                 ["--epochs", "0"], ["--time-budget", "-1"], ["--protocol", "mine"],
                                 ["--data-dir", "/nonexistent/linzen"]])
def test_bad_options_fail_before_any_work(tmp_path, monkeypatch, bad, capsys):
    monkeypatch.setattr("captum_attnflow.experiments.sva.cli.train_run", _fail)
    with pytest.raises(SystemExit) as exit_info:
        main(["all", "--quick", "--out", str(tmp_path / "runs"), *bad])
    assert exit_info.value.code == 2
    assert bad[0] in capsys.readouterr().err or "data" in bad[0]
    assert not (tmp_path / "runs").exists()


def test_evaluate_without_checkpoints_says_what_to_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--out", str(tmp_path), "--seeds", "0"])
    message = capsys.readouterr().err
    assert "checkpoint.pt" in message and "train" in message


def test_every_option_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest


# --------------------------------------------------------------------------- protocol and tables


def test_protocols_follow_the_factor_table():
    for factor in FACTORS:
        for name in ("library", "authors"):
            protocol = PROTOCOLS[name]
            expected = getattr(factor, name)
            if factor.name == "dropout":
                model = protocol.model
                actual = (model.embedding_dropout, model.attention_dropout, model.residual_dropout)
            else:
                actual = getattr(protocol.model if factor.stage == "model" else protocol.evaluation, factor.name)
            assert actual == expected, (name, factor.name)
            assert expected in factor.values


def test_variations_switch_exactly_one_factor():
    for _name, protocol in PROTOCOLS.items():
        configs = configurations(protocol)
        base = asdict(configs.pop("base"))
        cross = configs.pop("cross")
        for label, choices in configs.items():
            changed = [key for key, value in asdict(choices).items() if value != base[key]]
            assert changed == [label.split("=")[0]], label
        assert cross.rank_end_token is False
    assert "rank_end_token=False" in configurations(PROTOCOLS["authors"])
    assert "rank_end_token=True" not in configurations(PROTOCOLS["library"])  # no end token to rank


def test_the_authors_log_undone_matches_the_paper():
    # The running means printed by the authors' notebook, undone, give the paper's tables back.
    for reference, methods in AUTHORS_LOG.items():
        for method, values in methods.items():
            assert max(abs(a - b) for a, b in zip(values, PAPER[reference][method])) <= 0.06


def _random_batch_scores(seed=0, batch=6, seq_len=7, layers=2):
    generator = torch.Generator().manual_seed(seed)
    real = torch.ones(batch, seq_len, dtype=torch.bool)
    real[1, 5:] = False
    real[4, 3:] = False
    end_token = torch.zeros_like(real)
    end_token[torch.arange(batch), real.sum(1) - 1] = True
    tied = lambda: torch.randint(0, 4, (layers, batch, seq_len), generator=generator).float()  # noqa: E731
    methods = {relevance: {method: tied() for method in METHODS} for relevance in ("cls", "max", "mean")}
    references = {("blank_out", "unk", "gold"): torch.rand(batch, seq_len, generator=generator),
                  ("blank_out", "pad", "gold"): torch.rand(batch, seq_len, generator=generator)}
    for reducer in ("l2", "sum_abs", "grad_x_input"):
        references[("input_gradients", reducer)] = torch.randint(0, 3, (batch, seq_len), generator=generator).float()
    return BatchScores(methods=methods, references=references, real=real, end_token=end_token)


def test_batch_correlator_matches_per_example_spearman():
    scores = _random_batch_scores()
    correlator = BatchCorrelator(scores)
    for protocol in PROTOCOLS.values():
        for choices in configurations(protocol).values():
            result = correlator.correlate(choices)
            for (variant, reference, method, layer), values in result.items():
                ranked = scores.real & (~scores.end_token if not choices.rank_end_token else scores.real)
                if variant == "without_cls":
                    ranked = ranked.clone()
                    ranked[:, 0] = False
                expected = per_example_spearman(
                    scores.methods[choices.relevance][method][layer - 1],
                    scores.references[reference_keys(choices)[reference]], ranked,
                    ranks=choices.ranks, formula=choices.formula)
                np.testing.assert_allclose(values, expected, equal_nan=True)


def test_cell_tables_select_examples_and_count_undefined():
    groups = np.array(["random", "1", "random"])
    correlations = {"base": {("with_cls", "blank_out", "flow", 1): np.array([0.5, 0.9, np.nan])}}
    run = RunData(protocol="authors", seed=0, settings=TrainSettings(), train_log={}, accuracy={}, timings={},
                  eval_time_s=0.0, groups=groups, correlations=correlations)
    cell = ("with_cls", "blank_out", "flow", 1)
    assert np.allclose(cell_table([run], Selection("base", "all", "exclude"), cell), [[0.5, 0.9, np.nan]],
                       equal_nan=True)
    assert np.allclose(cell_table([run], Selection("base", "natural", "zero"), cell), [[0.5, np.nan, 0.0]],
                       equal_nan=True)


# Synthetic per-layer levels of each method (2 layers): raw falls, rollout rises, flow sits below rollout.
LEVELS = {"raw": (0.6, 0.1), "rollout": (0.3, 0.5), "flow": (0.3, 0.4)}


def _synthetic_run(seed, groups, rng):
    correlations = {"base": {}}
    for variant in ("with_cls", "without_cls"):
        for reference in ("blank_out", "input_gradients"):
            for method, levels in LEVELS.items():
                for layer, level in enumerate(levels, start=1):
                    values = level + 0.05 * rng.standard_normal(groups.size)
                    values[seed::7] = np.nan  # undefined correlations, different ones per seed
                    correlations["base"][(variant, reference, method, layer)] = values
    return RunData(protocol="authors", seed=seed, settings=TrainSettings(protocol="authors", seed=seed),
                   train_log={"epochs": []}, accuracy={}, timings={}, eval_time_s=1.0, groups=groups,
                   correlations=correlations)


def test_tables_from_a_small_synthetic_correlations_file(tmp_path):
    rng = np.random.default_rng(0)
    groups = np.array(["random", "1", "random", "2", "random", "random"] * 10)
    for seed in (0, 1):
        (tmp_path / f"seed{seed}").mkdir()
        save_run(_synthetic_run(seed, groups, rng), tmp_path / f"seed{seed}")
    runs = [load_run(tmp_path / f"seed{seed}") for seed in (0, 1)]
    rows = result_rows({"authors": runs}, n_resamples=300)
    pooled, seed1 = lookup(rows, seed="all"), lookup(rows, seed=1)
    assert len(pooled) == len(seed1) == 2 * 2 * 3 * 2
    natural = groups == "random"
    for key, row in pooled.items():
        cell = key[1:]
        # The authors' protocol: natural examples only, undefined correlations counted as 0.
        stored = [np.nan_to_num(run.correlations["base"][(*cell[:3], cell[3])][natural]) for run in runs]
        assert row["mean"] == pytest.approx(np.mean(stored))
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        assert row["n_examples"] == natural.sum()
        assert seed1[key]["mean"] == pytest.approx(np.mean(stored[1]))
        assert row["paper"] == PAPER[cell[1]][cell[2]][cell[3] - 1]
    findings = {(r["cls_variant"], r["reference"], r["finding"]): r["holds"] for r in finding_rows({"authors": runs})}
    # Levels differ by >= 0.1 against noise of 0.05 / sqrt(36): every sign is certain. With two
    # layers, "rise" (layer 6 vs 1) has no comparison and no row.
    assert ("with_cls", "blank_out", "rise") not in findings
    assert findings[("with_cls", "blank_out", "raw_layer1")]
    assert findings[("without_cls", "input_gradients", "beat_raw")]
    assert not findings[("with_cls", "blank_out", "flow_faster")]


def test_reduced_scale_is_stated_and_the_command_reproduces_it():
    from dataclasses import replace

    from captum_attnflow.experiments.sva.report import _scale_section, reproduce_command

    groups = np.array(["random", "1"] * 20)
    runs = []
    for seed in (0, 1, 2):
        run = _synthetic_run(seed, groups, np.random.default_rng(seed))
        run.settings = replace(run.settings, epochs=2, threads=1)
        run.train_log = {"epochs": [{}, {}]}
        run.accuracy = {"all": {"accuracy": 0.9, "n": 100}}
        runs.append(run)
    command = reproduce_command({"authors": runs})
    assert "--epochs 2" in command and "--n-eval 40" in command and "--protocol authors" in command
    args = build_parser().parse_args(command.split()[3:])  # after "python -m <module>"
    assert (args.epochs, args.n_eval, args.seeds, args.protocol) == (2, 40, [0, 1, 2], "authors")
    section = _scale_section({"authors": runs})
    assert "2 epochs" in section and "first 40 of the 100" in section
    for run in runs:  # full scale: nothing to state, nothing to add to the command
        run.settings = replace(run.settings, epochs=TrainSettings().epochs)
        run.accuracy = {"all": {"accuracy": 0.9, "n": 40}}
    assert _scale_section({"authors": runs}) == ""
    full = reproduce_command({"authors": runs})
    assert "--epochs" not in full and "--n-eval" not in full


def test_experiment_modules_import_without_cycles():
    import ast
    from pathlib import Path

    import captum_attnflow.experiments.sva as sva

    package = Path(sva.__file__).parent
    prefix = "captum_attnflow.experiments.sva"
    graph = {}
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
                names = [node.module[len(prefix) + 1:]] if node.module != prefix else [a.name for a in node.names]
                imported.update(names)
        graph[path.stem] = imported - {"__init__"}

    def reaches(start, target, seen=()):
        return any(dep == target or (dep not in seen and reaches(dep, target, (*seen, dep)))
                   for dep in graph.get(start, ()))

    assert {"runs", "report"} <= graph["cli"] and "tables" in graph["report"]  # the graph was read
    assert not [module for module in graph if reaches(module, module)]


def test_make_reproduce_runs_the_configuration_of_the_committed_results():
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    report = (root / "docs" / "results" / "sva.md").read_text()
    committed = re.search(r"From scratch at this scale: `([^`]+)`", report)
    assert committed, "docs/results/sva.md does not state its from-scratch command"
    makefile = (root / "Makefile").read_text()
    sva_args = re.search(r"^SVA_ARGS \?= (.*)$", makefile, re.M).group(1)
    recipe = re.search(r"^reproduce:.*\n\t(.*)$", makefile, re.M).group(1).replace("$(SVA_ARGS)", sva_args)
    parser = build_parser()
    made = parser.parse_args(shlex.split(recipe.split("captum_attnflow.experiments.sva", 1)[1]))
    stated = parser.parse_args(shlex.split(committed.group(1).split("captum_attnflow.experiments.sva", 1)[1]))
    assert vars(made) == vars(stated)
