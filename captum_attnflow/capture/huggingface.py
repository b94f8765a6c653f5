"""Hugging Face ``transformers`` models: any ``PreTrainedModel`` that declares its
attention modules in ``_can_record_outputs`` (BERT, RoBERTa, DistilBERT, GPT-2, Llama, ViT ...).

SDPA and flash kernels return no weights, so the model is switched to eager
attention for the call and the exact previous setting is written back afterwards.
Models of the older style (DeBERTa-v2) declare nothing and return weights only when
asked with ``output_attentions=True``; their innermost attention modules are asked
for the call. Encoder-decoder models (T5, BART) are explained through their encoder's
self-attention: decoder and cross-attention are left unhooked.
"""

import contextlib
import inspect
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


def _switch_to_eager(pretrained: nn.Module) -> None:
    try:
        pretrained.set_attn_implementation("eager")
    except (ValueError, ImportError, NotImplementedError, AttributeError) as error:
        raise AttentionCaptureError(
            f"{type(pretrained).__name__} uses attn_implementation="
            f"{pretrained.config._attn_implementation!r}, whose fused kernel returns no attention weights, "
            f"and it cannot be switched to eager attention ({error}). Load the model with "
            "attn_implementation='eager', or pass attention_fn=... returning the weights.") from error


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Switch every PreTrainedModel inside ``model`` to eager attention; restore exactly after."""
    configs = _all_configs(model)
    saved = [(config, config.__dict__.get("_attn_implementation_internal")) for config in configs]
    try:
        for pretrained in _pretrained_models(model):
            if pretrained.config._attn_implementation != "eager":
                _switch_to_eager(pretrained)
        yield
    finally:
        for config, value in saved:
            config._attn_implementation_internal = value


def _takes_output_attentions(module: nn.Module) -> bool:
    try:
        return "output_attentions" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _legacy_attention_modules(root: nn.Module) -> List[nn.Module]:
    """Innermost modules whose forward takes ``output_attentions`` (the attention itself)."""
    candidates = [m for m in root.modules() if m is not root and _takes_output_attentions(m)]
    return [m for m in candidates
            if not any(c is not m and _takes_output_attentions(c) for c in m.modules())]


@contextlib.contextmanager
def _forced_output_attentions(modules: List[nn.Module]):
    """Call ``modules`` with ``output_attentions=True`` (positional or keyword) for the block."""

    def force(module, args, kwargs):
        index = list(inspect.signature(module.forward).parameters).index("output_attentions")
        if len(args) > index:
            args = args[:index] + (True,) + args[index + 1:]
        else:
            kwargs["output_attentions"] = True
        return args, kwargs

    handles = [m.register_forward_pre_hook(force, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _encoder_of(pretrained: nn.Module) -> Optional[nn.Module]:
    """The encoder stack of an encoder-decoder model, else None."""
    if getattr(pretrained.config, "is_encoder_decoder", False) and hasattr(pretrained, "get_encoder"):
        encoder = pretrained.get_encoder()
        if encoder is not pretrained:
            return encoder
    return None


class HuggingFaceAdapter(AttentionAdapter):
    """Self-attention of Hugging Face models, found through ``_can_record_outputs``."""

    name = "huggingface"
    #: Recorders whose modules are the self-attention of one stack (cross-attention is skipped).
    attention_key = "attentions"

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        pretrained_models = _pretrained_models(model)
        return any(_attention_specs(m) for m in pretrained_models) or any(
            _legacy_attention_modules(m) for m in pretrained_models[:1])

    def _owner(self) -> nn.Module:
        """The outermost PreTrainedModel that declares attention recorders (else the outermost)."""
        pretrained_models = _pretrained_models(self.model)
        for pretrained in pretrained_models:
            if _attention_specs(pretrained):
                return pretrained
        if pretrained_models:
            return pretrained_models[0]
        raise AttentionCaptureError(f"{type(self.model).__name__} holds no Hugging Face model.")

    def attention_modules(self) -> List[nn.Module]:
        owner = self._owner()
        # Only the encoder's self-attention of encoder-decoder models: one stack, one sequence.
        root = _encoder_of(owner) or owner
        self._indices: Dict[int, int] = {}
        specs = _attention_specs(owner)
        if not specs:
            found = _legacy_attention_modules(root)
            self._indices = {id(m): 1 for m in found}
            return found
        in_root = {id(m) for m in root.modules()}
        found = []
        for spec in specs:
            # Names relative to the owner, as the specs' layer names are written.
            for name, module in owner.named_modules():
                if id(module) in in_root and _matches(name, module, spec) and id(module) not in self._indices:
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

    @contextlib.contextmanager
    def prepared(self):
        with eager_attention(self.model):
            owner = self._owner()
            if _attention_specs(owner):
                yield
            else:
                with _forced_output_attentions(_legacy_attention_modules(_encoder_of(owner) or owner)):
                    yield


register_adapter(HuggingFaceAdapter)
