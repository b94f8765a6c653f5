"""Shared test helpers: the model snapshot every restoration check uses, and tiny models.

:func:`snapshot` / :func:`assert_unchanged` are the one way tests check that a call left the
model exactly as found (``test_model_restored.py`` checks that the snapshot itself catches
every kind of change).
"""

import copy

import torch
import transformers as T
from torch import nn

_PLAIN = (bool, int, float, str, type(None))


# --- snapshot ------------------------------------------------------------------------------

def _configs(model: nn.Module):
    return [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "__dict__")]


def _hook_dicts(holder) -> dict:
    """Keys of every hook registry of a module (or of torch's global registries)."""
    return {name: list(value.keys()) for name, value in vars(holder).items()
            if "hook" in name and isinstance(value, dict)}


def _module_state(module: nn.Module) -> dict:
    attributes = vars(module)
    return {
        "hooks": _hook_dicts(module),
        "attribute_names": sorted(attributes),  # catches e.g. an instance-level forward left behind
        "plain_attributes": {k: v for k, v in attributes.items() if isinstance(v, _PLAIN)},
        "class": type(module),
    }


def _global_hooks() -> dict:
    registries = {k: v for k, v in vars(nn.modules.module).items() if k.startswith("_global_")}
    return {name: list(value.keys()) if isinstance(value, dict) else value
            for name, value in registries.items() if "hook" in name}


def snapshot(model: nn.Module) -> dict:
    """Everything a capture could change, deep-copied."""
    tensors = model.state_dict(keep_vars=True)
    return {
        "tensors": {name: (t.dtype, t.shape, t.detach().cpu().numpy().tobytes()) for name, t in tensors.items()},
        "tensor_objects": {name: id(t) for name, t in tensors.items()},
        "grads": {name: None if p.grad is None else p.grad.detach().cpu().numpy().tobytes()
                  for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "modules": {name: _module_state(m) for name, m in model.named_modules()},
        "configs": [copy.deepcopy(config.__dict__) for config in _configs(model)],
        "attn_implementation": [config.__dict__.get("_attn_implementation_internal")
                                for config in _configs(model)],
        "global_hooks": _global_hooks(),
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


def tiny_vit():
    torch.manual_seed(0)
    return T.ViTModel(T.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)).eval()


class PaddedEncoder(nn.Module):
    """Takes ``(ids, attention_mask)``; the torch MHA adapter finds the mask as it reaches the attention."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, ids, attention_mask):
        return self.encoder(self.embed(ids), src_key_padding_mask=attention_mask == 0).sum(-1)
