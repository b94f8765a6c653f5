"""Rollout against an independent plain-numpy implementation of the paper's formula."""

import numpy as np
import pytest
import torch

from captum_attnflow.functional import attention_rollout, transition_matrices


def numpy_rollout(attentions: np.ndarray, head_fusion: str, residual_weight: float) -> np.ndarray:
    """Abnar & Zuidema (2020), Eq. 1, written from the formula with numpy only."""
    reduce = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    num_layers, batch_size, _, seq_len, _ = attentions.shape
    out = np.zeros((num_layers, batch_size, seq_len, seq_len))
    for b in range(batch_size):
        running = np.eye(seq_len)
        for layer in range(num_layers):
            fused = reduce(attentions[layer, b], axis=0)
            a_hat = residual_weight * np.eye(seq_len) + (1 - residual_weight) * fused
            a_hat = a_hat / a_hat.sum(axis=-1, keepdims=True)
            running = a_hat @ running
            out[layer, b] = running
    return out


def random_attentions(num_layers, batch_size, heads, seq_len, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_layers, batch_size, heads, seq_len, seq_len, generator=generator,
                         dtype=torch.float64) * 2
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("num_layers,heads,seq_len", [(1, 1, 2), (3, 4, 5), (6, 12, 9), (12, 2, 16)])
@pytest.mark.parametrize("residual_weight", [0.5, 0.2, 1.0])
def test_rollout_matches_numpy_reference(head_fusion, num_layers, heads, seq_len, residual_weight):
    attentions = random_attentions(num_layers, 2, heads, seq_len, seed=num_layers * 100 + seq_len)
    ours = attention_rollout(attentions, head_fusion=head_fusion, residual_weight=residual_weight)
    reference = numpy_rollout(attentions.numpy(), head_fusion, residual_weight)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6, rtol=0)


def test_sequence_of_layers_equals_stacked_tensor():
    attentions = random_attentions(4, 2, 3, 6)
    as_list = attention_rollout(list(attentions))
    torch.testing.assert_close(as_list, attention_rollout(attentions))


def test_rows_sum_to_one_and_are_non_negative():
    rollout = attention_rollout(random_attentions(5, 3, 2, 7), head_fusion="max")
    torch.testing.assert_close(rollout.sum(-1), torch.ones(5, 3, 7, dtype=torch.float64))
    assert (rollout >= 0).all()


def test_residual_weight_one_is_identity():
    rollout = attention_rollout(random_attentions(3, 1, 2, 4), residual_weight=1.0)
    torch.testing.assert_close(rollout[-1, 0], torch.eye(4, dtype=torch.float64))


def test_float32_attentions_stay_float32():
    rollout = attention_rollout(random_attentions(2, 1, 2, 4).float())
    assert rollout.dtype == torch.float32


def test_padding_is_ignored():
    """A padded example gives the same rollout on its real tokens as the unpadded one."""
    real = random_attentions(3, 1, 2, 4, seed=3)
    padded = torch.zeros(3, 1, 2, 6, 6, dtype=torch.float64)
    padded[..., :4, :4] = real
    padded[..., 4:, :] = 1 / 6  # garbage rows for padded queries
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    rollout_padded = attention_rollout(padded, attention_mask=mask)
    torch.testing.assert_close(rollout_padded[:, :, :4, :4], attention_rollout(real))
    assert (rollout_padded[:, :, :4, 4:] == 0).all()


def test_discard_ratio_zeroes_smallest_weights_but_keeps_residual():
    attentions = random_attentions(1, 1, 1, 5)
    transitions = transition_matrices(attentions, discard_ratio=0.6)
    off_diagonal = transitions[0, 0][~torch.eye(5, dtype=torch.bool)].view(5, 4)
    # floor(0.6 * 5) = 3 of 5 keys dropped per row; the diagonal may or may not be one of them.
    assert ((off_diagonal > 0).sum(-1) <= 2).all()
    # Row sums are at most 1 before renormalizing, so the residual share can only grow.
    assert (torch.diagonal(transitions[0, 0]) >= 0.5).all()
    torch.testing.assert_close(transitions.sum(-1), torch.ones(1, 1, 5, dtype=torch.float64))


def test_rollout_rows_equal_rows_of_the_full_matrices():
    from captum_attnflow.functional import rollout_rows

    transitions = transition_matrices(random_attentions(4, 3, 2, 6, seed=9))
    full = attention_rollout(random_attentions(4, 3, 2, 6, seed=9))
    weights = torch.zeros(3, 6, dtype=torch.float64)
    weights[0, 2] = 1.0
    weights[1] = 1 / 6
    weights[2, [0, 5]] = 0.5
    rows = rollout_rows(transitions, weights, [0, 2, 3])
    expected = torch.einsum("bs,lbst->lbt", weights, full[[0, 2, 3]])
    torch.testing.assert_close(rows, expected)
