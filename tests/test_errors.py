"""One test per bad input: the documented exception, its built-in family, a message naming
the parameter, and the model left as found. The exceptions and when they are raised are
listed in :mod:`captum_attnflow.exceptions`."""

import math

import numpy as np
import pytest
import torch
import transformers as T
from helpers import PaddedEncoder, assert_unchanged, snapshot, tiny_bert, tiny_vit
from torch import nn

from captum_attnflow import (
    AttentionCaptureError,
    AttentionFlow,
    AttentionRollout,
    AttnFlowError,
    InvalidInputError,
    InvalidInputTypeError,
    InvalidParameterError,
    ProblemTooLargeError,
    RawAttention,
    UnsupportedModelError,
)
from captum_attnflow.capture import HuggingFaceAdapter
from captum_attnflow.functional import (
    _cost,
    _maxflow,
    attention_flow,
    attention_rollout,
    batched_flow_from_transitions,
    flow_from_transitions,
    transition_matrices,
)

FAMILY = {
    InvalidParameterError: ValueError,
    InvalidInputError: ValueError,
    InvalidInputTypeError: TypeError,
    UnsupportedModelError: TypeError,
    AttentionCaptureError: RuntimeError,
    ProblemTooLargeError: RuntimeError,
}
METHODS = (AttentionRollout, AttentionFlow, RawAttention)
IDS = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 3]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def attentions(num_layers=2, batch_size=1, heads=2, seq_len=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(num_layers, batch_size, heads, seq_len, seq_len, generator=generator), -1)


def assert_documented(raised, expected, *names):
    """The exception is ``expected``, an AttnFlowError of the right built-in family, naming ``names``."""
    error = raised.value
    assert type(error) is expected
    assert isinstance(error, AttnFlowError) and isinstance(error, FAMILY[expected])
    for name in names:
        assert name in str(error), f"{name!r} not in message: {error}"


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


@pytest.fixture()
def unchanged(bert):
    """Every test using ``bert`` also checks that the model is left as found."""
    before = snapshot(bert)
    yield bert
    assert_unchanged(bert, before)


# --- inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("inputs, expected", [
    (IDS.float(), InvalidInputTypeError),
    (IDS.bool(), InvalidInputTypeError),
    (IDS.tolist(), InvalidInputTypeError),
    (IDS[0], InvalidInputError),
    (IDS[None], InvalidInputError),
    (torch.zeros(1, 0, dtype=torch.long), InvalidInputError),
    (torch.zeros(0, 4, dtype=torch.long), InvalidInputError),
    (torch.tensor([[1, -3, 2]]), InvalidInputError),
    (torch.tensor([[1, 50, 2]]), InvalidInputError),  # vocabulary has 50 rows
], ids=["float-ids", "bool-ids", "list", "1-d", "3-d", "empty-sequence", "empty-batch", "negative-id",
        "id-beyond-vocabulary"])
def test_bad_token_ids(unchanged, method, inputs, expected):
    with pytest.raises(expected) as raised:
        method(unchanged).attribute(inputs)
    assert_documented(raised, expected, "inputs")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("mask, expected", [
    (MASK[:, :3], InvalidInputError),
    (MASK[:1], InvalidInputError),
    (torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), InvalidInputError),
    (MASK.tolist(), InvalidInputTypeError),
], ids=["too-short", "too-few-rows", "all-padding", "list"])
def test_bad_attention_mask_is_refused_before_the_forward_pass(unchanged, method, mask, expected):
    with pytest.raises(expected) as raised:
        method(unchanged).attribute(IDS, additional_forward_args=(mask,))
    assert_documented(raised, expected, "attention_mask")


@pytest.mark.parametrize("mask, expected", [
    (MASK[:, :3], InvalidInputError),
    (torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), InvalidInputError),
    (MASK.numpy(), InvalidInputTypeError),
], ids=["shape", "all-padding", "numpy"])
def test_bad_attention_mask_functional(mask, expected):
    for function in (attention_rollout, attention_flow):
        with pytest.raises(expected) as raised:
            function(attentions(batch_size=2), attention_mask=mask)
        assert_documented(raised, expected, "attention_mask")


# --- attention tensors --------------------------------------------------------------------

def _poisoned(value):
    weights = attentions()
    weights[1, 0, 1, 2, 3] = value
    return weights


@pytest.mark.parametrize("bad, expected", [
    (_poisoned(math.nan), InvalidInputError),
    (_poisoned(math.inf), InvalidInputError),
    (_poisoned(-0.5), InvalidInputError),
    (attentions()[0], InvalidInputError),  # 4-D: layer axis missing
    (attentions()[..., :3], InvalidInputError),  # not square
    ((attentions() * 100).long(), InvalidInputTypeError),
    ([], InvalidInputError),
    ([attentions()[0, :, :, :3, :3], attentions()[1]], InvalidInputError),
    (attentions().numpy(), InvalidInputTypeError),
    (torch.ones(2, 1, 2, 0, 0), InvalidInputError),
], ids=["nan", "inf", "negative", "4-d", "not-square", "integer", "empty-list", "ragged", "numpy", "empty"])
def test_bad_attentions_functional(bad, expected):
    for function in (attention_rollout, attention_flow, transition_matrices):
        with pytest.raises(expected) as raised:
            function(bad)
        assert_documented(raised, expected, "attentions")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_attention_from_the_model(method, value):
    weights = _poisoned(value)
    explainer = method(lambda ids: ids.float(), attention_fn=lambda ids: weights)
    with pytest.raises(InvalidInputError) as raised:
        explainer.attribute(torch.tensor([[1, 2, 3, 4]]))
    assert_documented(raised, InvalidInputError, "attention_fn layer 2", "NaN or inf")


# --- sequence length 1 is valid -------------------------------------------------------------

def test_single_token_sequence_is_valid(unchanged):
    one = attentions(num_layers=3, seq_len=1)
    assert torch.equal(attention_rollout(one), torch.ones(3, 1, 1, 1))
    assert torch.equal(attention_flow(one, normalize=False), torch.ones(1, 1))
    for method in METHODS:
        assert torch.allclose(method(unchanged).attribute(torch.tensor([[7]])), torch.ones(1, 1))


# --- parameters -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("token_index", [4, -5, 2.0, "first", torch.tensor([[0, 1]]), torch.tensor([0.0, 1.0]),
                                         [0], None, True])
def test_bad_token_index(unchanged, method, token_index):
    with pytest.raises(InvalidParameterError) as raised:
        method(unchanged).attribute(IDS, token_index=token_index)
    assert_documented(raised, InvalidParameterError, "token_index")


def test_token_index_on_padding(unchanged):
    with pytest.raises(InvalidParameterError) as raised:
        AttentionRollout(unchanged).attribute(IDS, additional_forward_args=(MASK,), token_index=3)
    assert_documented(raised, InvalidParameterError, "token_index", "padding")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("layer", [2, -3, 0.5, "last"])
def test_bad_layer(unchanged, method, layer):
    with pytest.raises(InvalidParameterError) as raised:
        method(unchanged).attribute(IDS, layer=layer)
    assert_documented(raised, InvalidParameterError, "layer")


@pytest.mark.parametrize("token_index", [4, -5, [0, 9], [], 1.5, [[0, 1], [0]], "middle", True, torch.tensor([[0, 4]]),
                                         torch.zeros(1, 1, 1, dtype=torch.long)])
def test_bad_token_index_functional(token_index):
    with pytest.raises(InvalidParameterError) as raised:
        attention_flow(attentions(), token_index=token_index)
    assert_documented(raised, InvalidParameterError, "token_index")


def test_the_old_names_of_token_index_are_gone():
    """The package is unreleased: ``output_positions=``/``sources=`` were dropped, not deprecated."""
    with pytest.raises(TypeError, match="output_positions"):
        attention_flow(attentions(), output_positions=[0, 2])
    transitions = np.full((1, 3, 3), 1 / 3)
    with pytest.raises(TypeError, match="sources"):
        flow_from_transitions(transitions, sources=[0])
    with pytest.raises(TypeError, match="sources"):
        batched_flow_from_transitions(transitions[None], sources=[[0]])


def test_bad_layer_functional():
    with pytest.raises(InvalidParameterError) as raised:
        attention_flow(attentions(), layer=2)
    assert_documented(raised, InvalidParameterError, "layer")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_unknown_head_fusion(unchanged, method):
    with pytest.raises(InvalidParameterError) as raised:
        method(unchanged).attribute(IDS, head_fusion="median")
    assert_documented(raised, InvalidParameterError, "head_fusion")
    for function in (attention_rollout, attention_flow, transition_matrices):
        with pytest.raises(InvalidParameterError) as raised:
            function(attentions(), head_fusion="median")
        assert_documented(raised, InvalidParameterError, "head_fusion")


@pytest.mark.parametrize("name, value", [
    ("residual_weight", -0.1), ("residual_weight", 1.5), ("residual_weight", math.nan),
    ("residual_weight", "half"), ("discard_ratio", 1.0), ("discard_ratio", -0.2),
    ("discard_ratio", math.inf),
])
@pytest.mark.parametrize("method", (AttentionRollout, AttentionFlow), ids=lambda m: m.__name__)
def test_fraction_out_of_range(unchanged, method, name, value):
    calls = []
    explainer = method(unchanged)
    explainer.capture = lambda *a, **k: calls.append(a)  # must be refused before the model runs
    with pytest.raises(InvalidParameterError) as raised:
        explainer.attribute(IDS, **{name: value})
    assert_documented(raised, InvalidParameterError, name)
    assert not calls
    for function in (attention_rollout, attention_flow):
        with pytest.raises(InvalidParameterError) as raised:
            function(attentions(), **{name: value})
        assert_documented(raised, InvalidParameterError, name)


@pytest.mark.parametrize("name", ["normalize", "allow_large", "causal_normalization", "return_all_layers"])
def test_flags_must_be_bools(unchanged, name):
    with pytest.raises(InvalidParameterError) as raised:
        AttentionFlow(unchanged).attribute(IDS, **{name: "yes"})
    assert_documented(raised, InvalidParameterError, name)


def test_unknown_backend(unchanged):
    with pytest.raises(InvalidParameterError) as raised:
        AttentionFlow(unchanged).attribute(IDS, backend="cplex")
    assert_documented(raised, InvalidParameterError, "backend")
    with pytest.raises(InvalidParameterError) as raised:
        attention_flow(attentions(), backend="cplex")
    assert_documented(raised, InvalidParameterError, "backend")


# --- flow problems too large ------------------------------------------------------------------

def _over_budget_seq_len(num_layers: int) -> int:
    """The shortest power-of-two length whose all-positions flow is over budget even for the
    data-aware estimate: the size-only bound errs high by at most ~30x, and the sampled
    estimate keeps a 3x margin, so 20x over the budget stays over it."""
    seq_len = 16
    while _cost.estimate_flow_cost(num_layers, seq_len, 1, seq_len, residual_weight=0.5).seconds \
            <= 20 * _cost.FLOW_TIME_BUDGET_S:
        seq_len *= 2
    assert seq_len <= 1024, "the estimator calls a 12-layer, 1024-token flow cheap"
    return seq_len


def test_large_flow_problem_is_refused_with_its_estimate(monkeypatch):
    num_layers = 12
    seq_len = _over_budget_seq_len(num_layers)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a refused problem must not start solving")

    monkeypatch.setattr(_maxflow, "max_flows_for_tasks", must_not_run)
    with pytest.raises(ProblemTooLargeError) as raised:
        attention_flow(attentions(num_layers=num_layers, heads=1, seq_len=seq_len), token_index="all")
    assert_documented(raised, ProblemTooLargeError, "allow_large")
    assert f"{seq_len ** 2:,} max-flow problems" in str(raised.value)
    assert "estimated" in str(raised.value)


def test_size_only_estimate_over_budget_is_refined_on_a_sample(monkeypatch):
    # Work is counted in engine steps, not seconds: both estimates are deterministic.
    weights = attentions(num_layers=4, heads=2, seq_len=32)
    graphs = transition_matrices(weights).transpose(0, 1).numpy()
    examples, positions = _maxflow.all_positions(1, 32)
    bound = _cost.estimate_flow_cost(4, 32, 1, 32, residual_weight=0.5)
    sampled = _cost.estimate_flow_cost(4, 32, 1, 32, residual_weight=0.5,
                                       steps_per_problem=_maxflow.sample_steps_per_problem(graphs, examples, positions))
    assert sampled.seconds < bound.seconds
    monkeypatch.setattr(_cost, "FLOW_TIME_BUDGET_S", (sampled.seconds + bound.seconds) / 2)
    assert attention_flow(weights, token_index="all").shape == (1, 32, 32)  # refined, then run
    monkeypatch.setattr(_cost, "FLOW_TIME_BUDGET_S", sampled.seconds / 2)
    with pytest.raises(ProblemTooLargeError):
        attention_flow(weights, token_index="all")


def test_estimate_grows_with_every_dimension():
    base = _cost.estimate_flow_cost(2, 8, 1, 1)
    for bigger in (_cost.estimate_flow_cost(3, 8, 1, 1), _cost.estimate_flow_cost(2, 9, 1, 1),
                   _cost.estimate_flow_cost(2, 8, 2, 1), _cost.estimate_flow_cost(2, 8, 1, 2),
                   _cost.estimate_flow_cost([2, 1], 8, 1, 1)):
        assert bigger.seconds > base.seconds


def test_allow_large_runs_what_the_budget_refuses(monkeypatch, unchanged):
    weights = attentions(seq_len=5)
    expected = attention_flow(weights, token_index=torch.tensor([[0, 1]]))
    expected_class = AttentionFlow(unchanged).attribute(IDS, token_index="mean")
    monkeypatch.setattr(_cost, "FLOW_TIME_BUDGET_S", 0.0)
    with pytest.raises(ProblemTooLargeError) as raised:
        attention_flow(weights, token_index=torch.tensor([[0, 1]]))
    assert_documented(raised, ProblemTooLargeError, "allow_large")
    assert torch.equal(attention_flow(weights, token_index=torch.tensor([[0, 1]]), allow_large=True), expected)
    with pytest.raises(ProblemTooLargeError) as raised:
        AttentionFlow(unchanged).attribute(IDS, token_index="mean")
    assert_documented(raised, ProblemTooLargeError, "allow_large")
    assert torch.equal(AttentionFlow(unchanged).attribute(IDS, token_index="mean", allow_large=True),
                       expected_class)


def test_memory_budget_is_enforced(monkeypatch):
    monkeypatch.setattr(_cost, "FLOW_MEMORY_BUDGET_BYTES", 1)
    with pytest.raises(ProblemTooLargeError) as raised:
        attention_flow(attentions())
    assert_documented(raised, ProblemTooLargeError, "allow_large", "MiB")


# --- models and capture -----------------------------------------------------------------------

def test_model_without_attention_layers():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)).eval()
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError) as raised:
        AttentionRollout(model)
    assert_documented(raised, UnsupportedModelError, "attention_modules")
    assert_unchanged(model, before)


def test_plain_function_without_model():
    with pytest.raises(UnsupportedModelError) as raised:
        AttentionRollout(lambda ids: ids)
    assert_documented(raised, UnsupportedModelError, "model")


def test_adapter_finding_no_attention_layers(unchanged):
    class EmptyAdapter(HuggingFaceAdapter):
        def attention_modules(self):
            return []

    with pytest.raises(AttentionCaptureError) as raised:
        AttentionRollout(unchanged, adapter=EmptyAdapter(unchanged)).attribute(IDS)
    assert_documented(raised, AttentionCaptureError, "attention_modules", "No attention layers")


def test_attention_kernel_that_cannot_be_switched():
    class NoSwitchAdapter(HuggingFaceAdapter):
        def prepared(self, session):
            import contextlib
            return contextlib.nullcontext()

    model = tiny_bert("sdpa")
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError) as raised:
        AttentionFlow(model, adapter=NoSwitchAdapter(model)).attribute(IDS)
    assert_documented(raised, AttentionCaptureError, "attn_implementation", "no attention weights")
    assert_unchanged(model, before)


def test_module_returning_no_weights():
    class NoWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, ids):
            x = self.embed(ids)
            return self.attn(x, x, x, need_weights=False)[0].sum(-1)  # output[1] is None

    model = NoWeights().eval()
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError) as raised:
        AttentionRollout(model, attention_modules=[model.attn]).attribute(torch.tensor([[1, 2, 3]]))
    assert_documented(raised, AttentionCaptureError, "no attention weights")
    assert_unchanged(model, before)


def test_forward_func_that_skips_the_model(unchanged):
    with pytest.raises(AttentionCaptureError) as raised:
        AttentionRollout(lambda ids: ids.float(), model=unchanged).attribute(IDS)
    assert_documented(raised, AttentionCaptureError, "forward_func")


def test_attention_fn_returning_garbage():
    with pytest.raises(AttentionCaptureError) as raised:
        AttentionRollout(lambda ids: ids, attention_fn=lambda ids: "weights").attribute(IDS)
    assert_documented(raised, AttentionCaptureError, "attention_fn")


@pytest.mark.parametrize("function", [attention_rollout, attention_flow])
def test_causal_normalization_of_bidirectional_attention(function, unchanged):
    # Found by fuzzing: on encoder attention it silently returned all-zero rows.
    with pytest.raises(InvalidParameterError) as raised:
        function(attentions(), causal_normalization=True)
    assert_documented(raised, InvalidParameterError, "causal_normalization")
    causal = attentions() * torch.ones(4, 4).tril()
    assert torch.isfinite(function(causal / causal.sum(-1, keepdim=True), causal_normalization=True)).all()
    with pytest.raises(InvalidParameterError) as raised:
        AttentionRollout(unchanged).attribute(IDS, causal_normalization=True)
    assert_documented(raised, InvalidParameterError, "causal_normalization")


def test_switch_to_eager_attention_failing():
    class PinnedBert(T.BertModel):
        """A model whose fused attention kernel cannot be switched off."""

        def set_attn_implementation(self, implementation):
            raise ValueError(f"{implementation!r} attention is not available for this model")

    config = tiny_bert("sdpa").config
    model = PinnedBert(config).eval()
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError) as raised:
        AttentionRollout(model).attribute(IDS)
    assert_documented(raised, AttentionCaptureError, "attn_implementation", "eager")
    assert_unchanged(model, before)


def test_non_finite_attention_computed_by_the_model():
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[1].attention.self.key.weight[0, 0] = math.nan  # e.g. a diverged checkpoint
    before = snapshot(model)
    for method in METHODS:
        with pytest.raises(InvalidInputError) as raised:
            method(model).attribute(IDS)
        assert_documented(raised, InvalidInputError, "attention layer 2", "NaN or inf")
    assert_unchanged(model, before)


# --- other model families: plain PyTorch encoders and vision transformers ---------------------

@pytest.fixture(scope="module")
def torch_encoder():
    return PaddedEncoder().eval()


@pytest.mark.parametrize("inputs, expected", [
    (IDS.bool(), InvalidInputTypeError),
    (IDS.to(torch.complex64), InvalidInputTypeError),
    (IDS[0], InvalidInputError),
    (IDS[None, None], InvalidInputError),
    (torch.zeros(2, 0, dtype=torch.long), InvalidInputError),
    (IDS.numpy(), InvalidInputTypeError),
], ids=["bool", "complex", "1-d", "4-d", "empty", "numpy"])
def test_bad_inputs_of_a_torch_model(torch_encoder, inputs, expected):
    before = snapshot(torch_encoder)
    with pytest.raises(expected) as raised:
        AttentionRollout(torch_encoder).attribute(inputs, additional_forward_args=(torch.ones(2, 4),))
    assert_documented(raised, expected, "inputs")
    assert_unchanged(torch_encoder, before)


@pytest.mark.parametrize("mask", [torch.ones(2, 5), torch.ones(1, 4), torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])],
                         ids=["too-long", "too-few-rows", "all-padding"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_bad_mask_of_a_torch_model(torch_encoder, method, mask):
    # The mask reaches nn.MultiheadAttention through the user's forward; it is checked there.
    before = snapshot(torch_encoder)
    with pytest.raises(InvalidInputError) as raised:
        method(torch_encoder).attribute(IDS, additional_forward_args=(mask,))
    assert_documented(raised, InvalidInputError, "attention_mask")
    assert_unchanged(torch_encoder, before)


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


PIXELS = torch.rand(2, 3, 8, 8)


@pytest.mark.parametrize("inputs, expected", [
    ((PIXELS * 255).long(), InvalidInputTypeError),
    (PIXELS[0], InvalidInputError),
    (PIXELS.masked_fill(PIXELS > 0.9, math.nan), InvalidInputError),
    (PIXELS[:, :, :0], InvalidInputError),
    (IDS, InvalidInputTypeError),
], ids=["integer-pixels", "3-d", "nan-pixels", "empty", "token-ids"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_bad_pixel_values(vit, method, inputs, expected):
    before = snapshot(vit)
    with pytest.raises(expected) as raised:
        method(vit).attribute(inputs)
    assert_documented(raised, expected, "inputs")
    assert_unchanged(vit, before)


def test_single_token_sequence_of_a_torch_model(torch_encoder):
    before = snapshot(torch_encoder)
    for method in METHODS:
        scores = method(torch_encoder).attribute(IDS[:, :1], additional_forward_args=(torch.ones(2, 1),))
        assert torch.allclose(scores, torch.ones(2, 1))
    assert_unchanged(torch_encoder, before)
