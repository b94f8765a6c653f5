"""Subject–verb agreement experiment: data, model, correlation helper and the --quick pipeline."""

import csv

import pytest
import torch

from captum_attnflow.experiments.sva.cli import main
from captum_attnflow.experiments.sva.data import (
    CLS,
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
from captum_attnflow.experiments.sva.model import SvaConfig, SvaTransformer
from captum_attnflow.experiments.sva.report import CSV_COLUMNS
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
    assert vocab.itos[:3] == [PAD, CLS, UNK] and vocab.pad_id == 0
    assert "a" in vocab.stoi and "b" not in vocab.stoi
    assert vocab.encode(["a", "zzz"]) == [vocab.cls_id, vocab.stoi["a"], vocab.unk_id]
    batch = collate(train, vocab)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["input_ids"][1, 3] == vocab.pad_id
    assert batch["labels"].tolist() == [0, 1]


# --------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return SvaTransformer(SvaConfig(vocab_size=20, num_layers=3, num_heads=2, hidden_size=16,
                                    max_positions=12, dropout=0.0)).eval()


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


def test_inputs_embeds_matches_input_ids(tiny_model):
    ids = torch.randint(3, 20, (2, 6))
    embeds = tiny_model.get_input_embeddings()(ids)
    assert torch.allclose(tiny_model(ids), tiny_model(inputs_embeds=embeds), atol=1e-6)
    with pytest.raises(ValueError):
        tiny_model(ids, inputs_embeds=embeds)


# --------------------------------------------------------------------------- correlation


# --------------------------------------------------------------------------- pipeline


def test_quick_settings_are_small():
    quick = TrainSettings.quick()
    assert quick.subset is not None and quick.subset <= 1000 and quick.hidden_size < 128


@pytest.mark.slow
def test_quick_pipeline_end_to_end(tmp_path):
    assert main(["all", "--quick", "--out", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    for name in ("checkpoint.pt", "sva.md", "sva_correlations.png", "sva_correlations.csv"):
        assert (tmp_path / name).is_file()
    with open(tmp_path / "sva_correlations.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    num_layers = TrainSettings.quick().num_layers
    assert len(rows) == 3 * 3 * num_layers
    assert {r["reference"] for r in rows} == {"blank_out", "input_gradients", "integrated_gradients"}
    assert {r["method"] for r in rows} == {"raw", "rollout", "flow"}
    assert {int(r["layer"]) for r in rows} == set(range(1, num_layers + 1))
    assert all(int(r["n"]) > 0 and -1 <= float(r["mean"]) <= 1 for r in rows)
    # Layer-1 flow is layer-1 rollout (normalised), so their correlations agree.
    layer_one = {(r["reference"], r["method"]): float(r["mean"]) for r in rows if r["layer"] == "1"}
    assert layer_one[("blank_out", "flow")] == pytest.approx(layer_one[("blank_out", "rollout")], abs=1e-9)
    # Without [CLS], raw attention ranks the inputs like them too; with it, it does not.
    with open(tmp_path / "sva_correlations_without_cls.csv") as handle:
        variant = {(r["reference"], r["method"]): float(r["mean"]) for r in csv.DictReader(handle)
                   if r["layer"] == "1"}
    assert variant[("blank_out", "raw")] == pytest.approx(variant[("blank_out", "rollout")], abs=1e-9)
    assert layer_one[("blank_out", "raw")] != pytest.approx(layer_one[("blank_out", "rollout")], abs=1e-3)
