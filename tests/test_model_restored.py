"""Every call leaves the model exactly as found, whether it succeeds or raises.

Checked after each call: parameters and buffers bit-identical (and the same objects, with
the same ``.grad``), every hook dict of every submodule (forward, forward-pre, with-kwargs,
always-called, backward, backward-pre, state-dict hooks, discovered from the module rather
than listed), every plain attribute of every submodule (``training``, ``batch_first``,
timm's ``fused_attn`` ...), every config's attention implementation and flags,
``requires_grad``, torch's grad mode, torch's global module hooks and the MHA fast-path
switch. Failures are injected before, during (inside the library's own hooks, with eager
attention and every hook in place) and after the forward pass.
"""


import pytest
import torch
from helpers import assert_unchanged, snapshot, tiny_bert, tiny_deberta, tiny_gpt2, tiny_vit
from torch import nn

from captum_attnflow import (
    AttentionCaptureError,
    AttentionFlow,
    AttentionRollout,
    AttnFlowError,
    RawAttention,
)
from captum_attnflow.capture import HuggingFaceAdapter

METHODS = (AttentionRollout, AttentionFlow, RawAttention)


class ExplodingAttention(nn.MultiheadAttention):
    """Raises inside the hooked module when ``explode`` is set."""

    explode = False

    def forward(self, *args, **kwargs):
        if self.explode:
            raise FloatingPointError("attention exploded")
        return super().forward(*args, **kwargs)


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` over embedded ids (the torch MHA adapter)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.encoder.layers[1].self_attn.__class__ = ExplodingAttention

    def forward(self, ids):
        return self.encoder(self.embed(ids)).sum(-1)


IDS = torch.tensor([[1, 5, 7, 2, 9], [1, 9, 2, 0, 0]])
PIXELS = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
MODELS = {  # name: (builder, inputs); one per capture route
    "bert-sdpa": (lambda: tiny_bert(), IDS),
    "bert-eager": (lambda: tiny_bert("eager"), IDS),
    "bert-output-attentions": (lambda: tiny_bert("eager", output_attentions=True), IDS),
    "deberta-v2": (tiny_deberta, IDS),  # legacy: output_attentions forced by pre-hooks
    "gpt2": (tiny_gpt2, IDS),
    "vit-sdpa": (tiny_vit, PIXELS),
    "torch-encoder": (lambda: TorchEncoder().eval(), IDS),  # fast path disabled, MHA args rewritten
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_inputs(request):
    build, inputs = MODELS[request.param]
    built = build()
    # transformers installs its own output-recording hooks on the first forward pass with
    # output_attentions=True, once; they belong to the model, so snapshots start after that.
    with torch.no_grad():
        built(inputs)
    return built, inputs


@pytest.fixture(scope="module")
def model(model_and_inputs):
    return model_and_inputs[0]


def _global_forward_hook(_model):
    return nn.modules.module.register_module_forward_hook(lambda *a: None)


@pytest.mark.parametrize("change", [
    lambda m: m.set_attn_implementation("eager"),
    lambda m: m.encoder.layer[1].attention.self.register_forward_hook(lambda *a: None),
    lambda m: m.encoder.layer[0].register_forward_pre_hook(lambda *a: None),
    lambda m: m.encoder.layer[0].register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True),
    lambda m: m.encoder.layer[0].register_forward_hook(lambda *a: None, always_call=True),
    lambda m: m.pooler.register_full_backward_hook(lambda *a: None),
    lambda m: m.pooler.register_full_backward_pre_hook(lambda *a: None),
    _global_forward_hook,
    lambda m: setattr(m.encoder.layer[0], "forward", m.encoder.layer[0].forward),
    lambda m: m.embeddings.word_embeddings.weight.data[3, 4].add_(1e-7),
    lambda m: setattr(m.pooler.dense, "bias", nn.Parameter(m.pooler.dense.bias.detach().clone())),
    lambda m: setattr(m.pooler.dense.bias, "grad", torch.zeros_like(m.pooler.dense.bias)),
    lambda m: m.pooler.train(),
    lambda m: m.pooler.dense.bias.requires_grad_(False),
    lambda m: setattr(m.encoder, "gradient_checkpointing", True),
    lambda m: setattr(m.config, "output_hidden_states", True),
], ids=["attn-implementation", "forward-hook", "pre-hook", "pre-hook-with-kwargs", "always-called-hook",
        "backward-hook", "backward-pre-hook", "global-hook", "instance-forward", "one-weight",
        "replaced-parameter", "grad", "train-mode", "requires-grad", "module-flag", "config-flag"])
def test_snapshot_detects_every_kind_of_change(change):
    # The restoration tests are only as good as the snapshot; make sure it can fail.
    model = tiny_bert("sdpa")
    before = snapshot(model)
    handle = change(model)
    try:
        with pytest.raises(AssertionError, match="changed"):
            assert_unchanged(model, before)
    finally:
        if hasattr(handle, "remove"):
            handle.remove()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_successful_call_leaves_model_as_found(model_and_inputs, method):
    model, inputs = model_and_inputs
    before = snapshot(model)
    scores = method(model).attribute(inputs)
    assert torch.isfinite(scores).all()
    assert_unchanged(model, before)


def test_frozen_parameters_training_mode_and_grad_mode_are_kept():
    model = tiny_bert()
    model.train()
    model.encoder.layer[0].requires_grad_(False)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        AttentionRollout(model).attribute(IDS)
    with torch.no_grad(), pytest.warns(UserWarning, match="training mode"):
        AttentionFlow(model).attribute(IDS)
    assert_unchanged(model, before)
    assert model.training and not model.encoder.layer[0].attention.self.query.weight.requires_grad


class InjectedFailure(Exception):
    """Stands for anything going wrong while the model runs."""


@pytest.mark.parametrize("error", [InjectedFailure, KeyboardInterrupt], ids=["exception", "keyboard-interrupt"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_failure_inside_the_forward_pass(model_and_inputs, method, error):
    # Raised from the library's own recording hook on the second attention layer: eager
    # attention, recording hooks, forced-argument pre-hooks and the fast-path switch are all
    # in place at that moment, and must all be undone.
    model, inputs = model_and_inputs
    expected = method(model).attribute(inputs)
    before = snapshot(model)
    explainer = method(model)
    read_weights = explainer.adapter.weights_from_output
    during = []

    def fail_on_second_layer(module, output):
        if len(during) == 1:
            during.append(snapshot(model))
            raise error("injected")
        during.append(None)
        return read_weights(module, output)

    explainer.adapter.weights_from_output = fail_on_second_layer  # the adapter's state, not the model's
    with pytest.raises(error, match="injected"):
        explainer.attribute(inputs)
    assert len(during) == 2 and during[1]["modules"] != before["modules"]  # hooks were in place
    assert_unchanged(model, before)
    assert torch.equal(method(model).attribute(inputs), expected)  # and it works as before


def test_forward_func_raising_after_the_model_ran(model_and_inputs):
    model, inputs = model_and_inputs

    def forward_then_fail(x):
        model(x)
        raise KeyError("wrapper failed after the forward pass")

    before = snapshot(model)
    with pytest.raises(KeyError, match="wrapper failed"):
        AttentionRollout(forward_then_fail, model=model).attribute(inputs)
    assert_unchanged(model, before)


def test_sequence_longer_than_the_position_table_raises_mid_forward():
    # Hugging Face models fail inside the forward pass, with hooks and eager attention in place.
    model = tiny_bert()
    before = snapshot(model)
    with pytest.raises(Exception) as raised:
        AttentionFlow(model).attribute(torch.ones(1, 40, dtype=torch.long))
    assert not isinstance(raised.value, AttnFlowError)  # the model's own error, propagated
    assert_unchanged(model, before)


def test_hooked_attention_module_raising():
    model = TorchEncoder().eval()
    before = snapshot(model)
    ExplodingAttention.explode = True
    try:
        with pytest.raises(FloatingPointError, match="exploded"):
            AttentionRollout(model).attribute(IDS)
    finally:
        ExplodingAttention.explode = False
    assert_unchanged(model, before)
    # And it still works afterwards.
    assert torch.isfinite(AttentionRollout(model).attribute(IDS)).all()


@pytest.mark.parametrize("bad_args", [
    (torch.ones(2, 5, dtype=torch.long), "not a tensor"),  # token_type_ids the model chokes on
    (torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long)),
], ids=["string-token-type-ids", "mis-shaped-token-type-ids"])
def test_bad_additional_forward_args_raise_mid_forward(bad_args):
    model = tiny_bert()
    before = snapshot(model)
    with pytest.raises(Exception):  # noqa: B017 (whatever the user's model raises mid-forward)
        AttentionRollout(model).attribute(IDS, additional_forward_args=bad_args)
    assert_unchanged(model, before)


def test_weights_unavailable_error_restores_model():
    class NoSwitchAdapter(HuggingFaceAdapter):
        """Simulates a kernel that cannot be switched: SDPA stays on, no weights come out."""

        def prepared(self, session):
            import contextlib
            return contextlib.nullcontext()

    model = tiny_bert("sdpa")
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="no attention weights"):
        AttentionRollout(model, adapter=NoSwitchAdapter(model)).attribute(IDS)
    assert_unchanged(model, before)


def test_real_minilm_is_restored(minilm, minilm_tokenizer):
    batch = minilm_tokenizer(["attention flow explains transformers", "short"], padding=True,
                             return_tensors="pt")
    before = snapshot(minilm)
    for method in METHODS:
        method(minilm).attribute(batch["input_ids"], additional_forward_args=(batch["attention_mask"],))
    with pytest.raises(AttnFlowError):
        AttentionFlow(minilm).attribute(batch["input_ids"], additional_forward_args=(batch["attention_mask"],),
                                        layer=6)
    assert_unchanged(minilm, before)
    assert minilm.config._attn_implementation == before["attn_implementation"][0]
