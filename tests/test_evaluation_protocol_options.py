"""The evaluation options that separate the authors' protocol from ours, on hand-computed toy cases.

Each option is checked against numbers worked out by hand in the comments, or against an
independent reference (scipy's ``spearmanr``, ``np.unique`` dense ranks, a plain loop).
"""

import numpy as np
import pytest
import torch
from captum.attr import Attribution
from scipy.stats import spearmanr

from captum_attnflow.evaluation import (
    AttributionEvaluator,
    BlankOut,
    InputGradients,
    OutputPositionsRelevance,
    bootstrap_difference_ci,
    bootstrap_mean_ci,
    bootstrap_mean_cis,
    per_example_spearman,
    reduce_output_positions,
    spearman_correlation,
    summarize,
)
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError


def close(tensor, expected) -> bool:
    return np.allclose(np.asarray(tensor, dtype=np.float64), np.asarray(expected, dtype=np.float64))


# --------------------------------------------------------------------------- Spearman variants


def dense_ranks(values):
    """Independent dense ranks: position of each value among the sorted distinct values, from 1."""
    return np.unique(values, return_inverse=True)[1] + 1.0


def test_dense_difference_formula_by_hand():
    # dense ranks x (1, 2, 2, 3), y (1, 3, 2, 4); d = (0, −1, 0, −1); 1 − 6·2 / (4·15) = 0.8
    value = spearman_correlation([0.1, 0.5, 0.5, 0.9], [1.0, 3.0, 2.0, 4.0], ranks="dense", formula="difference")
    assert value == pytest.approx(0.8)
    # The textbook value differs: average ranks x (1, 2.5, 2.5, 4) vs y (1, 3, 2, 4), Pearson:
    # centred x (−1.5, 0, 0, 1.5), y (−1.5, .5, −.5, 1.5) -> 4.5 / sqrt(4.5 · 5)
    assert spearman_correlation([0.1, 0.5, 0.5, 0.9], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(4.5 / np.sqrt(22.5))


def test_difference_formula_is_defined_for_constant_vectors_like_the_authors_code():
    # dense ranks x (1, 1, 1), y (1, 2, 3): d = (0, −1, −2), 1 − 6·5 / 24 = −0.25
    assert spearman_correlation([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], ranks="dense",
                                formula="difference") == pytest.approx(-0.25)
    assert np.isnan(spearman_correlation([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))
    assert np.isnan(spearman_correlation([2.0], [1.0], ranks="dense", formula="difference"))


@pytest.mark.parametrize("seed", range(5))
def test_variants_match_independent_references(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, 9).astype(float)  # many ties
    y = rng.integers(0, 5, 9).astype(float)
    assert spearman_correlation(x, y) == pytest.approx(spearmanr(x, y)[0])
    d = dense_ranks(x) - dense_ranks(y)
    assert spearman_correlation(x, y, ranks="dense", formula="difference") == pytest.approx(
        1 - 6 * (d ** 2).sum() / (9 * 80))
    untied_x, untied_y = rng.permutation(9).astype(float), rng.permutation(9).astype(float)
    for ranks in ("average", "dense"):  # without ties every variant is the textbook value
        for formula in ("pearson", "difference"):
            assert spearman_correlation(untied_x, untied_y, ranks=ranks, formula=formula) == pytest.approx(
                spearmanr(untied_x, untied_y)[0])


def test_per_example_spearman_vectorised_matches_a_loop_over_rows():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 4, (12, 8)).astype(np.float64))
    reference = torch.from_numpy(rng.normal(size=(12, 8)))
    mask = torch.from_numpy(rng.random((12, 8)) < 0.7)
    mask[:, :2] = True  # rows of different lengths, at least two tokens each
    for ranks, formula in (("average", "pearson"), ("dense", "difference")):
        values = per_example_spearman(scores, reference, mask, ranks=ranks, formula=formula)
        for row in range(12):
            keep = mask[row].numpy()
            a, r = scores[row].numpy()[keep], reference[row].numpy()[keep]
            if formula == "pearson":
                expected = spearmanr(a, r)[0] if np.ptp(a) > 0 else np.nan
            else:
                d = dense_ranks(a) - dense_ranks(r)
                expected = 1 - 6 * (d ** 2).sum() / (len(a) * (len(a) ** 2 - 1))
            np.testing.assert_allclose(values[row], expected, equal_nan=True)


def test_unknown_rank_options_are_rejected():
    with pytest.raises(InvalidParameterError, match="ranks"):
        spearman_correlation([1, 2], [1, 2], ranks="min")
    with pytest.raises(InvalidParameterError, match="formula"):
        spearman_correlation([1, 2], [1, 2], formula="kendall")
    with pytest.raises(InvalidParameterError, match="undefined"):
        summarize([1.0], undefined="drop")


def test_undefined_correlations_count_as_zero_on_request():
    assert summarize([0.6, np.nan, 0.9]) == pytest.approx((0.75, np.std([0.6, 0.9], ddof=1), 2))
    mean, _, n = summarize([0.6, np.nan, 0.9], undefined="zero")
    assert (mean, n) == (pytest.approx(0.5), 3)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_of_a_constant_table_has_no_width():
    assert bootstrap_mean_ci(np.full((3, 40), 0.3)) == pytest.approx((0.3, 0.3, 0.3))


def test_bootstrap_over_seeds_by_hand():
    # Seed s gives the value s on every example. Resampling examples alone changes nothing;
    # resampling the 3 seeds gives a mean of 0 with probability 1/27 ≈ 3.7 % (> 2.5 %), so
    # the 95 % interval is exactly [0, 2].
    table = np.repeat(np.arange(3.0)[:, None], 50, axis=1)
    mean, low, high = bootstrap_mean_ci(table, n_resamples=4000)
    assert (mean, low, high) == (pytest.approx(1.0), pytest.approx(0.0), pytest.approx(2.0))


def test_bootstrap_over_examples_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.3, 4000)
    mean, low, high = bootstrap_mean_ci(values[None], n_resamples=3000)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert mean == pytest.approx(values.mean())
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_examples():
    rng = np.random.default_rng(3)
    widths = []
    for n_examples in (50, 800):  # 16 times the examples: about a quarter of the width
        table = rng.normal(0.4, 0.3, (3, n_examples))
        mean, low, high = bootstrap_mean_ci(table, n_resamples=2000)
        assert mean == pytest.approx(table.mean())
        assert low < mean < high
        widths.append(high - low)
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.35)


def test_bootstrap_draws_are_cached_without_changing_any_result():
    from captum_attnflow.evaluation import statistics

    table = np.random.default_rng(4).normal(size=(2, 3, 25))
    statistics._cached_bootstrap_weights.cache_clear()
    first = bootstrap_mean_cis(table, n_resamples=300, seed=5)
    again = bootstrap_mean_cis(table, n_resamples=300, seed=5)  # drawn from the cache
    assert statistics._cached_bootstrap_weights.cache_info().hits >= 1
    fresh = statistics._draw_bootstrap_weights(3, 25, 300, 5)
    cached = statistics._bootstrap_weights(3, 25, 300, 5)
    assert all(np.array_equal(a, b) for a, b in zip(fresh, cached))
    assert not cached[1].flags.writeable  # shared draws cannot be changed by a caller
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, bootstrap_mean_cis(table, n_resamples=300, seed=6))


def test_bootstrap_leaves_nan_out_or_counts_it_as_zero():
    table = np.array([[0.5, np.nan, 0.5, 0.5]])
    assert bootstrap_mean_ci(table)[0] == pytest.approx(0.5)
    assert bootstrap_mean_ci(table, undefined="zero")[0] == pytest.approx(0.375)


def test_paired_difference_and_shared_resamples():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 30))
    assert bootstrap_difference_ci(base + 0.1, base) == pytest.approx((0.1, 0.1, 0.1))
    stacked = bootstrap_mean_cis(np.stack([base, base + 1.0]))
    assert stacked[1] == pytest.approx(stacked[0] + 1.0)  # same resamples for every table
    with pytest.raises(InvalidInputError):
        bootstrap_difference_ci(base, base[:, :5])


# --------------------------------------------------------------------------- blank-out choices

# p(class 1 | ids) = 0.1 + Σ WEIGHTS[ids]; removing token i (replacing it by id 0, weight 0)
# changes p by exactly WEIGHTS[ids_i]. Id 4 weighs 0.3 but plays the end-of-sentence token.
WEIGHTS = torch.tensor([0.0, 0.1, 0.2, 0.05, 0.3])


def linear_probs(ids):
    p1 = 0.1 + WEIGHTS[ids].sum(dim=1)
    return torch.stack([1 - p1, p1], dim=1)


def three_class_probs(ids):
    """p = (0.5 − w, 0.3 + w, 0.2) with w = Σ WEIGHTS[ids] / 2."""
    w = WEIGHTS[ids].sum(dim=1) / 2
    return torch.stack([0.5 - w, 0.3 + w, torch.full_like(w, 0.2)], dim=1)


def test_unscored_token_ids_score_zero_instead_of_their_blank_out():
    ids = torch.tensor([[1, 2, 4]])
    plain = BlankOut(linear_probs, 0, output_type="probs").attribute(ids, target=1)
    authors = BlankOut(linear_probs, 0, output_type="probs", unscored_token_ids=(4,)).attribute(ids, target=1)
    assert close(plain, [[0.1, 0.2, 0.3]])
    assert close(authors, [[0.1, 0.2, 0.0]])
    with pytest.raises(InvalidParameterError, match="unscored_token_ids"):
        BlankOut(linear_probs, 0, unscored_token_ids=("eos",))


def test_gold_or_predicted_class_is_the_same_with_two_classes_and_not_with_three():
    ids = torch.tensor([[1, 2, 3]])  # p1 = 0.45: the model predicts class 0
    blank = BlankOut(linear_probs, 0, output_type="probs")
    assert torch.allclose(blank.attribute(ids, target=1), blank.attribute(ids, target=None))
    # Three classes: p = (0.325, 0.475, 0.2), predicted class 1, gold class 2 never moves.
    blank3 = BlankOut(three_class_probs, 0, output_type="probs")
    assert close(blank3.attribute(ids, target=None), [[0.05, 0.1, 0.025]])
    assert close(blank3.attribute(ids, target=2), [[0.0, 0.0, 0.0]])


def test_blank_out_replacement_id_matters():
    ids = torch.tensor([[1, 2]])
    # Replacing by id 3 (weight 0.05) instead of 0: |Δp| = 0.1 − 0.05 and 0.2 − 0.05.
    assert close(BlankOut(linear_probs, 3, output_type="probs").attribute(ids, target=1), [[0.05, 0.15]])


# --------------------------------------------------------------------------- gradient reducers


def test_gradient_reducers_by_hand():
    embedding = torch.nn.Embedding(3, 2)
    with torch.no_grad():
        embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0], [-2.0, 1.0]]))

    def logits(ids):  # class-1 logit = Σ_tokens (3·e_0 + 4·e_1): gradient (3, 4) at every token
        e = embedding(ids)
        return torch.stack([torch.zeros(len(ids)), (3 * e[..., 0] + 4 * e[..., 1]).sum(1)], 1)

    ids = torch.tensor([[1, 2]])
    expected = {"l2": [5.0, 5.0],  # ‖(3, 4)‖
                "sum_abs": [7.0, 7.0],  # |3 + 4|
                "grad_x_input": [11.0, 2.0]}  # |3·1 + 4·2|, |3·(−2) + 4·1|
    for reducer, values in expected.items():
        scores = InputGradients(logits, embedding, reducer=reducer).attribute(ids, target=1)
        assert close(scores, [values]), reducer
    with pytest.raises(InvalidParameterError, match="reducer"):
        InputGradients(logits, embedding, reducer="l1")


# --------------------------------------------------------------------------- output positions


def test_reduce_output_positions_by_hand_with_layers():
    # One layer, one example, 3 output rows over 3 inputs; row 2 is padding.
    rows = torch.tensor([[[[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.9, 0.9, 0.9]]]])
    mask = torch.tensor([[True, True, False]])
    assert close(reduce_output_positions(rows, "max", output_mask=mask), [[[0.6, 0.5, 0.3]]])
    assert close(reduce_output_positions(rows, "mean", output_mask=mask), [[[0.4, 0.3, 0.3]]])
    assert close(reduce_output_positions(rows, "row", token_index=1), [[[0.6, 0.1, 0.3]]])
    with pytest.raises(InvalidParameterError):
        reduce_output_positions(rows, "median")
    with pytest.raises(InvalidInputError):
        reduce_output_positions(rows, "max", output_mask=torch.zeros(1, 3, dtype=torch.bool))


class RowsOfAFixedMatrix(Attribution):
    """Fake attention method: explaining position p of example b returns MATRIX[b, p]."""

    def __init__(self, matrix):
        super().__init__(lambda ids: ids)
        self.matrix = matrix
        self.calls = []

    def attribute(self, inputs, target=None, additional_forward_args=None, token_index=0):
        index = torch.as_tensor(token_index).expand(inputs.shape[0])
        self.calls.append(index.tolist())
        return self.matrix[torch.arange(inputs.shape[0]), index]


@pytest.mark.parametrize("padding", ["right", "left"])
def test_output_positions_relevance_uses_only_real_rows(padding):
    matrix = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]) if padding == "right" else torch.tensor(
        [[1, 1, 1, 1], [0, 0, 1, 1]])
    ids = torch.ones(2, 4, dtype=torch.long)
    fake = RowsOfAFixedMatrix(matrix)
    scores = OutputPositionsRelevance(fake, "max").attribute(ids, additional_forward_args=(mask,))
    for b in range(2):
        real_rows = matrix[b, mask[b].bool()]
        assert torch.allclose(scores[b], real_rows.max(dim=0).values)
    mean = OutputPositionsRelevance(fake, "mean").attribute(ids, additional_forward_args=(mask,))
    assert torch.allclose(mean[1], matrix[1, mask[1].bool()].mean(dim=0))
    row = OutputPositionsRelevance(fake, "row", token_index=2).attribute(ids, additional_forward_args=(mask,))
    assert torch.allclose(row, matrix[:, 2])
    with pytest.raises(InvalidParameterError, match="token_index"):
        OutputPositionsRelevance(fake, "max").attribute(ids, token_index=1)


# --------------------------------------------------------------------------- harness options


class IdScores(Attribution):
    """Scores each token by a fixed per-id value (a stand-in attribution method)."""

    def __init__(self, values):
        super().__init__(lambda ids: ids)
        self.values = torch.tensor(values)

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return self.values[inputs]


def test_harness_passes_rank_undefined_and_class_options():
    ids = torch.tensor([[1, 1, 2, 3], [1, 2, 3, 3]])
    methods = {"blank": BlankOut(linear_probs, 0, output_type="probs"),
               "ties": IdScores([0.0, 0.5, 0.5, 0.9]),  # ids 1 and 2 tie
               "flat": IdScores([0.0, 0.4, 0.4, 0.4])}  # constant: undefined correlation
    common = dict(reference="blank", metrics=("spearman",), output_type="probs", progress=False)
    textbook = AttributionEvaluator(linear_probs, methods, **common).evaluate(ids, targets=torch.tensor([1, 1]))
    authors = AttributionEvaluator(linear_probs, methods, rank_method="dense", spearman_formula="difference",
                                   undefined="zero", **common).evaluate(ids, targets=torch.tensor([1, 1]))
    blank = methods["blank"].attribute(ids, target=1)
    expected_textbook = np.mean([spearmanr(methods["ties"].attribute(ids)[b], blank[b])[0] for b in range(2)])
    expected_authors = []
    for b in range(2):
        d = dense_ranks(methods["ties"].attribute(ids)[b].numpy()) - dense_ranks(blank[b].numpy())
        expected_authors.append(1 - 6 * (d ** 2).sum() / (4 * 15))
    assert textbook.select(method="ties")[0]["mean"] == pytest.approx(expected_textbook)
    assert authors.select(method="ties")[0]["mean"] == pytest.approx(np.mean(expected_authors))
    assert textbook.select(method="flat")[0]["n"] == 0  # undefined: left out
    assert authors.select(method="flat")[0]["n"] == 2  # the difference formula is defined here
    zero = AttributionEvaluator(linear_probs, methods, undefined="zero", **common).evaluate(
        ids, targets=torch.tensor([1, 1]))
    assert (zero.select(method="flat")[0]["mean"], zero.select(method="flat")[0]["n"]) == (0.0, 2)
    with pytest.raises(InvalidParameterError, match="rank_method"):
        AttributionEvaluator(linear_probs, methods, rank_method="min", **common).evaluate(ids)


def test_undefined_zero_applies_to_correlations_only():
    from captum_attnflow.evaluation import EvaluationResult

    result = EvaluationResult.from_values({("spearman", "b", "m", None): np.array([0.5, np.nan]),
                                           ("sufficiency", None, "m", None): np.array([0.5, np.nan])},
                                          undefined="zero")
    assert [(row["mean"], row["n"]) for row in result.rows] == [(0.25, 2), (0.5, 1)]


def test_harness_target_class_predicted_overrides_gold_targets():
    ids = torch.tensor([[1, 2, 3]])
    seen = []

    def record(inputs, target=None, additional_forward_args=None):
        seen.append(target.tolist())
        return inputs.float()

    evaluator = AttributionEvaluator(three_class_probs, {"record": record}, metrics=("aopc",), output_type="probs",
                                     progress=False, target_class="predicted")
    evaluator.evaluate(ids, targets=torch.tensor([2]))
    AttributionEvaluator(three_class_probs, {"record": record}, metrics=("aopc",), output_type="probs",
                         progress=False).evaluate(ids, targets=torch.tensor([2]))
    assert seen == [[1], [2]]  # predicted class 1 (p = 0.325, 0.475, 0.2), then the gold class 2
