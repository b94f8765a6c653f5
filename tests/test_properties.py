"""Property-based tests of rollout and flow on random attention tensors (bounded: S ≤ 8, L ≤ 4)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_attnflow.functional import attention_flow, attention_rollout

BOUNDED = settings(max_examples=50, deadline=None, derandomize=True)
ATOL = 1e-6


@st.composite
def attention_problems(draw, max_layers=4, max_len=8, max_batch=3, min_len=1):
    """Random post-softmax attention ``(L, B, H, S, S)`` and propagation options."""
    num_layers = draw(st.integers(1, max_layers))
    batch_size = draw(st.integers(1, max_batch))
    heads = draw(st.integers(1, 3))
    seq_len = draw(st.integers(min_len, max_len))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    sharpness = draw(st.sampled_from([0.1, 1.0, 5.0]))
    logits = torch.randn(num_layers, batch_size, heads, seq_len, seq_len, generator=generator, dtype=torch.float64)
    if draw(st.booleans()):  # decoder-style causal attention: exact zeros above the diagonal
        logits = logits.masked_fill(~torch.ones(seq_len, seq_len, dtype=torch.bool).tril(), -torch.inf)
    weights = torch.softmax(logits * sharpness, dim=-1)
    options = {
        "head_fusion": draw(st.sampled_from(["mean", "max", "min"])),
        "residual_weight": draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0)),
        "discard_ratio": draw(st.sampled_from([0.0, 0.0, 0.5]) | st.floats(0.0, 0.9)),
    }
    return weights, options


def _permutation(seq_len: int, seed: int) -> torch.Tensor:
    return torch.randperm(seq_len, generator=torch.Generator().manual_seed(seed))


@BOUNDED
@given(attention_problems())
def test_rollout_rows_are_distributions(problem):
    weights, options = problem
    rollout = attention_rollout(weights, **options)
    assert (rollout >= 0).all()
    assert torch.allclose(rollout.sum(-1), torch.ones(rollout.shape[:-1], dtype=rollout.dtype), atol=ATOL)


@BOUNDED
@given(attention_problems(), st.data())
def test_first_layer_flow_equals_first_layer_rollout(problem, data):
    weights, options = problem
    seq_len = weights.shape[-1]
    position = data.draw(st.integers(0, seq_len - 1))
    flow = attention_flow(weights, token_index=position, layer=0, normalize=False, **options)
    rollout = attention_rollout(weights, **options)[0, :, position]
    assert torch.allclose(flow, rollout, atol=ATOL)


@BOUNDED
@given(attention_problems(max_batch=2), st.data())
def test_unnormalized_flow_bounds(problem, data):
    # The rollout row is one feasible flow to each input (it never exceeds an edge's
    # capacity), so the max-flow is at least as large; the source emits at most 1.
    weights, options = problem
    num_layers, seq_len = weights.shape[0], weights.shape[-1]
    layer = data.draw(st.integers(0, num_layers - 1))
    position = data.draw(st.integers(0, seq_len - 1))
    flow = attention_flow(weights, token_index=position, layer=layer, normalize=False, **options)
    rollout = attention_rollout(weights, **options)[layer, :, position]
    assert (flow >= rollout - ATOL).all()
    assert (flow <= 1 + ATOL).all()


@BOUNDED
@given(attention_problems(max_batch=2), st.data())
def test_permuting_positions_permutes_results(problem, data):
    weights, options = problem
    num_layers, seq_len = weights.shape[0], weights.shape[-1]
    layer = data.draw(st.integers(0, num_layers - 1))
    position = data.draw(st.integers(0, seq_len - 1))
    order = _permutation(seq_len, data.draw(st.integers(0, 1000)))  # new position k holds old order[k]
    permuted = weights[..., order, :][..., order]
    new_position = int((order == position).nonzero())

    rollout = attention_rollout(weights, **options)[layer, :, position]
    permuted_rollout = attention_rollout(permuted, **options)[layer, :, new_position]
    assert torch.allclose(permuted_rollout, rollout[:, order], atol=ATOL)

    flow = attention_flow(weights, token_index=position, layer=layer, **options)
    permuted_flow = attention_flow(permuted, token_index=new_position, layer=layer, **options)
    assert torch.allclose(permuted_flow, flow[:, order], atol=ATOL)


def _pad(example: torch.Tensor, real_slots: torch.Tensor, padded_len: int, seed: int) -> torch.Tensor:
    """Embed one example ``(L, H, S, S)`` at ``real_slots`` of a longer sequence.

    Padded rows get arbitrary attention (they are ignored); real rows give padded keys zero
    weight, as a model's masked softmax does.
    """
    num_layers, heads = example.shape[:2]
    generator = torch.Generator().manual_seed(seed)
    padded = torch.softmax(torch.randn(num_layers, heads, padded_len, padded_len, generator=generator,
                                       dtype=example.dtype), dim=-1)
    real_rows = padded[:, :, real_slots]
    real_rows.zero_()
    real_rows[..., real_slots] = example
    padded[:, :, real_slots] = real_rows
    return padded


@BOUNDED
@given(attention_problems(max_len=6, max_batch=3), st.data())
def test_results_do_not_depend_on_batch_or_padding(problem, data):
    weights, options = problem
    num_layers, batch_size, _, seq_len, _ = weights.shape
    example = data.draw(st.integers(0, batch_size - 1))
    position = data.draw(st.integers(0, seq_len - 1))
    layer = data.draw(st.integers(0, num_layers - 1))
    extra = data.draw(st.integers(1, 3))
    padded_len = seq_len + extra
    left = data.draw(st.booleans())
    real_slots = torch.arange(extra, padded_len) if left else torch.arange(seq_len)
    padded = _pad(weights[:, example], real_slots, padded_len, data.draw(st.integers(0, 1000)))[:, None]
    mask = torch.zeros(1, padded_len, dtype=torch.long)
    mask[0, real_slots] = 1
    padded_position = int(real_slots[position])

    def rollout_row(w, p, m=None):
        return attention_rollout(w, attention_mask=m, **options)[layer, :, p]

    def flow_row(w, p, m=None):
        return attention_flow(w, token_index=p, layer=layer, attention_mask=m, **options)

    for method in (rollout_row, flow_row):
        alone = method(weights[:, example:example + 1], position)[0]
        in_batch = method(weights, position)[example]
        padded_result = method(padded, padded_position, mask)[0]
        assert torch.allclose(in_batch, alone, atol=ATOL)
        assert torch.allclose(padded_result[real_slots], alone, atol=ATOL)
        assert (padded_result[mask[0] == 0] == 0).all()


@BOUNDED
@given(attention_problems(max_batch=2), st.data())
def test_fused_results_do_not_depend_on_head_order(problem, data):
    weights, options = problem
    heads = weights.shape[2]
    order = torch.randperm(heads, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 1000))))
    shuffled = weights[:, :, order]
    assert torch.allclose(attention_rollout(shuffled, **options), attention_rollout(weights, **options), atol=ATOL)
    assert torch.allclose(attention_flow(shuffled, **options), attention_flow(weights, **options), atol=ATOL)
