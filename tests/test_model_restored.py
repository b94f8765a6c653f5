"""Every call leaves the model exactly as found, whether it succeeds or raises.

Checked after each call: parameters and buffers bit-identical, no hook left on any
submodule, every config's attention implementation and flags, train/eval mode,
``requires_grad``, torch's grad mode, global module hooks and the MHA fast-path switch.
"""

import copy

import pytest
import torch
import transformers as T
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
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


# --- snapshot helpers (also used by test_errors.py and test_threads.py) ----------------------

def _configs(model: nn.Module):
    return [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "__dict__")]


def snapshot(model: nn.Module) -> dict:
    """Everything a capture could change, deep-copied."""
    return {
        "tensors": {name: (t.dtype, t.shape, t.detach().cpu().numpy().tobytes())
                    for name, t in model.state_dict(keep_vars=True).items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": {name: {d: list(getattr(m, d, {}).keys()) for d in _HOOK_DICTS}
                  for name, m in model.named_modules()},
        "configs": [copy.deepcopy(config.__dict__) for config in _configs(model)],
        "attn_implementation": [config.__dict__.get("_attn_implementation_internal")
                                for config in _configs(model)],
        "module_classes": {name: type(m) for name, m in model.named_modules()},
        "global_hooks": (dict(nn.modules.module._global_forward_hooks),
                         dict(nn.modules.module._global_forward_pre_hooks)),
        "grad_enabled": torch.is_grad_enabled(),
        "mha_fastpath": torch.backends.mha.get_fastpath_enabled(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in before:
        assert after[key] == before[key], f"model state '{key}' changed"


# --- models -------------------------------------------------------------------------------

def tiny_bert(attn_implementation=None, **overrides):
    config = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=32, **overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    return T.BertModel(config).eval()


def tiny_deberta():
    torch.manual_seed(0)
    return T.DebertaV2Model(T.DebertaV2Config(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=32,
                                              max_position_embeddings=32)).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    return T.GPT2Model(T.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()


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


MODELS = {
    "bert-sdpa": lambda: tiny_bert(),
    "bert-eager": lambda: tiny_bert("eager"),
    "bert-output-attentions": lambda: tiny_bert("eager", output_attentions=True),
    "deberta-v2": tiny_deberta,
    "gpt2": tiny_gpt2,
    "torch-encoder": lambda: TorchEncoder().eval(),
}
IDS = torch.tensor([[1, 5, 7, 2, 9], [1, 9, 2, 0, 0]])


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    built = MODELS[request.param]()
    # transformers installs its own output-recording hooks on the first forward pass with
    # output_attentions=True, once; they belong to the model, so snapshots start after that.
    with torch.no_grad():
        built(IDS)
    return built


@pytest.mark.parametrize("change", [
    lambda m: m.set_attn_implementation("eager"),
    lambda m: m.encoder.layer[1].attention.self.register_forward_hook(lambda *a: None),
    lambda m: m.encoder.layer[0].register_forward_pre_hook(lambda *a: None),
    lambda m: m.embeddings.word_embeddings.weight.data[3, 4].add_(1e-7),
    lambda m: m.pooler.train(),
    lambda m: m.pooler.dense.bias.requires_grad_(False),
    lambda m: setattr(m.config, "output_hidden_states", True),
], ids=["attn-implementation", "forward-hook", "pre-hook", "one-weight", "train-mode", "requires-grad",
        "config-flag"])
def test_snapshot_detects_every_kind_of_change(change):
    # The restoration tests are only as good as the snapshot; make sure it can fail.
    model = tiny_bert("sdpa")
    before = snapshot(model)
    change(model)
    with pytest.raises(AssertionError, match="changed"):
        assert_unchanged(model, before)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_successful_call_leaves_model_as_found(model, method):
    before = snapshot(model)
    scores = method(model).attribute(IDS)
    assert torch.isfinite(scores).all()
    assert_unchanged(model, before)


def test_frozen_parameters_training_mode_and_grad_mode_are_kept():
    model = tiny_bert()
    model.train()
    model.encoder.layer[0].requires_grad_(False)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        AttentionRollout(model).attribute(IDS)
    with torch.no_grad():
        AttentionFlow(model).attribute(IDS)
    assert_unchanged(model, before)
    assert model.training and not model.encoder.layer[0].attention.self.query.weight.requires_grad


def test_forward_func_raising_after_the_model_ran(model):
    def forward_then_fail(ids):
        model(ids)
        raise KeyError("wrapper failed after the forward pass")

    before = snapshot(model)
    with pytest.raises(KeyError, match="wrapper failed"):
        AttentionRollout(forward_then_fail, model=model).attribute(IDS)
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
    with pytest.raises(Exception):
        AttentionRollout(model).attribute(IDS, additional_forward_args=bad_args)
    assert_unchanged(model, before)


def test_weights_unavailable_error_restores_model():
    class NoSwitchAdapter(HuggingFaceAdapter):
        """Simulates a kernel that cannot be switched: SDPA stays on, no weights come out."""

        def prepared(self):
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
