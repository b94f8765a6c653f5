"""Fuzzing the public API: random shapes, dtypes, values and options.

Every call must either return a correct result or raise one of the documented
exceptions (:class:`AttnFlowError` subclasses) — never a raw torch, numpy or networkx error —
and leave the model as found. Found so far: ``causal_normalization`` on encoder attention
(silent zeros), and for plain PyTorch models 3-D integer inputs and mis-shaped padding masks
(raw assertions inside ``nn.MultiheadAttention``).
"""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import PaddedEncoder, assert_unchanged, snapshot, tiny_bert
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from captum_attnflow import AttentionFlow, AttentionRollout, AttnFlowError, RawAttention
from captum_attnflow.functional import attention_flow, attention_rollout, transition_matrices

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.uint8, torch.bool, torch.complex64]
SPECIAL_VALUES = [0.0, -1.0, 2.0, math.nan, math.inf, -math.inf, 1e30]


@st.composite
def tensors(draw, max_ndim=6, max_side=5):
    """A tensor of random rank, sides (zero allowed), dtype and values (NaN, inf, negatives ...)."""
    shape = draw(st.lists(st.integers(0, max_side), min_size=0, max_size=max_ndim))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    values = torch.softmax(torch.randn(*shape, generator=generator), dim=-1) if shape else torch.rand(())
    if draw(st.booleans()) and values.numel() > 0:
        flat = values.flatten()
        flat[draw(st.integers(0, values.numel() - 1))] = draw(st.sampled_from(SPECIAL_VALUES))
        values = flat.reshape(values.shape)
    dtype = draw(st.sampled_from(DTYPES))
    if dtype.is_complex:
        return values.to(dtype)
    return values.nan_to_num().to(dtype) if not dtype.is_floating_point else values.to(dtype)


@st.composite
def attentions_arguments(draw):
    """Mostly well-formed (L, B, H, S, S) attention, sometimes anything at all."""
    choice = draw(st.sampled_from(["valid", "valid", "list", "tensor", "other"]))
    if choice == "tensor":
        return draw(tensors())
    if choice == "other":
        return draw(st.sampled_from([None, 3.0, "attn", [], [[0.5]], np.ones((1, 1, 1, 2, 2))]))
    num_layers, batch_size, heads, seq_len = (draw(st.integers(1, 3)), draw(st.integers(1, 2)),
                                              draw(st.integers(1, 2)), draw(st.integers(1, 5)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    weights = torch.softmax(torch.randn(num_layers, batch_size, heads, seq_len, seq_len, generator=generator), -1)
    return list(weights) if choice == "list" else weights


OPTION_VALUES = {
    "head_fusion": st.sampled_from(["mean", "max", "min", "median", "", None, 1]),
    "residual_weight": st.sampled_from([0.0, 0.5, 1.0, -0.1, 1.1, math.nan, None, "0.5", True]) | st.floats(0, 1),
    "discard_ratio": st.sampled_from([0.0, 0.3, 0.99, 1.0, -0.5, math.inf, None]),
    "attention_mask": st.none() | tensors(max_ndim=3) | st.sampled_from([[1, 1], "mask"]),
    "layer": st.integers(-5, 5) | st.sampled_from([None, 0.0, "last", True]),
    "token_index": st.integers(-6, 6) | st.lists(st.integers(-6, 6), max_size=3)
    | st.sampled_from([None, 1.5, torch.tensor(1), torch.tensor([0, 1]), torch.tensor([[0, 1]]), [[0]], "mean",
                       "last", "all", "first"]),
    "normalize": st.sampled_from([True, False, "yes", None]),
    "backend": st.sampled_from(["auto", "networkx", "cplex", None]),
    "causal_normalization": st.sampled_from([False, True, 1]),
    "allow_large": st.sampled_from([False, True, "no"]),
}
FUNCTION_OPTIONS = {
    transition_matrices: ["head_fusion", "residual_weight", "discard_ratio", "attention_mask"],
    attention_rollout: ["head_fusion", "residual_weight", "discard_ratio", "attention_mask", "causal_normalization",
                        "token_index"],
    attention_flow: list(OPTION_VALUES),
}
#: Each fuzz test must see at least this many calls get through validation: a suite that
#: refuses everything checks nothing.
MIN_RESULTS = 5


@st.composite
def options_for(draw, names, values=None):
    values = OPTION_VALUES if values is None else values
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
    return {name: draw(values[name]) for name in chosen}


# Options a user would pass; half of the class-level examples use only these, so that a good
# share of calls get through validation and their results are checked.
VALID_OPTION_VALUES = {
    "head_fusion": st.sampled_from(["mean", "max", "min"]),
    "residual_weight": st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1),
    "discard_ratio": st.sampled_from([0.0, 0.3, 0.9]),
    "layer": st.integers(-2, 1),
    "normalize": st.booleans(),
    "backend": st.sampled_from(["auto", "networkx"]),
    "causal_normalization": st.just(False),
    "allow_large": st.booleans(),
}


def _check_distribution_rows(result: torch.Tensor):
    """Rows are distributions, or all zero (rows of padded positions in matrices)."""
    assert torch.isfinite(result).all() and (result >= -1e-6).all()
    sums = result.sum(-1).double()
    assert torch.all((sums - 1).abs() <= 1e-4) or torch.all(((sums - 1).abs() <= 1e-4) | (sums == 0)), sums


@pytest.mark.parametrize("function", list(FUNCTION_OPTIONS), ids=lambda f: f.__name__)
def test_functional_api_returns_correct_results_or_documented_errors(function):
    outcomes = Counter()

    @FUZZ
    @given(data=st.data())
    def run(data):
        attentions = data.draw(attentions_arguments())
        options = data.draw(options_for(FUNCTION_OPTIONS[function]))
        try:
            result = function(attentions, **options)
        except AttnFlowError as error:
            event(type(error).__name__)
            outcomes["refused"] += 1
            return
        event("result")
        outcomes["result"] += 1
        assert isinstance(result, torch.Tensor)
        if function is attention_flow:
            assert torch.isfinite(result).all() and (result >= -1e-6).all() and (result <= 1 + 1e-6).all()
            if options.get("normalize", True) is True:
                _check_distribution_rows(result)
        else:
            _check_distribution_rows(result)

    run()
    assert outcomes["result"] >= MIN_RESULTS, outcomes


@st.composite
def padded_batches(draw, out_of_vocabulary=True):
    """Well-formed ``(B, S)`` ids with left or right padding; now and then one id outside [0, 50)."""
    batch_size, seq_len = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    ids = torch.randint(0, 50, (batch_size, seq_len), generator=generator)
    if out_of_vocabulary and draw(st.integers(0, 4)) == 0:
        ids.view(-1)[draw(st.integers(0, ids.numel() - 1))] = draw(st.sampled_from([-2, -1, 50, 55]))
    left_padding = draw(st.booleans())
    mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
    for b in range(batch_size):
        real = draw(st.integers(1, seq_len))
        real_slots = slice(seq_len - real, None) if left_padding else slice(0, real)
        mask[b, real_slots] = 1
    return ids, mask


@st.composite
def model_inputs(draw):
    """Token ids of random rank/dtype/values, or well-formed padded ids with their mask, no mask or
    a random one."""
    choice = draw(st.sampled_from(["random-ids", "padded", "padded", "no-mask", "random-mask"]))
    if choice == "random-ids":
        return draw(tensors(max_ndim=3, max_side=6)), None
    ids, mask = draw(padded_batches())
    if choice == "no-mask":
        return ids, None
    if choice == "random-mask":
        return ids, draw(tensors(max_ndim=3, max_side=8))
    return ids, mask


CLASS_OPTIONS = {
    AttentionRollout: ["head_fusion", "residual_weight", "discard_ratio", "layer", "causal_normalization"],
    AttentionFlow: ["head_fusion", "residual_weight", "discard_ratio", "layer", "normalize", "backend",
                    "causal_normalization", "allow_large"],
    RawAttention: ["head_fusion", "layer"],
}
TOKEN_INDICES = st.integers(-9, 9) | st.sampled_from(["mean", "last", "all", "first", None, 1.0, torch.tensor([0, 1]),
                                                      torch.tensor([[0]]), torch.tensor([[0, 1]]), [0, 0], []])
VALID_TOKEN_INDICES = st.sampled_from([0, "mean", "last", "all"])


@st.composite
def class_options(draw, method):
    """``(token_index, options)``: everything goes, or only what a user would pass."""
    if draw(st.booleans()):
        return draw(VALID_TOKEN_INDICES), draw(options_for(CLASS_OPTIONS[method], VALID_OPTION_VALUES))
    return draw(TOKEN_INDICES), draw(options_for(CLASS_OPTIONS[method]))


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()  # max_position_embeddings=32: longer inputs fail inside the model itself


def _fuzz_class(model, method, draw_inputs, mask_for_check=lambda mask: mask):
    """Run a class on fuzzed inputs and options: a correct result or a documented error, model unchanged."""
    outcomes = Counter()

    @FUZZ
    @given(data=st.data())
    def run(data):
        ids, mask = data.draw(draw_inputs)
        token_index, options = data.draw(class_options(method))
        before = snapshot(model)
        try:
            scores = method(model).attribute(ids, additional_forward_args=None if mask is None else (mask,),
                                             token_index=token_index, **options)
        except AttnFlowError as error:
            event(type(error).__name__)
            outcomes["refused"] += 1
            assert_unchanged(model, before)
            return
        event("result")
        outcomes["result"] += 1
        assert_unchanged(model, before)
        _check_scores(scores, ids, None if mask is None else mask_for_check(mask), method, token_index, options)

    run()
    assert outcomes["result"] >= MIN_RESULTS, outcomes


@pytest.mark.parametrize("method", list(CLASS_OPTIONS), ids=lambda m: m.__name__)
def test_classes_return_correct_results_or_documented_errors(bert, method):
    _fuzz_class(bert, method, model_inputs())


def _check_scores(scores, ids, mask, method, token_index, options):
    rows = token_index == "all" or (isinstance(token_index, torch.Tensor) and token_index.ndim == 2)
    if token_index == "all":
        assert scores.shape == (*ids.shape, ids.shape[1])
    elif rows:
        assert scores.shape == (ids.shape[0], token_index.shape[1], ids.shape[1])
    else:
        assert scores.shape == ids.shape
    assert torch.isfinite(scores).all() and (scores >= -1e-6).all()
    if mask is not None:
        padded = mask == 0
        assert (scores.movedim(-1, 1)[padded] == 0).all() if rows else (scores[padded] == 0).all()
    if method is AttentionRollout or (method is AttentionFlow and options.get("normalize", True)):
        sums = scores.sum(-1)
        assert torch.all(((sums - 1).abs() <= 1e-4) | ((sums == 0) if token_index == "all" else False))


@st.composite
def torch_model_inputs(draw):
    """In-vocabulary ids, well-formed and padded or of random rank and size, with a padding mask
    that is right or of random shape, dtype and values.

    Plain PyTorch models give no vocabulary size to check ids against, and ids of a dtype the
    model cannot embed fail in the model's own code; both are the caller's contract.
    """
    ids, mask = draw(padded_batches(out_of_vocabulary=False))
    if draw(st.integers(0, 2)) == 0:
        shape = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
        ids = torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31))))
    if draw(st.integers(0, 2)) == 0:
        mask = draw(tensors(max_ndim=3, max_side=6))
    return ids, mask


@pytest.fixture(scope="module")
def torch_encoder():
    return PaddedEncoder().eval()


@pytest.mark.parametrize("method", list(CLASS_OPTIONS), ids=lambda m: m.__name__)
def test_torch_models_return_correct_results_or_documented_errors(torch_encoder, method):
    # The model reads ``attention_mask == 0`` as padding, whatever the mask's dtype.
    _fuzz_class(torch_encoder, method, torch_model_inputs(), mask_for_check=lambda mask: (mask != 0).long())
