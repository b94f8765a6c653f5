"""Any other model: name its attention modules, or hand over a function returning the weights.

* ``ModuleAttentionAdapter(model, attention_modules=[...], weights_from_output=None)`` hooks
  the given modules; by default a module's weights are ``output[1]`` (the ``(output,
  weights)`` convention) or the output itself when it is a 4-D tensor (a softmax or
  dropout module applied to the weights). ``weights_from_output(module, output)`` reads any
  other format. A module called several times (shared layers) counts once per call.
* ``FunctionAttentionAdapter(attention_fn)`` calls ``attention_fn(inputs,
  *additional_forward_args)``, which returns the L per-layer ``(B, H, S, S)`` weights; the
  model is not run.

Neither can see the padding mask the model uses (it may reach the attention under any
name, or not at all), so padded batches need an explicit ``attention_mask=`` (``(B, S)``,
1/True = real token) on ``attribute`` or :func:`~captum_attnflow.capture_attention`;
without it every position is taken as real.
:func:`make_adapter` builds the right adapter from the Captum classes' constructor options.
"""

from typing import Any, Callable, List, Optional, Sequence

import torch
from torch import nn

from captum_attnflow.capture._sequence import check_sequence_inputs, scores_to_sequence_inputs
from captum_attnflow.capture.base import AttentionAdapter, CaptureSession, find_adapter, resolve_model
from captum_attnflow.exceptions import AttentionCaptureError, InvalidParameterError, UnsupportedModelError

WeightsReader = Callable[[nn.Module, Any], Optional[torch.Tensor]]


def default_weights_from_output(module: nn.Module, output: Any) -> Optional[torch.Tensor]:
    """``output[1]`` of an ``(output, weights)`` pair, or a 4-D tensor output itself."""
    if isinstance(output, torch.Tensor):
        return output if output.ndim == 4 else None
    if isinstance(output, (tuple, list)) and len(output) > 1 and isinstance(output[1], torch.Tensor):
        return output[1] if output[1].ndim == 4 else None
    return None


class _SequenceInputsMixin(AttentionAdapter):
    def check_inputs(self, inputs: Any) -> torch.Tensor:
        return check_sequence_inputs(inputs)

    def scores_to_inputs(self, scores: torch.Tensor, inputs: torch.Tensor, **options) -> torch.Tensor:
        if options.get("return_patch_grid"):
            return AttentionAdapter.scores_to_inputs(self, scores, inputs, **options)
        return scores_to_sequence_inputs(scores, inputs, adapter_name=self.name)


class ModuleAttentionAdapter(_SequenceInputsMixin, AttentionAdapter):
    """Hook user-named attention modules.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed = nn.Embedding(10, 8)
        ...         self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        ...     def forward(self, ids):
        ...         x = self.embed(ids)
        ...         return self.attn(x, x, x, average_attn_weights=False)[0].sum()
        >>> net = Net().eval()
        >>> adapter = ModuleAttentionAdapter(net, [net.attn])
        >>> from captum_attnflow.capture import capture_attention
        >>> tuple(capture_attention(net, torch.tensor([[1, 2, 3]]), adapter=adapter).attentions.shape)
        (1, 1, 1, 3, 3)
    """

    name = "custom-modules"

    def __init__(self, model: nn.Module, attention_modules: Sequence[nn.Module],
                 weights_from_output: Optional[WeightsReader] = None):
        super().__init__(model)
        modules = list(attention_modules)
        if not modules or not all(isinstance(m, nn.Module) for m in modules):
            raise InvalidParameterError("attention_modules must be a non-empty sequence of nn.Module.")
        unique = {id(m): m for m in modules}  # a shared layer is hooked once and counted per call
        self._modules = list(unique.values())
        self._reader = weights_from_output or default_weights_from_output

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return False  # only used when the user names the modules

    def attention_modules(self) -> List[nn.Module]:
        return list(self._modules)

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        return self._reader(module, output)


class FunctionAttentionAdapter(_SequenceInputsMixin, AttentionAdapter):
    """Weights from a user function ``attention_fn(inputs, *additional_forward_args)``.

    The function returns L tensors ``(B, H, S, S)`` (or one ``(L, B, H, S, S)`` tensor) of
    post-softmax weights, e.g. ``lambda ids: model(ids, output_attentions=True).attentions``.

    Example:
        >>> import torch
        >>> weights = torch.softmax(torch.randn(2, 1, 2, 4, 4), -1)
        >>> adapter = FunctionAttentionAdapter(lambda ids: weights)
        >>> from captum_attnflow.capture import capture_attention
        >>> captured = capture_attention(lambda ids: None, torch.zeros(1, 4, dtype=torch.long), adapter=adapter)
        >>> tuple(captured.attentions.shape)
        (2, 1, 1, 4, 4)
    """

    name = "custom-function"

    def __init__(self, attention_fn: Callable, model: Optional[nn.Module] = None):
        if not callable(attention_fn):
            raise InvalidParameterError("attention_fn must be callable: (inputs, *args) -> per-layer weights.")
        super().__init__(model)
        self.attention_fn = attention_fn

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return False

    def attention_modules(self) -> List[nn.Module]:
        return []

    def record(self, forward_func, inputs, forward_args, session: CaptureSession):
        with torch.no_grad():
            layers = self.attention_fn(inputs, *forward_args)
        if isinstance(layers, torch.Tensor) and layers.ndim == 5:
            layers = list(layers)
        if not isinstance(layers, (list, tuple)) or not layers or not all(
                isinstance(w, torch.Tensor) and w.ndim == 4 for w in layers):
            raise AttentionCaptureError(
                "attention_fn must return a non-empty sequence of (B, H, S, S) tensors or one "
                f"(L, B, H, S, S) tensor, got {type(layers).__name__}.")
        for layer, weights in enumerate(layers, start=1):
            session.record_layer(weights, f"attention_fn layer {layer}")  # checked per head, then fused
        return None

    def lock_key(self):
        return self


def make_adapter(forward_func: Callable, model: Optional[nn.Module] = None, *,
                 adapter: Optional[AttentionAdapter] = None,
                 attention_modules: Optional[Sequence[nn.Module]] = None,
                 weights_from_output: Optional[WeightsReader] = None,
                 attention_fn: Optional[Callable] = None) -> AttentionAdapter:
    """The adapter the Captum classes use, from their constructor options (at most one route)."""
    routes = [name for name, value in (("adapter", adapter), ("attention_modules", attention_modules),
                                       ("attention_fn", attention_fn)) if value is not None]
    if len(routes) > 1:
        raise InvalidParameterError(f"Pass only one of adapter, attention_modules, attention_fn; got {routes}.")
    if weights_from_output is not None and attention_modules is None:
        raise InvalidParameterError("weights_from_output is only used with attention_modules=[...].")
    if adapter is not None:
        return adapter
    if attention_fn is not None:
        try:
            owner = resolve_model(forward_func, model)
        except UnsupportedModelError:
            owner = None  # the weights come from attention_fn; no model needed
        return FunctionAttentionAdapter(attention_fn, owner)
    owner = resolve_model(forward_func, model)
    if attention_modules is not None:
        return ModuleAttentionAdapter(owner, attention_modules, weights_from_output)
    return find_adapter(owner)
