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
  reaches ``nn.MultiheadAttention`` as ``key_padding_mask`` defines the real tokens, read
  as torch reads it: bool (True = padding) or an additive float mask (0 = attend,
  ``<= -1e4`` or ``-inf`` = padding; other values are soft biases and are refused). No name
  lookup or convention guessing is involved.

Hooks and the fast-path setting are restored on exit. Attention inside
``nn.TransformerDecoderLayer`` (decoder self- and cross-attention) is skipped when the
model also has other attention: the encoder is explained.
"""

import contextlib
import inspect
import threading
from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from captum_attnflow._validation import check_key_padding_mask, padding_mask_to_valid
from captum_attnflow.capture._sequence import check_sequence_inputs, scores_to_sequence_inputs
from captum_attnflow.capture.base import AttentionAdapter, CaptureSession, register_adapter

_MHA_PARAMETERS = list(inspect.signature(nn.MultiheadAttention.forward).parameters)[1:]  # no self
_FORCED = {"need_weights": True, "average_attn_weights": False}


def _force_weights(args: Tuple, kwargs: dict) -> Tuple[Tuple, dict]:
    """Rewrite an ``nn.MultiheadAttention`` call so it returns per-head weights."""
    arguments = list(args)
    for name, value in _FORCED.items():
        index = _MHA_PARAMETERS.index(name)
        if len(arguments) > index:
            arguments[index] = value
        else:
            kwargs[name] = value
    return tuple(arguments), kwargs


def _argument(name: str, args: Tuple, kwargs: dict) -> Any:
    index = _MHA_PARAMETERS.index(name)
    return args[index] if len(args) > index else kwargs.get(name)


_FASTPATH_GUARD = threading.Lock()
_FASTPATH_USERS = 0
_FASTPATH_SAVED = True


@contextlib.contextmanager
def fastpath_disabled():
    """Turn off ``torch.backends.mha``'s fused fast path while any capture needs it off.

    The switch is process-wide, so concurrent captures share it: the first one in saves and
    clears it, the last one out restores it.
    """
    global _FASTPATH_USERS, _FASTPATH_SAVED
    with _FASTPATH_GUARD:
        if _FASTPATH_USERS == 0:
            _FASTPATH_SAVED = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
        _FASTPATH_USERS += 1
    try:
        yield
    finally:
        with _FASTPATH_GUARD:
            _FASTPATH_USERS -= 1
            if _FASTPATH_USERS == 0:
                torch.backends.mha.set_fastpath_enabled(_FASTPATH_SAVED)


class TorchMultiheadAttentionAdapter(AttentionAdapter):
    """Every ``nn.MultiheadAttention`` inside the model, one layer per call, in call order."""

    name = "torch-mha"
    observes_padding_mask = True
    model: nn.Module  # adapters found by supports(model) always have one

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())

    def attention_modules(self) -> List[nn.Module]:
        in_decoder = {id(m) for layer in self.model.modules() if isinstance(layer, nn.TransformerDecoderLayer)
                      for m in layer.modules()}
        found: List[nn.Module] = [m for m in self.model.modules() if isinstance(m, nn.MultiheadAttention)]
        encoder_side = [m for m in found if id(m) not in in_decoder]
        return encoder_side or found

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        return weights if isinstance(weights, torch.Tensor) and weights.ndim == 4 else None

    @contextlib.contextmanager
    def prepared(self, session: CaptureSession):
        def force_and_observe_mask(module, args, kwargs):
            if not session.is_mine():
                return None  # another thread's call runs as it asked
            key_padding_mask = _argument("key_padding_mask", args, kwargs)
            key = _argument("key", args, kwargs)
            if isinstance(key_padding_mask, torch.Tensor):
                if isinstance(key, torch.Tensor) and key.ndim == 3:
                    # Our exception instead of torch's assertion deep inside the model.
                    batch_axis, seq_axis = (0, 1) if module.batch_first else (1, 0)
                    check_key_padding_mask(key_padding_mask, key.shape[batch_axis], key.shape[seq_axis])
                if session.observed_mask is None:
                    session.observed_mask = padding_mask_to_valid(
                        key_padding_mask, convention="key-padding",
                        name="the key_padding_mask reaching nn.MultiheadAttention")
            return _force_weights(args, kwargs)

        handles = [m.register_forward_pre_hook(force_and_observe_mask, with_kwargs=True)
                   for m in self.attention_modules()]
        try:
            with fastpath_disabled():
                yield
        finally:
            for handle in handles:
                handle.remove()

    def check_inputs(self, inputs: Any) -> torch.Tensor:
        return check_sequence_inputs(inputs)

    def scores_to_inputs(self, scores: torch.Tensor, inputs: torch.Tensor, **options) -> torch.Tensor:
        if options.get("return_patch_grid"):
            return AttentionAdapter.scores_to_inputs(self, scores, inputs, **options)
        batch_first = all(m.batch_first for m in self.attention_modules())
        return scores_to_sequence_inputs(scores, inputs, batch_first=batch_first, adapter_name=self.name)


register_adapter(TorchMultiheadAttentionAdapter)
