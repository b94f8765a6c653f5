"""Capture per-layer attention weights from a model while it runs.

The pipeline's first stage. An *adapter* knows, for one family of models, which
modules compute attention, how to read the ``(B, H, S, S)`` weights from their
outputs, how to prepare the model so the weights exist (for example switching
Hugging Face models from SDPA to eager attention) and where the padding mask is.
:func:`capture_attention` runs the forward pass with hooks on those modules and
fuses the heads of each layer as soon as it has run, so only ``L·B·S²`` values
are kept (``keep_heads=True`` keeps every head instead).

Nothing here does graph math. Adapters: ``huggingface`` (text), ``vision`` (ViT/DeiT,
timm), ``torch_nn`` (``nn.MultiheadAttention``) and ``custom`` (user-named modules or a
function returning the weights).
"""

import contextlib
import inspect
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from captum_attnflow._validation import check_head_fusion, check_token_ids
from captum_attnflow.exceptions import (
    AttentionCaptureError,
    InvalidParameterError,
    UnsupportedModelError,
)
from captum_attnflow.functional.fusion import fuse_heads

# One capture at a time: hooks and the attention implementation are per-model state,
# and two threads switching them on the same model would restore each other's changes.
_CAPTURE_LOCK = threading.RLock()


@dataclass
class CapturedAttention:
    """What one forward pass revealed.

    Attributes:
        attentions: ``(L, B, H, S, S)`` weights; ``H == 1`` when heads were fused during
            capture (``head_fusion`` says how), else every head.
        attention_mask: ``(B, S)`` bool mask of real tokens, or None when unpadded.
        head_fusion: the fusion already applied, or None when every head was kept.
        outputs: the forward function's return value.
        adapter: the adapter that captured the weights.
    """

    attentions: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    head_fusion: Optional[str]
    outputs: Any
    adapter: "AttentionAdapter"

    @property
    def num_layers(self) -> int:
        return self.attentions.shape[0]


class AttentionAdapter:
    """Base class of per-family capture adapters.

    Subclasses implement :meth:`supports`, :meth:`attention_modules` and, where the
    defaults do not fit, :meth:`weights_from_output`, :meth:`prepared` and
    :meth:`attention_mask`. Register them with :func:`register_adapter`.
    """

    #: Short name shown in errors and reprs.
    name = "base"
    #: The function the last capture ran (set by :func:`capture_attention`).
    forward_func: Optional[Callable] = None

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def attention_modules(self) -> List[nn.Module]:
        """Modules whose forward output carries one layer's attention weights, in layer order."""
        raise NotImplementedError

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        """Read ``(B, H, S, S)`` weights from a module's output (default: ``output[1]``)."""
        if isinstance(output, (tuple, list)) and len(output) > 1:
            return output[1]
        return None

    def check_inputs(self, inputs: Any) -> torch.Tensor:
        """Validate ``inputs`` for this family (default: integer token ids of shape ``(B, S)``)."""
        return check_token_ids(inputs)

    def record(self, forward_func: Callable, inputs: torch.Tensor, forward_args: Tuple,
               head_fusion: Optional[str]) -> Tuple[Any, List[torch.Tensor]]:
        """Run ``forward_func`` once; return its output and the per-layer ``(B, H, S, S)`` weights.

        The default hooks :meth:`attention_modules` inside :meth:`prepared`; adapters that get
        the weights another way (a user function, say) override this.
        """
        recorded: List[torch.Tensor] = []
        with self.prepared():
            modules = self.attention_modules()
            if not modules:
                raise AttentionCaptureError(
                    f"No attention layers found in {type(self.model).__name__} by the "
                    f"'{self.name}' adapter; name them with attention_modules=[...].")
            with _recording_hooks(self, modules, head_fusion, recorded), torch.no_grad():
                outputs = forward_func(inputs, *forward_args)
        if not recorded:
            raise AttentionCaptureError(
                f"The forward pass ran none of the {len(modules)} attention modules found by the "
                f"'{self.name}' adapter; check that forward_func runs this model.")
        return outputs, recorded

    def prepared(self) -> ContextManager:
        """Context in which the model returns attention weights; restores the model on exit."""
        return contextlib.nullcontext()

    def attention_mask(self, inputs: torch.Tensor, additional_forward_args: Tuple) -> Optional[torch.Tensor]:
        """The ``(B, S)`` padding mask, found by the forward signature's ``attention_mask`` slot."""
        return mask_from_forward_args(self.model, additional_forward_args,
                                      forward_func=getattr(self, "forward_func", None))

    def scores_to_inputs(self, scores: torch.Tensor, inputs: torch.Tensor, **options) -> torch.Tensor:
        """Map ``(n_layers, B, S)`` token scores onto the shape of ``inputs``.

        Token models attend over exactly the input tokens, so this only checks the shapes;
        vision adapters override it (drop special tokens, upsample patches to pixels).
        """
        if options.get("return_patch_grid"):
            raise InvalidParameterError(
                f"return_patch_grid=True needs a vision model; the '{self.name}' adapter explains tokens.")
        if tuple(scores.shape[1:]) != tuple(inputs.shape):
            raise AttentionCaptureError(
                f"The model attended over {tuple(scores.shape[1:])} (batch, positions) but the inputs "
                f"have shape {tuple(inputs.shape)}; the '{self.name}' adapter cannot map scores "
                "back to inputs of this shape.")
        return scores.to(inputs.device)


_ADAPTERS: List[Type[AttentionAdapter]] = []


def register_adapter(adapter_cls: Type[AttentionAdapter], *, first: bool = False):
    """Make ``adapter_cls`` available to :func:`find_adapter` (``first`` gives it priority)."""
    if adapter_cls in _ADAPTERS:
        _ADAPTERS.remove(adapter_cls)
    _ADAPTERS.insert(0, adapter_cls) if first else _ADAPTERS.append(adapter_cls)
    return adapter_cls


def registered_adapters() -> List[Type[AttentionAdapter]]:
    return list(_ADAPTERS)


def find_adapter(model: nn.Module) -> AttentionAdapter:
    """The first registered adapter that supports ``model``."""
    for adapter_cls in _ADAPTERS:
        if adapter_cls.supports(model):
            return adapter_cls(model)
    names = ", ".join(a.name for a in _ADAPTERS)
    raise UnsupportedModelError(
        f"No attention adapter supports {type(model).__name__}. Supported automatically: Hugging Face "
        "transformers models (encoders, decoders, the encoder of encoder-decoders, ViT/DeiT), timm "
        "ViTs and torch nn.MultiheadAttention / nn.TransformerEncoder (adapters: "
        f"{names}). For a custom model pass attention_modules=[...] (modules returning (output, "
        "weights); weights_from_output=callable for other formats) or attention_fn=callable "
        "returning the per-layer (B, H, S, S) weights."
    )


def resolve_model(forward_func: Callable, model: Optional[nn.Module] = None) -> nn.Module:
    """The ``nn.Module`` behind a Captum ``forward_func`` (itself, or a bound method's owner)."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        return model
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    raise UnsupportedModelError(
        "forward_func is a plain function, so the model whose attention to capture is unknown; "
        "pass it as model=..., e.g. AttentionFlow(lambda ids, mask: clf(ids, mask).logits, model=clf)."
    )


def _extra_parameter_names(function: Callable, count: int) -> List[str]:
    try:
        return list(inspect.signature(function).parameters)[1:1 + count]
    except (TypeError, ValueError):
        return []


def mask_from_forward_args(model: nn.Module, additional_forward_args: Tuple, *,
                           forward_func: Optional[Callable] = None) -> Optional[torch.Tensor]:
    """Find ``attention_mask`` among positional extra arguments, as Captum passes them.

    A wrapper ``forward_func`` naming a parameter ``attention_mask`` (e.g. ``lambda ids,
    attention_mask: model(ids, attention_mask=attention_mask, position_ids=...)``) is read
    first; otherwise the model's own forward signature decides.
    """
    if not additional_forward_args:
        return None
    if forward_func is not None and forward_func is not model:
        wrapper_names = _extra_parameter_names(forward_func, len(additional_forward_args))
        if "attention_mask" in wrapper_names:
            return additional_forward_args[wrapper_names.index("attention_mask")]
    extra_names = _extra_parameter_names(model.forward, len(additional_forward_args))
    if "attention_mask" in extra_names:
        return additional_forward_args[extra_names.index("attention_mask")]
    if not extra_names:
        # Signature unknown (*args): a BERT-like model takes the mask right after the ids.
        first = additional_forward_args[0]
        if isinstance(first, torch.Tensor) and first.ndim == 2 and not first.is_floating_point():
            return first
    return None


def _format_forward_args(additional_forward_args) -> Tuple:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


@contextlib.contextmanager
def _recording_hooks(adapter: AttentionAdapter, modules: Sequence[nn.Module],
                     head_fusion: Optional[str], recorded: List[torch.Tensor]):
    """Forward hooks that fuse each layer's heads on the spot (only ``B·S²`` kept per layer)."""

    def record(module, _args, output):
        weights = adapter.weights_from_output(module, output)
        if weights is None:
            raise AttentionCaptureError(
                f"{type(module).__name__} returned no attention weights (fused or flash kernel). "
                f"Load the model with attn_implementation='eager' or use a model the "
                f"'{adapter.name}' adapter can switch to eager attention."
            )
        weights = weights.detach()
        recorded.append(fuse_heads(weights, head_fusion)[:, None] if head_fusion else weights)

    handles = [module.register_forward_hook(record) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _warn_if_training(model: nn.Module):
    if model.training:
        warnings.warn(
            "The model is in training mode: dropout makes attention weights random. "
            "Call model.eval() for reproducible attributions.", UserWarning, stacklevel=4)


def capture_attention(forward_func: Callable, inputs: torch.Tensor, additional_forward_args=None, *,
                      model: Optional[nn.Module] = None, adapter: Optional[AttentionAdapter] = None,
                      head_fusion: Optional[str] = "mean") -> CapturedAttention:
    """Run ``forward_func(inputs, *additional_forward_args)`` once and capture attention.

    Args:
        forward_func: the model, or any function of ``(inputs, *additional_forward_args)``
            that runs it (then pass ``model=``).
        inputs: the model's first positional input (token ids ``(B, S)``, pixels ...).
        additional_forward_args: extra positional arguments, as in Captum; the padding mask
            is found among them by the forward signature (``attention_mask``).
        model: the ``nn.Module`` holding the attention layers, if ``forward_func`` is not it.
        adapter: an :class:`AttentionAdapter` instance; default: the registered one for the model.
        head_fusion: fuse heads while capturing (``"mean"``, ``"max"``, ``"min"``) or None to keep
            every head.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                              num_attention_heads=2, intermediate_size=16)).eval()
        >>> captured = capture_attention(model, torch.tensor([[1, 5, 7, 2]]))
        >>> tuple(captured.attentions.shape)
        (2, 1, 1, 4, 4)
    """
    if head_fusion is not None:
        check_head_fusion(head_fusion)
    if adapter is None:
        adapter = find_adapter(resolve_model(forward_func, model))
    forward_args = _format_forward_args(additional_forward_args)
    if isinstance(adapter.model, nn.Module):  # None for a user attention_fn without a model
        _warn_if_training(adapter.model)
    with _CAPTURE_LOCK:
        adapter.forward_func = forward_func  # lets attention_mask() read a wrapper's signature
        outputs, recorded = adapter.record(forward_func, inputs, forward_args, head_fusion)
        # Inside the lock: adapters may keep the mask of the last call (torch MHA records it),
        # and another thread's capture with the same adapter would overwrite it.
        mask = adapter.attention_mask(inputs, forward_args)
    shapes = {tuple(w.shape) for w in recorded}
    if len(shapes) != 1:
        raise AttentionCaptureError(
            f"Captured attention layers have different shapes {sorted(shapes)}; capture one "
            "attention stack at a time (e.g. the encoder of an encoder-decoder model).")
    return CapturedAttention(attentions=torch.stack(recorded), attention_mask=mask,
                             head_fusion=head_fusion, outputs=outputs, adapter=adapter)
