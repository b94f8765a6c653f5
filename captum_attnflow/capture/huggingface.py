"""Hugging Face ``transformers`` models: any ``PreTrainedModel`` that declares its
attention modules in ``_can_record_outputs`` (BERT, RoBERTa, DistilBERT, GPT-2, Llama, ViT ...).

SDPA and flash kernels return no weights, so the model is switched to eager
attention for the call and the exact previous setting is written back afterwards.
Models of the older style (DeBERTa-v2) declare nothing and return weights only when
asked with ``output_attentions=True``; their innermost attention modules are asked
for the call. Encoder-decoder models (T5, BART) are explained through their encoder's
self-attention: decoder and cross-attention are left unhooked.

The padding mask is the ``attention_mask`` argument of the model's own call: a forward
pre-hook on the base model (``model.base_model``, or the encoder of an encoder-decoder)
binds the call to its signature, so wrappers may name and order their parameters as they
like, and ``token_type_ids`` or ``position_ids`` are never mistaken for a mask.
"""

import contextlib
import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from transformers import PreTrainedModel

from captum_attnflow._compat import (
    attn_implementation,
    output_recorders,
    restore_attn_implementation,
    saved_attn_implementation,
    set_attn_implementation,
)
from captum_attnflow._validation import check_attention_mask
from captum_attnflow.capture.base import AttentionAdapter, CaptureSession, register_adapter
from captum_attnflow.exceptions import AttentionCaptureError, InvalidInputError, InvalidInputTypeError

#: Parameters of a Hugging Face ``forward`` that a positional extra argument may fill: a
#: tensor landing anywhere else (``past_key_values`` of GPT-2, say) is a misplaced argument.
POSITIONAL_SLOTS = ("attention_mask", "token_type_ids", "position_ids", "labels", "decoder_input_ids",
                    "decoder_attention_mask", "pixel_mask", "head_mask", "bool_masked_pos",
                    "interpolate_pos_encoding")


def _pretrained_models(model: nn.Module) -> List[PreTrainedModel]:
    return [m for m in model.modules() if isinstance(m, PreTrainedModel)]


def _attention_specs(pretrained: nn.Module) -> List[Tuple[Any, int, Optional[str], Optional[str]]]:
    """``(target_class, index, layer_name, class_name)`` for each declared attention recorder."""
    specs = output_recorders(pretrained)
    declared = specs.get("attentions")
    if declared is None:
        return []
    declared = declared if isinstance(declared, list) else [declared]
    parsed: List[Tuple[Any, int, Optional[str], Optional[str]]] = []
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


def _switch_to_eager(pretrained: PreTrainedModel) -> None:
    try:
        set_attn_implementation(pretrained, "eager")
    except (ValueError, ImportError, NotImplementedError, AttributeError, RuntimeError) as error:
        raise AttentionCaptureError(
            f"{type(pretrained).__name__} uses attn_implementation="
            f"{attn_implementation(pretrained.config)!r}, whose fused kernel returns no attention weights, "
            f"and it cannot be switched to eager attention ({error}). Load the model with "
            "attn_implementation='eager', or pass attention_fn=... returning the weights.") from error


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Switch every PreTrainedModel inside ``model`` to eager attention; restore exactly after."""
    configs = _all_configs(model)
    saved = [(config, saved_attn_implementation(config)) for config in configs]
    try:
        for pretrained in _pretrained_models(model):
            if attn_implementation(pretrained.config) != "eager":
                _switch_to_eager(pretrained)
        yield
    finally:
        for config, value in saved:
            restore_attn_implementation(config, value)


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
def _forced_output_attentions(modules: List[nn.Module], session: CaptureSession):
    """Call ``modules`` with ``output_attentions=True`` (positional or keyword) in the capturing thread."""

    def force(module, args, kwargs):
        if not session.is_mine():
            return None
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


def _unwrapped(forward_func) -> Any:
    """The module a ``forward_func`` calls directly: itself, a bound method's owner, a DataParallel's module."""
    module = getattr(forward_func, "__self__", forward_func)
    while isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        module = module.module
    return module


def _encoder_of(pretrained: PreTrainedModel) -> Optional[nn.Module]:
    """The encoder stack of an encoder-decoder model, else None."""
    if getattr(pretrained.config, "is_encoder_decoder", False) and hasattr(pretrained, "get_encoder"):
        encoder = pretrained.get_encoder()
        if encoder is not pretrained:
            return encoder
    return None


class HuggingFaceAdapter(AttentionAdapter):
    """Self-attention of Hugging Face models, found through ``_can_record_outputs``."""

    name = "huggingface"
    observes_padding_mask = True
    model: nn.Module  # adapters found by supports(model) always have one
    #: Recorders whose modules are the self-attention of one stack (cross-attention is skipped).
    attention_key = "attentions"

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        pretrained_models = _pretrained_models(model)
        return any(_attention_specs(m) for m in pretrained_models) or any(
            _legacy_attention_modules(m) for m in pretrained_models[:1])

    def _owner(self) -> PreTrainedModel:
        """The outermost PreTrainedModel that declares attention recorders (else the outermost).

        Found once per adapter: walking every module on each call costs more than a small
        model's forward pass.
        """
        owner = self.__dict__.get("_found_owner")
        if owner is None:
            pretrained_models = _pretrained_models(self.model)
            if not pretrained_models:
                raise AttentionCaptureError(f"{type(self.model).__name__} holds no Hugging Face model.")
            owner = next((m for m in pretrained_models if _attention_specs(m)), pretrained_models[0])
            self._found_owner = owner
        return owner

    def stack_module(self) -> nn.Module:
        """The base model (or the encoder of an encoder-decoder): it receives the padding mask."""
        owner = self._owner()
        encoder = _encoder_of(owner)
        if encoder is not None:
            return encoder
        base = getattr(owner, "base_model", owner)
        return base if isinstance(base, nn.Module) else owner

    def attention_modules(self) -> List[nn.Module]:
        if "_found" not in self.__dict__:
            self._found = self._find_attention_modules()  # one attribute: threads see both parts or neither
        return list(self._found[0])

    def _find_attention_modules(self) -> Tuple[List[nn.Module], Dict[int, int]]:
        """The self-attention modules and, per module, where its output holds the weights."""
        owner = self._owner()
        # Only the encoder's self-attention of encoder-decoder models: one stack, one sequence.
        root = _encoder_of(owner) or owner
        specs = _attention_specs(owner)
        if not specs:
            found = _legacy_attention_modules(root)
            return found, {id(m): 1 for m in found}
        in_root = {id(m) for m in root.modules()}
        found, indices = [], {}
        for spec in specs:
            # Names relative to the owner, as the specs' layer names are written.
            for name, module in owner.named_modules():
                if id(module) in in_root and _matches(name, module, spec) and id(module) not in indices:
                    indices[id(module)] = spec[1]
                    found.append(module)
        return found, indices

    def expected_num_layers(self) -> Optional[int]:
        """The config's layer count (ALBERT-style shared layers run one module several times)."""
        layers = getattr(self._owner().config, "num_hidden_layers", None)
        if not isinstance(layers, int) or len(self.attention_modules()) > layers:
            return None
        return layers

    def vocabulary_size(self) -> Optional[int]:
        embeddings = self._owner().get_input_embeddings()
        return getattr(embeddings, "num_embeddings", None)

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        if not isinstance(output, (tuple, list)):
            return None
        index = self.__dict__.get("_found", ([], {}))[1].get(id(module), 1)
        try:
            weights = output[index]
        except IndexError:
            return None
        return weights if isinstance(weights, torch.Tensor) and weights.ndim == 4 else None

    def check_forward_args(self, forward_func, inputs: torch.Tensor, forward_args: Tuple) -> None:
        """A Hugging Face model called directly gets Captum's extra arguments positionally:
        refuse those that would land in a parameter no per-token tensor belongs in."""
        model = _unwrapped(forward_func)
        if not isinstance(model, PreTrainedModel) or not forward_args:
            return
        names = list(inspect.signature(model.forward).parameters)
        for position, value in enumerate(forward_args, start=1):
            if position >= len(names) or not isinstance(value, torch.Tensor):
                continue
            slot = names[position]
            if slot not in POSITIONAL_SLOTS:
                raise InvalidInputError(
                    f"additional_forward_args[{position - 1}] (a tensor of shape {tuple(value.shape)}) lands in "
                    f"{type(model).__name__}.forward's parameter {slot!r}: Captum passes additional_forward_args "
                    f"positionally, and {slot!r} is parameter {position + 1} of that forward. Wrap the model so that "
                    "each argument reaches its name, e.g. forward_func=lambda input_ids, attention_mask: "
                    "model(input_ids=input_ids, attention_mask=attention_mask), with model=model.")

    @contextlib.contextmanager
    def mask_observers(self, session: CaptureSession):
        source = self.stack_module()
        signature = inspect.signature(source.forward)

        def observe(module, args, kwargs):
            if not session.is_mine():
                return None
            try:
                arguments = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                return None  # the model itself will refuse the call
            session.observed_mask = _padding_mask_of_call(arguments, type(module).__name__)
            return None

        handle = source.register_forward_pre_hook(observe, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def prepared(self, session: CaptureSession):
        with eager_attention(self.model):
            owner = self._owner()
            if _attention_specs(owner):
                yield
            else:
                with _forced_output_attentions(_legacy_attention_modules(_encoder_of(owner) or owner), session):
                    yield


def _padding_mask_of_call(arguments: Dict[str, Any], model_name: str) -> Optional[torch.Tensor]:
    """The ``(B, S)`` bool mask of real tokens in the arguments a Hugging Face model received.

    Checked here, in the model's pre-hook, so that a bad mask is refused before the model
    computes anything with it.
    """
    mask = arguments.get("attention_mask")
    if mask is None:
        return None
    where = f"attention_mask (as {model_name} received it)"
    if not isinstance(mask, torch.Tensor):
        raise InvalidInputTypeError(f"{where} must be a torch.Tensor of shape (B, S), got {type(mask).__name__}.")
    if mask.ndim != 2:
        raise InvalidInputError(
            f"{where} has shape {tuple(mask.shape)}; captum-attnflow reads (B, S) padding masks (1 = real "
            "token). Pass the 2-D padding mask to the model and let it build its own attention masks.")
    tokens = next((arguments.get(name) for name in ("input_ids", "inputs_embeds", "pixel_values")
                   if isinstance(arguments.get(name), torch.Tensor)), None)
    batch_size, seq_len = tuple(tokens.shape[:2]) if tokens is not None else tuple(mask.shape)
    return check_attention_mask(mask, batch_size, seq_len, convention="hugging-face", name=where)


register_adapter(HuggingFaceAdapter)
