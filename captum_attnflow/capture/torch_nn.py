"""PyTorch's own attention: ``nn.MultiheadAttention`` wherever it sits (``nn.TransformerEncoder``,
``nn.TransformerEncoderLayer`` or any user module), ``batch_first`` or not.

For the call only:

* every ``nn.MultiheadAttention`` is called with ``need_weights=True,
  average_attn_weights=False`` (a forward pre-hook rewrites its arguments), so it returns
  per-head ``(B, H, S, S)`` weights;
* the fused fast path (``torch.backends.mha``) is disabled, since it bypasses the module;
* the key padding mask that reaches the attention is recorded. It is how the padding
  mask is found: pass ``src_key_padding_mask`` (True = padding, torch's convention) to
  your model through ``additional_forward_args`` as its forward expects, and whatever
  reaches ``nn.MultiheadAttention`` as ``key_padding_mask`` (bool, or float with ``-inf``
  at padding) defines the real tokens. No name lookup or convention guessing is involved.

Hooks and the fast-path setting are restored on exit. Attention inside
``nn.TransformerDecoderLayer`` (decoder self- and cross-attention) is skipped when the
model also has other attention: the encoder is explained.
"""

import contextlib
import inspect
from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from captum_attnflow._validation import check_key_padding_mask
from captum_attnflow.capture._sequence import check_sequence_inputs, scores_to_sequence_inputs
from captum_attnflow.capture.base import AttentionAdapter, register_adapter

_MHA_PARAMETERS = list(inspect.signature(nn.MultiheadAttention.forward).parameters)[1:]  # no self
_FORCED = {"need_weights": True, "average_attn_weights": False}


def _force_weights(args: Tuple, kwargs: dict) -> Tuple[Tuple, dict]:
    """Rewrite an ``nn.MultiheadAttention`` call so it returns per-head weights."""
    args = list(args)
    for name, value in _FORCED.items():
        index = _MHA_PARAMETERS.index(name)
        if len(args) > index:
            args[index] = value
        else:
            kwargs[name] = value
    return tuple(args), kwargs


def _argument(name: str, args: Tuple, kwargs: dict) -> Any:
    index = _MHA_PARAMETERS.index(name)
    return args[index] if len(args) > index else kwargs.get(name)


def padding_to_valid(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """torch's key padding mask (bool True = pad, or additive float ``-inf`` = pad) to True = real."""
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask
    return torch.isfinite(key_padding_mask) & (key_padding_mask > torch.finfo(key_padding_mask.dtype).min)


@contextlib.contextmanager
def fastpath_disabled():
    """Turn off ``torch.backends.mha``'s fused fast path for the block; restore it after."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


class TorchMultiheadAttentionAdapter(AttentionAdapter):
    """Every ``nn.MultiheadAttention`` inside the model, one layer per call, in call order."""

    name = "torch-mha"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._padding_mask: Optional[torch.Tensor] = None

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())

    def attention_modules(self) -> List[nn.Module]:
        in_decoder = {id(m) for layer in self.model.modules() if isinstance(layer, nn.TransformerDecoderLayer)
                      for m in layer.modules()}
        found = [m for m in self.model.modules() if isinstance(m, nn.MultiheadAttention)]
        encoder_side = [m for m in found if id(m) not in in_decoder]
        return encoder_side or found

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor) or weights.ndim != 4:
            return None
        # A query that sees only padding (causal mask + left padding) gets NaN from softmax;
        # its row is replaced by the identity downstream, so 0 is a safe placeholder.
        return torch.nan_to_num(weights, nan=0.0)

    @contextlib.contextmanager
    def prepared(self):
        self._padding_mask = None

        def force_and_record_mask(module, args, kwargs):
            key_padding_mask = _argument("key_padding_mask", args, kwargs)
            key = _argument("key", args, kwargs)
            if isinstance(key_padding_mask, torch.Tensor) and isinstance(key, torch.Tensor) and key.ndim == 3:
                # Our exception instead of torch's assertion deep inside the model.
                batch_axis, seq_axis = (0, 1) if module.batch_first else (1, 0)
                check_key_padding_mask(key_padding_mask, key.shape[batch_axis], key.shape[seq_axis])
            if self._padding_mask is None and isinstance(key_padding_mask, torch.Tensor):
                self._padding_mask = key_padding_mask.detach()
            return _force_weights(args, kwargs)

        handles = [m.register_forward_pre_hook(force_and_record_mask, with_kwargs=True)
                   for m in self.attention_modules()]
        try:
            with fastpath_disabled():
                yield
        finally:
            for handle in handles:
                handle.remove()

    def attention_mask(self, inputs, additional_forward_args) -> Optional[torch.Tensor]:
        if self._padding_mask is None:
            return None
        return padding_to_valid(self._padding_mask)

    def check_inputs(self, inputs: Any) -> torch.Tensor:
        return check_sequence_inputs(inputs)

    def scores_to_inputs(self, scores: torch.Tensor, inputs: torch.Tensor, **options) -> torch.Tensor:
        if options.get("return_patch_grid"):
            return AttentionAdapter.scores_to_inputs(self, scores, inputs, **options)
        batch_first = all(m.batch_first for m in self.attention_modules())
        return scores_to_sequence_inputs(scores, inputs, batch_first=batch_first, adapter_name=self.name)


register_adapter(TorchMultiheadAttentionAdapter)
