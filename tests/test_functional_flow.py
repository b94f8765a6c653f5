"""Attention flow: exact max-flow values, the paper's normalization, layer-1 == rollout."""

import numpy as np
import pytest
import torch
from references import networkx_flow

from captum_attnflow.functional import attention_flow, attention_rollout, transition_matrices


def random_attentions(num_layers, batch_size, heads, seq_len, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_layers, batch_size, heads, seq_len, seq_len, generator=generator,
                         dtype=torch.float64) * 2
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("num_layers,seq_len,position", [(1, 4, 0), (2, 5, 3), (4, 6, 1), (3, 7, 6)])
def test_unnormalized_flow_equals_networkx_max_flow(num_layers, seq_len, position):
    attentions = random_attentions(num_layers, 1, 3, seq_len, seed=seq_len)
    flow = attention_flow(attentions, token_index=position, normalize=False)
    a_hat = transition_matrices(attentions)[:, 0].numpy()
    np.testing.assert_allclose(flow[0].numpy(), networkx_flow(a_hat, position), atol=1e-6)


def test_layer_one_flow_equals_layer_one_rollout():
    attentions = random_attentions(4, 2, 2, 6, seed=1)
    rollout = attention_rollout(attentions)
    for position in range(6):
        flow = attention_flow(attentions, token_index=position, layer=0, normalize=False)
        torch.testing.assert_close(flow, rollout[0, :, position], atol=1e-6, rtol=0)


def test_normalized_flow_sums_to_one():
    flow = attention_flow(random_attentions(3, 2, 2, 5), token_index=torch.tensor([[0, 2], [0, 2]]))
    assert flow.shape == (2, 2, 5)
    torch.testing.assert_close(flow.sum(-1), torch.ones(2, 2, dtype=torch.float64))


def test_layer_selects_a_prefix_of_the_graph():
    attentions = random_attentions(4, 1, 2, 5, seed=7)
    at_layer_2 = attention_flow(attentions, layer=1)
    truncated = attention_flow(attentions[:2], layer=-1)
    torch.testing.assert_close(at_layer_2, truncated)


def test_unnormalized_flow_bounds_rollout_from_above():
    """Rollout is a feasible flow, so the max-flow can only be larger (and at most 1)."""
    attentions = random_attentions(5, 1, 2, 6, seed=11)
    flow = attention_flow(attentions, token_index=2, normalize=False)
    rollout_row = attention_rollout(attentions)[-1, :, 2]
    assert (flow >= rollout_row - 1e-9).all() and (flow <= 1 + 1e-9).all()


def test_padded_inputs_get_zero_and_match_unpadded():
    real = random_attentions(3, 1, 2, 4, seed=5)
    padded = torch.full((3, 1, 2, 6, 6), 1 / 6, dtype=torch.float64)
    padded[..., :4, :4] = real
    padded[..., :4, 4:] = 0.0
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    flow_padded = attention_flow(padded, attention_mask=mask)
    torch.testing.assert_close(flow_padded[:, :4], attention_flow(real))
    assert (flow_padded[:, 4:] == 0).all()
