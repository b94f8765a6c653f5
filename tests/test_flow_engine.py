"""The compiled max-flow engine against independent networkx max-flows on hard graphs."""

import numpy as np
import pytest
import torch

from captum_attnflow.capture import capture_attention
from captum_attnflow.functional import _cost, _maxflow
from captum_attnflow.functional.flow import batched_flow_from_transitions, flow_from_transitions
from captum_attnflow.functional.fusion import transition_matrices
from references import networkx_flow

pytestmark = pytest.mark.skipif("numba" not in _maxflow.FLOW_BACKENDS, reason="numba not installed")


def sparse_capacities(rng, num_layers, seq_len, density):
    """Row-stochastic layers where most edges are missing: greedy routing goes wrong here,
    so Dinic needs several phases and must push flow back along reverse arcs."""
    keep = rng.random((num_layers, seq_len, seq_len)) < density
    keep[:, np.arange(seq_len), rng.integers(0, seq_len, seq_len)] = True  # no empty rows
    weights = rng.random((num_layers, seq_len, seq_len)) * keep
    return weights / weights.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", range(12))
def test_sparse_random_graphs_match_networkx(seed):
    rng = np.random.default_rng(seed)
    num_layers, seq_len = int(rng.integers(2, 6)), int(rng.integers(3, 10))
    capacities = sparse_capacities(rng, num_layers, seq_len, density=0.3)
    source = int(rng.integers(seq_len))
    flows = _maxflow.max_flow_to_inputs(capacities, [source], backend="numba")[0]
    np.testing.assert_allclose(flows, networkx_flow(capacities, source), atol=1e-9)


def test_flow_that_must_be_rerouted_is_found():
    # Source s=(3,0) feeds a=(2,0) and b=(2,1) with 0.5 each; a -> c=(1,0), d=(1,1) (0.5 each),
    # b -> c only; c and d each send 0.5 to input 0. The first (shortest-path) phase routes
    # s->a->c->0 and strands b's half at c; the second phase must cancel a->c through the
    # reverse arc (s->b->c->a->d->0) to reach the true maximum, 1.
    capacities = np.zeros((3, 2, 2))
    capacities[2] = [[0.5, 0.5], [0.5, 0.5]]
    capacities[1] = [[0.5, 0.5], [1.0, 0.0]]
    capacities[0] = [[0.5, 0.5], [0.5, 0.5]]
    np.testing.assert_allclose(networkx_flow(capacities, 0), [1.0, 1.0])
    np.testing.assert_allclose(_maxflow.max_flow_to_inputs(capacities, [0], backend="numba")[0], [1.0, 1.0],
                               atol=1e-12)


@pytest.mark.parametrize("temperature", [0.3, 3.0, 8.0])
def test_softmax_attention_graphs_match_networkx(temperature):
    generator = torch.Generator().manual_seed(int(temperature * 10))
    logits = torch.randn(5, 1, 4, 9, 9, generator=generator, dtype=torch.float64) * temperature
    capacities = transition_matrices(torch.softmax(logits, -1))[:, 0].numpy()
    for source in (0, 4, 8):
        np.testing.assert_allclose(_maxflow.max_flow_to_inputs(capacities, [source], backend="numba")[0],
                                   networkx_flow(capacities, source), atol=1e-9)


def test_numba_equals_authors_edmonds_karp_on_real_attention(minilm, minilm_tokenizer):
    encoded = minilm_tokenizer(["The keys to the cabinet are on the table."], return_tensors="pt")
    # Our capture, not output_attentions=True: transformers would leave its own recording
    # hooks on the shared model.
    attentions = capture_attention(minilm, encoded.input_ids, (encoded.attention_mask,), head_fusion=None).attentions
    capacities = transition_matrices(attentions)[:, 0].double().numpy()
    sources = [0, capacities.shape[-1] - 1]
    fast = _maxflow.max_flow_to_inputs(capacities, sources, backend="numba")
    authors = _maxflow.max_flow_to_inputs(capacities, sources, backend="networkx")
    np.testing.assert_allclose(fast, authors, atol=1e-6)


def test_one_batched_call_equals_per_example_calls():
    rng = np.random.default_rng(7)
    capacities = np.stack([sparse_capacities(rng, 3, 6, density=0.5) for _ in range(3)])
    valid = np.ones((3, 6), dtype=bool)
    valid[1, 4:] = False
    sources = [[0], [1, 3], [5, 2, 0]]
    batched = batched_flow_from_transitions(capacities, sources, valid=valid, normalize=False)
    for b in range(3):
        single = flow_from_transitions(capacities[b], sources[b], valid=valid[b], normalize=False)
        np.testing.assert_array_equal(batched[b], single)
        networkx = flow_from_transitions(capacities[b], sources[b], valid=valid[b], normalize=False,
                                         backend="networkx")
        np.testing.assert_allclose(batched[b], networkx, atol=1e-9)
    assert (batched[1][:, 4:] == 0).all()


def test_cost_estimate_grows_with_the_problem():
    small = _cost.estimate_flow_cost(6, 32, 1, 1)
    assert small.num_problems == 32 and small.num_edges == 6 * 32 * 32
    longer = _cost.estimate_flow_cost(6, 64, 1, 1)
    deeper = _cost.estimate_flow_cost([6, 12], 32, 1, 1)
    assert longer.seconds > small.seconds * 7 and longer.memory_bytes > small.memory_bytes
    assert deeper.num_problems == 2 * small.num_problems and deeper.seconds > small.seconds
    assert _cost.estimate_flow_cost(6, 32, 1, 1, backend="networkx").seconds > small.seconds * 100


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="backend"):
        _maxflow.check_backend("scipy-typo")
