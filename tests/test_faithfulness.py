"""Faithfulness metrics on toy models with known answers, and the faithfulness experiment end to end."""

import csv

import numpy as np
import pytest
import torch
from torch import nn

from captum_attnflow.evaluation.faithfulness import (
    aopc,
    blank_out,
    blank_out_spearman,
    random_attributions,
    randomization_spearman,
    randomization_steps,
    randomized_copy,
    replace_tokens,
    zero_patches,
)
from captum_attnflow.evaluation.metrics import AOPC_BINS
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.experiments.faithfulness.methods import method_names, supported_edge_weights
from captum_attnflow.experiments.faithfulness.report import difference_rows, summary_rows, tables
from captum_attnflow.experiments.faithfulness.run import METRICS, TaskResult, evaluate_task

UNK = 0


def additive_model(weights: torch.Tensor):
    """score(ids) = Σ_i weights[ids_i]: removing token i changes the score by exactly weights[id_i] − weights[UNK]."""
    return lambda ids: weights[ids].sum(1).double()


@pytest.fixture()
def toy():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(20, generator=generator, dtype=torch.float64)
    weights[UNK] = 0.0
    ids = torch.randint(1, 20, (5, 9), generator=generator)
    eligible = torch.ones_like(ids, dtype=torch.bool)
    eligible[:, 0] = False  # a [CLS]-like position is never removed
    eligible[1, 6:] = False  # padding
    return weights, ids, eligible


def reference_aopc(contributions: np.ndarray, order_scores: np.ndarray, eligible: np.ndarray, bins) -> tuple:
    """Plain-numpy AOPC of an additive model: the drop is the sum of the removed contributions."""
    comprehensiveness, sufficiency = [], []
    for row in range(len(contributions)):
        positions = np.flatnonzero(eligible[row])
        ranked = positions[np.argsort(-order_scores[row, positions], kind="stable")]
        comp = suff = 0.0
        for fraction in bins:
            k = min(len(positions), max(1, int(np.ceil(fraction * len(positions) - 1e-9))))
            comp += contributions[row, ranked[:k]].sum()
            suff += contributions[row, ranked[k:]].sum()
        comprehensiveness.append(comp / len(bins))
        sufficiency.append(suff / len(bins))
    return np.array(comprehensiveness), np.array(sufficiency)


# --------------------------------------------------------------------------- removal


def test_replace_tokens_and_zero_patches_remove_exactly_the_marked_units():
    ids = torch.arange(6).view(2, 3)
    removed = torch.tensor([[True, False, True], [False, False, False]])
    assert replace_tokens(99)(ids, removed).tolist() == [[99, 1, 99], [3, 4, 5]]
    images = torch.rand(2, 3, 6, 4)
    patches = torch.zeros(2, 6, dtype=torch.bool)
    patches[0, 1] = patches[1, 4] = True  # 3x2 grid of 2x2 patches, row-major
    out = zero_patches((2, 2))(images, patches)
    expected = images.clone()
    expected[0, :, 0:2, 2:4] = 0.0
    expected[1, :, 4:6, 0:2] = 0.0
    assert torch.equal(out, expected)
    with pytest.raises(InvalidInputError):
        zero_patches((2, 2))(images, patches[:, :5])
    with pytest.raises(InvalidParameterError):
        replace_tokens(1.5)


# --------------------------------------------------------------------------- AOPC


def test_aopc_equals_the_sum_of_removed_contributions_on_an_additive_model(toy):
    weights, ids, eligible = toy
    contributions = (weights[ids] - weights[UNK]).numpy()
    attributions = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1))
    result = aopc(additive_model(weights), replace_tokens(UNK), ids, attributions, eligible)
    comprehensiveness, sufficiency = reference_aopc(contributions, attributions.numpy(), eligible.numpy(), AOPC_BINS)
    np.testing.assert_allclose(result["comprehensiveness"], comprehensiveness, atol=1e-12)
    np.testing.assert_allclose(result["sufficiency"], sufficiency, atol=1e-12)


def test_the_true_contributions_maximise_comprehensiveness_and_minimise_sufficiency(toy):
    weights, ids, eligible = toy
    truth = (weights[ids] - weights[UNK]).float()
    remove, score = replace_tokens(UNK), additive_model(weights)
    best = aopc(score, remove, ids, truth, eligible)
    for seed in range(5):
        other = aopc(score, remove, ids, random_attributions(eligible, seed), eligible)
        assert (best["comprehensiveness"] >= other["comprehensiveness"] - 1e-12).all()
        assert (best["sufficiency"] <= other["sufficiency"] + 1e-12).all()
    worst = aopc(score, remove, ids, -truth, eligible)
    assert (worst["comprehensiveness"] < best["comprehensiveness"]).all()


def test_aopc_never_removes_ineligible_units_and_is_nan_without_any(toy):
    weights, ids, eligible = toy
    eligible = eligible.clone()
    eligible[3] = False
    seen = []

    def score(batch):
        seen.append(batch.clone())
        return additive_model(weights)(batch)

    result = aopc(score, replace_tokens(UNK), ids, torch.rand(ids.shape), eligible)
    for batch in seen:
        assert torch.equal(batch[~eligible], ids[~eligible])
    assert np.isnan(result["comprehensiveness"][3]) and np.isnan(result["sufficiency"][3])
    assert np.isfinite(np.delete(result["comprehensiveness"], 3)).all()


def test_a_score_function_of_the_wrong_shape_is_a_clear_error(toy):
    weights, ids, eligible = toy
    with pytest.raises(InvalidInputError, match="one value per example"):
        aopc(lambda batch: weights[batch], replace_tokens(UNK), ids, torch.rand(ids.shape), eligible)
    with pytest.raises(InvalidInputError, match="NaN"):
        aopc(additive_model(weights), replace_tokens(UNK), ids, torch.full(ids.shape, float("nan")), eligible)
    with pytest.raises(InvalidParameterError):
        aopc(additive_model(weights), replace_tokens(UNK), ids, torch.rand(ids.shape), eligible, bins=(0.0,))


# --------------------------------------------------------------------------- blank-out


def test_blank_out_is_the_absolute_contribution_on_an_additive_model(toy):
    weights, ids, eligible = toy
    blank = blank_out(additive_model(weights), replace_tokens(UNK), ids, eligible)
    expected = (weights[ids] - weights[UNK]).abs()
    assert torch.allclose(blank[eligible], expected[eligible])
    assert torch.isnan(blank[~eligible]).all()


def test_blank_out_matches_a_brute_force_loop_on_a_non_additive_model(toy):
    weights, ids, eligible = toy

    def score(batch):  # interactions between neighbours: not additive
        values = weights[batch]
        return (values[:, 1:] * values[:, :-1]).sum(1).tanh()

    blank = blank_out(score, replace_tokens(UNK), ids, eligible)
    for row in range(ids.shape[0]):
        for position in np.flatnonzero(eligible[row].numpy()):
            changed = ids[row:row + 1].clone()
            changed[0, position] = UNK
            expected = abs(float(score(ids[row:row + 1])[0] - score(changed)[0]))
            assert blank[row, position].item() == pytest.approx(expected, abs=1e-12)


def test_blank_out_spearman_is_one_for_the_truth_and_minus_one_reversed(toy):
    weights, ids, eligible = toy
    weights = weights.abs() + torch.arange(20) * 1e-3  # distinct, positive contributions
    weights[UNK] = 0.0
    blank = blank_out(additive_model(weights), replace_tokens(UNK), ids, eligible)
    truth = weights[ids].float()
    distinct = [row for row in range(ids.shape[0]) if len(set(ids[row][eligible[row]].tolist())) ==
                int(eligible[row].sum())]
    assert np.allclose(blank_out_spearman(truth, blank, eligible)[distinct], 1.0)
    assert np.allclose(blank_out_spearman(-truth, blank, eligible)[distinct], -1.0)


# --------------------------------------------------------------------------- randomisation


def test_randomized_copy_redraws_only_the_named_layers_and_keeps_their_scale():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 30))
    before = {name: value.clone() for name, value in net.state_dict().items()}
    copy_a = randomized_copy(net, ["2"], seed=3)
    copy_b = randomized_copy(net, ["2"], seed=3)
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name])  # the model itself is untouched
    assert torch.equal(copy_a[0].weight, net[0].weight) and torch.equal(copy_a[0].bias, net[0].bias)
    assert not torch.equal(copy_a[2].weight, net[2].weight)
    assert torch.equal(copy_a[2].weight, copy_b[2].weight)  # deterministic given the seed
    assert not torch.equal(randomized_copy(net, ["2"], seed=4)[2].weight, copy_a[2].weight)
    assert float(copy_a[2].weight.detach().std()) == pytest.approx(float(net[2].weight.detach().std()), rel=0.1)
    with pytest.raises(InvalidParameterError, match="unknown"):
        randomized_copy(net, ["5"])


def test_randomization_steps_cascade_from_the_output():
    layers = ["head", "block2", "block1"]
    assert randomization_steps(layers)[-1] == tuple(layers)
    assert [len(step) for step in randomization_steps(layers)] == [1, 2, 3]
    assert randomization_steps(layers, "independent") == (("head",), ("block2",), ("block1",))
    with pytest.raises(InvalidParameterError):
        randomization_steps(layers, "sideways")


def test_the_sanity_check_separates_a_model_dependent_method_from_a_model_independent_one():
    torch.manual_seed(0)
    net = nn.Linear(12, 1)  # f(x) = w·x + b: gradient × input is w ⊙ x, a known function of the weights
    inputs = torch.rand(30, 12) + 0.5
    eligible = torch.ones(30, 12, dtype=torch.bool)

    def grad_x_input(model):
        return (model.weight[0] * inputs).detach()

    randomized = randomized_copy(net, [""], seed=1)  # "" names the whole model in named_modules()
    dependent = randomization_spearman(grad_x_input(net), grad_x_input(randomized), eligible)
    independent = randomization_spearman(random_attributions(eligible, 0), random_attributions(eligible, 0), eligible)
    assert np.allclose(randomization_spearman(grad_x_input(net), grad_x_input(net), eligible), 1.0)
    assert np.allclose(independent, 1.0)
    assert dependent.mean() < 0.5


# --------------------------------------------------------------------------- the experiment


def test_method_names_offer_each_supported_edge_weighting():
    names = method_names(supported_edge_weights())
    assert names[0] == "raw_attention" and names[-2:] == ["grad_x_input", "random"]
    assert {f"{graph}/attention" for graph in ("rollout", "flow")} <= set(names)
    with pytest.raises(InvalidParameterError):
        method_names(["attention", "sideways"])


def _synthetic_results(shift: float):
    rng = np.random.default_rng(0)
    results = []
    for seed in range(3):
        base = rng.normal(0.3, 0.05, 40)
        values = {metric: {"rollout/attention": base, "flow/attention": base + shift} for metric in METRICS}
        results.append(TaskResult("sva", seed, values, {"accuracy": 0.9}))
    return results


def test_report_finds_a_real_difference_and_no_difference_between_equal_methods():
    shifted = {(row["metric"], row["comparison"]): row for row in
               difference_rows(tables(_synthetic_results(0.2)), n_resamples=200)}
    row = shifted[("comprehensiveness", "flow/attention − rollout/attention")]
    assert row["difference"] == pytest.approx(0.2) and row["verdict"] == "flow/attention better"
    assert shifted[("sufficiency", "flow/attention − rollout/attention")]["verdict"] == "rollout/attention better"
    equal = difference_rows(tables(_synthetic_results(0.0)), n_resamples=200)
    assert {row["verdict"] for row in equal} == {"no difference"}
    summary = summary_rows(tables(_synthetic_results(0.2)), n_resamples=200)
    for row in summary:
        assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["seeds"] == 3 and row["examples_per_seed"] == 40


def test_task_results_round_trip(tmp_path):
    result = _synthetic_results(0.1)[0]
    result.save(tmp_path)
    loaded = TaskResult.load(tmp_path / "sva_seed0")
    assert loaded.info == result.info and loaded.seed == 0
    for metric in METRICS:
        for method, values in result.values[metric].items():
            assert np.array_equal(loaded.values[metric][method], values)


def test_quick_vit_task_scores_every_method():
    from captum_attnflow.experiments.faithfulness.tasks import build_task

    torch.manual_seed(0)
    task = build_task("vit", 0, 3, quick=True)
    methods = method_names(supported_edge_weights())
    result = evaluate_task(task, methods, bins=(0.1, 0.5), progress=False)
    for metric in METRICS:
        assert set(result.values[metric]) == set(methods)
        for values in result.values[metric].values():
            assert values.shape == (3,)
    assert np.allclose(result.values["randomization_spearman"]["random"], 1.0)  # model-independent: flagged
    assert np.isfinite(result.values["comprehensiveness"]["flow/attention"]).all()


def test_bad_options_fail_before_any_work(capsys):
    from captum_attnflow.experiments.faithfulness.cli import main

    with pytest.raises(SystemExit):
        main(["--examples", "0"])
    assert "--examples must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    from captum_attnflow.experiments.faithfulness.cli import main

    out = tmp_path / "runs"
    # One seed keeps it within the slow tier's budget; several seeds are covered by the report tests above.
    assert main(["--quick", "--seeds", "0", "--examples", "3", "--out", str(out), "--bootstrap", "50",
                 "--no-progress"]) == 0
    results = out / "results"
    assert (results / "faithfulness.md").is_file() and (results / "faithfulness.png").stat().st_size > 0
    with open(results / "faithfulness.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    methods = method_names(supported_edge_weights())
    assert {(row["task"], row["metric"], row["method"]) for row in rows} == {
        (task, metric, method) for task in ("sva", "minilm", "vit") for metric in METRICS for method in methods}
    assert all(row["seeds"] == "1" and row["examples_per_seed"] == "3" for row in rows)
    # The report rebuilds from the stored values alone.
    assert main(["--quick", "--seeds", "0", "--report-only", "--out", str(out), "--bootstrap", "50"]) == 0
