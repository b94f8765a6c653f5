"""Hugging Face ``transformers`` models: any ``PreTrainedModel`` that declares its
attention modules in ``_can_record_outputs`` (BERT, RoBERTa, DistilBERT, GPT-2, Llama, ViT ...).

SDPA and flash kernels return no weights, so the model is switched to eager
attention for the call and the exact previous setting is written back afterwards.
"""

import contextlib
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from captum_attnflow.capture.base import AttentionAdapter, register_adapter
from captum_attnflow.exceptions import AttentionCaptureError


def _pretrained_models(model: nn.Module) -> List[nn.Module]:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is optional for the pure-math layers
        return []
    return [m for m in model.modules() if isinstance(m, PreTrainedModel)]


def _attention_specs(pretrained: nn.Module) -> List[Tuple[Any, int, Optional[str], Optional[str]]]:
    """``(target_class, index, layer_name, class_name)`` for each declared attention recorder."""
    specs = getattr(pretrained, "_can_record_outputs", None) or {}
    declared = specs.get("attentions")
    if declared is None:
        return []
    declared = declared if isinstance(declared, list) else [declared]
    parsed = []
    for spec in declared:
        if isinstance(spec, str):
            parsed.append((None, 1, None, spec))
        elif isinstance(spec, type):
            parsed.append((spec, 1, None, None))
        else:  # transformers' OutputRecorder
            parsed.append((spec.target_class, spec.index, spec.layer_name, spec.class_name))
    return parsed


def _matches(name: str, module: nn.Module, spec) -> bool:
    target_class, _, layer_name, class_name = spec
    hit = (target_class is not None and isinstance(module, target_class)) or (
        class_name is not None and name.endswith(class_name))
    if hit and layer_name is not None:
        hit = "." + layer_name.strip(".") + "." in name + "."
    return hit


def _all_configs(model: nn.Module) -> List[Any]:
    """Every config object reachable from the model's PreTrainedModels, sub-configs included."""
    seen: Dict[int, Any] = {}
    pending = [m.config for m in _pretrained_models(model)]
    while pending:
        config = pending.pop()
        if id(config) in seen:
            continue
        seen[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None:
                pending.append(sub)
    return list(seen.values())


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Switch every PreTrainedModel inside ``model`` to eager attention; restore exactly after."""
    configs = _all_configs(model)
    saved = [(config, config.__dict__.get("_attn_implementation_internal")) for config in configs]
    try:
        for pretrained in _pretrained_models(model):
            if pretrained.config._attn_implementation != "eager":
                pretrained.set_attn_implementation("eager")
        yield
    finally:
        for config, value in saved:
            config._attn_implementation_internal = value


class HuggingFaceAdapter(AttentionAdapter):
    """Self-attention of Hugging Face models, found through ``_can_record_outputs``."""

    name = "huggingface"
    #: Recorders whose modules are the self-attention of one stack (cross-attention is skipped).
    attention_key = "attentions"

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return any(_attention_specs(m) for m in _pretrained_models(model))

    def _owner(self) -> nn.Module:
        """The outermost PreTrainedModel that declares attention recorders."""
        for pretrained in _pretrained_models(self.model):
            if _attention_specs(pretrained):
                return pretrained
        raise AttentionCaptureError(f"{type(self.model).__name__} declares no attention modules.")

    def attention_modules(self) -> List[nn.Module]:
        owner = self._owner()
        self._indices: Dict[int, int] = {}
        found = []
        for spec in _attention_specs(owner):
            for name, module in owner.named_modules():
                if _matches(name, module, spec) and id(module) not in self._indices:
                    self._indices[id(module)] = spec[1]
                    found.append(module)
        return found

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        if not isinstance(output, (tuple, list)):
            return None
        index = getattr(self, "_indices", {}).get(id(module), 1)
        try:
            weights = output[index]
        except IndexError:
            return None
        return weights if isinstance(weights, torch.Tensor) and weights.ndim == 4 else None

    def prepared(self):
        return eager_attention(self.model)


register_adapter(HuggingFaceAdapter)
