"""Every evaluation metric against values computed by hand on toy models."""

import math

import numpy as np
import pytest
import torch
from captum.attr import Attribution, InputXGradient, IntegratedGradients, Saliency
from captum.metrics import infidelity, sensitivity_max
from scipy.stats import spearmanr

from captum_attnflow.evaluation import (
    BlankOut,
    EmbeddingAttribution,
    aopc_scores,
    blank_out_attribution,
    eligible_tokens,
    per_example_spearman,
    spearman_correlation,
    summarize,
    token_dropout_infidelity_perturb,
    token_dropout_sensitivity_perturb,
    top_k_counts,
    top_k_mask,
)
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

# Toy "linear probability" model: p(class 1 | ids) = 0.1 + Σ_i WEIGHTS[ids_i] (masked tokens
# count 0), p(class 0) = 1 − p(class 1). Id 0 is the blank/PAD token and weighs nothing, so
# removing token i lowers p(class 1) by exactly WEIGHTS[ids_i].
WEIGHTS = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.05, -0.05])


def linear_probs(ids, attention_mask=None):
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    p1 = 0.1 + (WEIGHTS[ids] * mask).sum(dim=1)
    return torch.stack([1 - p1, p1], dim=1)


def linear_logits(ids):
    """Class-1 logit = Σ WEIGHTS[ids]; class-0 logit = 0, so p1 = sigmoid(Σ WEIGHTS[ids])."""
    return torch.stack([torch.zeros(len(ids)), WEIGHTS[ids].sum(dim=1)], dim=1)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# --------------------------------------------------------------------------- Spearman


def test_spearman_without_ties():
    # ranks (1, 2, 3) vs (1, 3, 2): 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/24
    assert spearman_correlation([1.0, 2.0, 3.0], [10.0, 30.0, 20.0]) == pytest.approx(0.5)
    assert spearman_correlation([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)


def test_spearman_with_ties_uses_average_ranks():
    # x ranks (1, 2.5, 2.5, 4), centred (−1.5, 0, 0, 1.5); y centred (−1.5, −.5, .5, 1.5)
    # ρ = 4.5 / sqrt(4.5 · 5) = 3 / sqrt(10)
    value = spearman_correlation([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert value == pytest.approx(3 / math.sqrt(10))
    assert value == pytest.approx(spearmanr([1, 2, 2, 3], [1, 2, 3, 4])[0])


@pytest.mark.parametrize("x, y", [
    ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]),  # constant attribution: no ranking
    ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]),  # constant reference
    ([1.0], [2.0]),                      # a single token
    ([], []),
])
def test_spearman_is_nan_when_undefined(x, y, recwarn):
    assert math.isnan(spearman_correlation(x, y))
    assert not recwarn.list  # documented nan, no scipy ConstantInputWarning


def test_spearman_rejects_length_mismatch():
    with pytest.raises(InvalidInputError):
        spearman_correlation([1, 2, 3], [1, 2])


def test_per_example_spearman_ranks_only_masked_tokens():
    # Among the real tokens 1..3 the ranking is exactly reversed; position 0 ([CLS]) and the
    # padded last position would pull the correlation up if they were ranked.
    scores = torch.tensor([[100.0, 1.0, 2.0, 3.0, 50.0], [0.0, 4.0, 4.0, 4.0, 4.0]])
    reference = torch.tensor([[100.0, 3.0, 2.0, 1.0, 50.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    mask = eligible_tokens(scores.long(), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
                           exclude_positions=(0,))
    values = per_example_spearman(scores, reference, mask)
    assert values[0] == pytest.approx(-1.0)
    assert math.isnan(values[1])  # constant scores on the compared tokens
    unmasked = per_example_spearman(scores, reference)
    assert unmasked[0] == pytest.approx(spearmanr(scores[0], reference[0])[0])
    assert unmasked[0] == pytest.approx(0.6)  # ranks (5,1,2,3,4) vs (5,3,2,1,4): 1 − 6·8/120


def test_eligible_tokens_combines_padding_positions_and_special_tokens():
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 7, 102, 0, 0]])
    keep = eligible_tokens(ids, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]), exclude_positions=(0,),
                           special_tokens_mask=(ids == 102))
    assert keep.tolist() == [[False, True, True, False, False], [False, True, False, False, False]]
    with pytest.raises(InvalidParameterError):
        eligible_tokens(ids, exclude_positions=(5,))
    with pytest.raises(InvalidInputError):
        eligible_tokens(ids, torch.ones(2, 4))


def test_summarize_drops_nan_and_uses_sample_std():
    mean, std, n = summarize([0.5, float("nan"), 1.0])
    assert (mean, n) == (0.75, 2)
    assert std == pytest.approx(math.sqrt(0.125))  # ((.25² + .25²) / (2 − 1)) ** .5
    mean, std, n = summarize([0.3])
    assert (mean, n) == (0.3, 1) and math.isnan(std)
    mean, std, n = summarize([float("nan")])
    assert n == 0 and math.isnan(mean) and math.isnan(std)


# --------------------------------------------------------------------------- blank-out


def test_blank_out_is_an_attribution_giving_absolute_probability_change():
    blank = BlankOut(linear_probs, unk_token_id=0, output_type="probs")
    assert isinstance(blank, Attribution)
    ids = torch.tensor([[1, 2, 3, 5]])
    expected = [[0.1, 0.2, 0.3, 0.05]]  # |WEIGHTS[id]|, the −0.05 flipped by the absolute value
    for target in (1, 0, None):  # p0 = 1 − p1 changes by the same amount; None = predicted (1)
        scores = blank.attribute(ids, target=target)
        np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6, err_msg=str(target))


def test_blank_out_applies_softmax_to_logits():
    ids = torch.tensor([[1, 3], [2, 4]])
    scores = blank_out_attribution(linear_logits, 0).attribute(ids, target=torch.tensor([1, 0]))
    expected = [[abs(sigmoid(0.4) - sigmoid(0.3)), abs(sigmoid(0.4) - sigmoid(0.1))],
                [abs(sigmoid(0.25) - sigmoid(0.05)), abs(sigmoid(0.25) - sigmoid(0.2))]]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6)


def test_blank_out_passes_the_attention_mask_through():
    ids = torch.tensor([[1, 2, 3]])
    scores = BlankOut(linear_probs, 0, output_type="probs").attribute(
        ids, target=1, additional_forward_args=(torch.tensor([[1, 1, 0]]),))
    np.testing.assert_allclose(scores.numpy(), [[0.1, 0.2, 0.0]], atol=1e-6)  # masked: no effect


def test_blank_out_rejects_non_int_unk():
    with pytest.raises(InvalidParameterError):
        BlankOut(linear_probs, unk_token_id=0.5)


# --------------------------------------------------------------------------- AOPC


def test_top_k_counts_and_mask():
    assert top_k_counts(torch.tensor([4, 30, 0, 3]), 0.1).tolist() == [1, 3, 0, 1]
    assert top_k_counts(torch.tensor([4]), 0.5).tolist() == [2]
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1, 5.0]])
    eligible = torch.tensor([[True, True, True, True, False]])
    # Tie between positions 1 and 2 goes to the earlier one; position 4 is not eligible.
    assert top_k_mask(scores, eligible, torch.tensor([1])).tolist() == [[False, True, False, False, False]]
    assert top_k_mask(scores, eligible, torch.tensor([3])).tolist() == [[True, True, True, False, False]]


def test_aopc_on_linear_model_matches_hand_computation():
    # p1(x) = 0.1 + .1 + .2 + .3 + .05 = 0.75; ranking by attribution: positions 0, 1, 2, 3.
    # n = 4, default bins → k = ceil(.04, .2, .4, .8, 2) = 1, 1, 1, 1, 2.
    # comprehensiveness: k=1 removes w=.1 → .1; k=2 removes .1+.2 → .3; AOPC = (4·.1 + .3)/5 = .14
    # sufficiency: k=1 keeps .1 → p=.2, Δ=.55; k=2 keeps .3 → p=.4, Δ=.35; AOPC = (4·.55 + .35)/5 = .51
    ids = torch.tensor([[1, 2, 3, 4]])
    attributions = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    scores = aopc_scores(linear_probs, ids, attributions, target=1, output_type="probs")
    assert scores["comprehensiveness"] == pytest.approx([0.14])
    assert scores["sufficiency"] == pytest.approx([0.51])


def test_aopc_removal_by_mask_and_eligible_tokens():
    # Position 0 stands for [CLS] (never removed), the last position is padding.
    ids = torch.tensor([[3, 1, 2, 4, 2]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0]])
    eligible = eligible_tokens(ids, attention_mask, exclude_positions=(0,))
    attributions = torch.tensor([[9.0, 0.1, 0.3, 0.2, 9.0]])  # ranking among eligible: 2, 3, 1
    # p1 = 0.1 + .3 + .1 + .2 + .05 = 0.75; bins (1/3, 1): k = 1 and 3.
    # comprehensiveness: remove pos 2 → Δ .2; remove all → Δ .35.      mean .275
    # sufficiency: keep pos 2 → Δ .15 (drops .1 + .05); keep all → Δ 0. mean .075
    for removal in ("mask", "replace"):
        scores = aopc_scores(linear_probs, ids, attributions, 1, (attention_mask,), removal=removal,
                             bins=(1 / 3, 1.0), output_type="probs", eligible=eligible)
        assert scores["comprehensiveness"] == pytest.approx([0.275]), removal
        assert scores["sufficiency"] == pytest.approx([0.075]), removal


def test_aopc_with_logits_and_predicted_target():
    ids = torch.tensor([[1, 3]])
    scores = aopc_scores(linear_logits, ids, torch.tensor([[0.0, 1.0]]), bins=(0.5,))
    full = sigmoid(0.4)  # predicted class is 1
    assert scores["comprehensiveness"] == pytest.approx([full - sigmoid(0.1)])
    assert scores["sufficiency"] == pytest.approx([full - sigmoid(0.3)])


def test_aopc_rows_without_eligible_tokens_are_nan():
    ids = torch.tensor([[1, 2], [1, 2]])
    eligible = torch.tensor([[True, True], [False, False]])
    scores = aopc_scores(linear_probs, ids, torch.ones(2, 2), 1, output_type="probs", eligible=eligible)
    assert np.isfinite(scores["comprehensiveness"][0]) and np.isnan(scores["comprehensiveness"][1])


def test_aopc_argument_checks():
    ids = torch.tensor([[1, 2]])
    with pytest.raises(InvalidParameterError):
        aopc_scores(linear_probs, ids, torch.ones(1, 2), 1, removal="drop")
    with pytest.raises(InvalidParameterError):
        aopc_scores(linear_probs, ids, torch.ones(1, 2), 1, bins=(0.0,))
    with pytest.raises(InvalidInputError):
        aopc_scores(linear_probs, ids, torch.ones(1, 2), 1, removal="mask")
    with pytest.raises(InvalidInputError):
        aopc_scores(linear_probs, ids, torch.ones(1, 3), 1)


# --------------------------------------------------------------------------- perturbations


def test_infidelity_perturbation_marks_exactly_the_replaced_tokens():
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 3, 0]] * 50)
    eligible = torch.ones_like(ids, dtype=torch.bool)
    eligible[:, 5] = False
    perturb = token_dropout_infidelity_perturb(1, drop_prob=0.5, protected_ids=(0, 2, 3),
                                               eligible=eligible[:10], generator=generator)
    indicator, perturbed = perturb(ids)
    assert indicator.dtype == torch.float32
    assert torch.equal(indicator.bool(), perturbed != ids)
    assert (perturbed[indicator.bool()] == 1).all()
    assert not indicator[:, [0, 5, 6, 7]].any()  # protected ids and the ineligible position
    assert 0.3 < indicator[:, 1:5].mean() < 0.7
    all_dropped, _ = token_dropout_infidelity_perturb(1, drop_prob=1.0, protected_ids=(0,))(ids[:1])
    assert all_dropped.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0]]


def test_sensitivity_perturbation_replaces_ceil_radius_fraction():
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 3, 0], [2, 5, 6, 3, 0, 0, 0, 0]])
    perturb = token_dropout_sensitivity_perturb(1, protected_ids=(0, 2, 3), generator=generator)
    perturbed = perturb(ids, 0.5)
    changed = (perturbed != ids).sum(dim=1).tolist()
    assert changed == [3, 1]  # ceil(.5 · 5) and ceil(.5 · 2)
    assert (perturbed[perturbed != ids] == 1).all()


def test_infidelity_is_zero_for_exact_additive_attributions():
    # On the linear probability model, blanking a token set D changes p1 by Σ_{i∈D} w_i exactly,
    # so attributions w_i are perfectly faithful; permuted ones are not.
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    exact = WEIGHTS[ids]
    perturb = token_dropout_infidelity_perturb(0, drop_prob=0.5, generator=torch.Generator().manual_seed(0))
    exact_score = infidelity(linear_probs, perturb, ids, exact, target=1, n_perturb_samples=20)
    wrong_score = infidelity(linear_probs, perturb, ids, exact.flip(1), target=1, n_perturb_samples=20)
    assert exact_score.item() == pytest.approx(0.0, abs=1e-12)
    assert wrong_score.item() > 1e-3


def test_sensitivity_of_blank_out_on_linear_model_is_bounded_by_hand_value():
    # BlankOut on the linear model is |w| per token; replacing one of 4 tokens by id 0 sets its
    # score to 0, so ‖Δexpl‖/‖expl‖ = |w_i| / ‖w‖ and the max over samples ≤ .3 / ‖(.1,.2,.3,.05)‖.
    ids = torch.tensor([[1, 2, 3, 4]])
    blank = BlankOut(linear_probs, 0, output_type="probs")
    perturb = token_dropout_sensitivity_perturb(0, generator=torch.Generator().manual_seed(0))
    score = sensitivity_max(blank.attribute, ids, perturb, perturb_radius=0.25, n_perturb_samples=30,
                            target=1).item()
    assert score == pytest.approx(0.3 / math.sqrt(0.01 + 0.04 + 0.09 + 0.0025))  # 30 draws hit id 3


def test_infidelity_matches_hand_value_for_a_deterministic_perturbation():
    # drop_prob = 1 blanks every droppable token (ids 1, 2, 3; id 0 protected), the same in every
    # sample, so infidelity = (Σ_i a_i − (p1(x) − p1(blank)))² = (1.0 − (.1 + .2 + .3))² = 0.16.
    ids = torch.tensor([[1, 2, 3, 0]])
    perturb = token_dropout_infidelity_perturb(0, drop_prob=1.0, protected_ids=(0,))
    attributions = torch.tensor([[1.0, 0.0, 0.0, 5.0]])  # position 3 is never dropped: its 5 is ignored
    score = infidelity(linear_probs, perturb, ids, attributions, target=1, n_perturb_samples=3)
    assert score.item() == pytest.approx(0.16, abs=1e-6)


# --------------------------------------------------------------------------- gradients on embeddings

EMBEDDINGS = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.5, 1.0, -1.0], [-1.0, 0.0, 2.0]])
READOUT = torch.tensor([0.5, -1.0, 2.0])


class LinearEmbeddingModel(torch.nn.Module):
    """Class-1 logit = Σ_i mask_i · (E[id_i] · w): the gradient w.r.t. embedding i is mask_i · w."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding.from_pretrained(EMBEDDINGS.clone())

    def forward(self, ids, attention_mask):
        class1 = ((self.embedding(ids) @ READOUT) * attention_mask).sum(1)
        return torch.stack([torch.zeros_like(class1), class1], 1)


def test_embedding_gradient_methods_match_hand_values():
    model = LinearEmbeddingModel()
    ids = torch.tensor([[1, 2, 3], [3, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    args = dict(target=1, additional_forward_args=(mask,))
    # Input × gradient summed over the embedding: mask_i · E[id_i] · w, e.g. 1·.5 + (−2)(−1) + .5·2 = 3.5.
    ixg = EmbeddingAttribution(InputXGradient, model, model.embedding, token_reduction="sum").attribute(ids, **args)
    expected = [[3.5, -2.75, 3.5], [3.5, 3.5, 0.0]]
    np.testing.assert_allclose(ixg.detach().numpy(), expected, atol=1e-6)
    # |gradient| = mask_i · |w|, full (B, S, D) output by default.
    saliency = EmbeddingAttribution(Saliency, model, model.embedding).attribute(ids, **args)
    assert saliency.shape == (2, 3, 3)
    np.testing.assert_allclose(saliency[0, 1].numpy(), [0.5, 1.0, 2.0])
    assert not saliency[1, 2].any()  # the padded token does not reach the output
    # L2 token norm of the saliency: ‖w‖ = sqrt(.25 + 1 + 4) for every real token.
    norms = EmbeddingAttribution(Saliency, model, model.embedding, token_reduction="norm").attribute(ids, **args)
    np.testing.assert_allclose(norms.numpy(), [[math.sqrt(5.25)] * 3, [math.sqrt(5.25)] * 2 + [0.0]], atol=1e-6)
    # On a linear model integrated gradients from a zero embedding equal input × gradient exactly.
    ig, delta = EmbeddingAttribution(IntegratedGradients, model, model.embedding, token_reduction="sum").attribute(
        ids, n_steps=5, return_convergence_delta=True, **args)
    np.testing.assert_allclose(ig.detach().numpy(), expected, atol=1e-5)
    assert delta.abs().max() < 1e-5


def test_embedding_attribution_returns_a_tuple_for_tuple_inputs_and_checks_arguments():
    model = LinearEmbeddingModel()
    ids, mask = torch.tensor([[1, 2]]), torch.tensor([[1, 1]])
    ixg = EmbeddingAttribution(InputXGradient, model, model.embedding, token_reduction="sum")
    (scores,) = ixg.attribute((ids,), target=1, additional_forward_args=(mask,))  # as sensitivity_max calls it
    assert scores.shape == (1, 2) and ixg.multiplies_by_inputs
    with pytest.raises(InvalidParameterError):
        EmbeddingAttribution(Saliency, model, model.embedding, token_reduction="mean")
    with pytest.raises(InvalidParameterError):
        EmbeddingAttribution(Saliency, model, "embedding")
    with pytest.raises(InvalidInputError, match="never called"):
        EmbeddingAttribution(Saliency, model, torch.nn.Linear(2, 2)).attribute(
            ids, target=1, additional_forward_args=(mask,))
    with pytest.raises(InvalidInputError):
        ixg.attribute(ids.float(), target=1, additional_forward_args=(mask,))
