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

from captum_attnflow._validation import ADDITIVE_MASKED_AT, check_key_padding_mask, padding_mask_to_valid
from captum_attnflow.capture._sequence import check_sequence_inputs, scores_to_sequence_inputs
from captum_attnflow.capture.base import AttentionAdapter, CaptureSession, register_adapter
from captum_attnflow.capture.stacks import (
    candidate_stacks,
    module_name,
    refuse_ambiguous,
    refuse_dropped_mask,
    same_tensor,
)
from captum_attnflow.exceptions import AttentionCaptureError, InvalidInputError

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
        root = self.stack_root()
        in_decoder = {id(m) for layer in root.modules() if isinstance(layer, nn.TransformerDecoderLayer)
                      for m in layer.modules()}
        found: List[nn.Module] = [m for m in root.modules() if isinstance(m, nn.MultiheadAttention)]
        encoder_side = [m for m in found if id(m) not in in_decoder]
        return encoder_side or found

    def check_stack(self) -> None:
        """Two encoders side by side (a dual encoder) are two stacks: ``stack=`` must choose."""
        if self.stack is None:
            candidates = candidate_stacks(self.model, self.attention_modules())
            if len(candidates) > 1:
                refuse_ambiguous(self.model, candidates)

    def _stack_name(self) -> str:
        return module_name(self.model, self.stack_root())

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        return weights if isinstance(weights, torch.Tensor) and weights.ndim == 4 else None

    @contextlib.contextmanager
    def prepared(self, session: CaptureSession):
        def force_and_observe_mask(module, args, kwargs):
            if not session.is_mine():
                return None  # another thread's call runs as it asked
            query, key = _argument("query", args, kwargs), _argument("key", args, kwargs)
            if not _is_self_attention(query, key):
                # Queries from one sequence, keys from another: no edge of this stack's graph.
                session.cross_calls[id(module)] = session.cross_calls.get(id(module), 0) + 1
                return None
            key_padding_mask = _argument("key_padding_mask", args, kwargs)
            _refuse_padding_in_attn_mask(_argument("attn_mask", args, kwargs), key_padding_mask, query, module)
            if not session.stack_checked:
                self._check_first_query(query, key_padding_mask, module, session)
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
        if not session.recorded and session.cross_calls:
            raise AttentionCaptureError(
                f"Every nn.MultiheadAttention call in the stack {self._stack_name()} was cross-attention (query "
                "different from key), which is not a self-attention stack over `inputs`; choose the stack whose "
                "layers attend over `inputs` with stack=..., or name its modules with attention_modules=[...].")

    def _check_first_query(self, query, key_padding_mask, module: nn.Module, session: CaptureSession) -> None:
        """The first self-attention layer received ``inputs``; sets the layout of ``inputs``.

        Embeddings passed as ``inputs``: the query holds their values (or their transpose, which
        gives the layout). Anything embedded inside the model: the same ``(batch, positions)``;
        the layout follows from the shapes, and a square batch (B == S) of a ``batch_first=False``
        stack, which reads the same either way, is refused rather than guessed.
        """
        session.stack_checked = True
        inputs = session.inputs
        if inputs is None or not isinstance(query, torch.Tensor) or query.ndim != 3:
            return
        batch_axis = 0 if module.batch_first else 1
        received = (int(query.shape[batch_axis]), int(query.shape[1 - batch_axis]))
        leading = (int(inputs.shape[0]), int(inputs.shape[1]))
        module_batch_first = bool(module.batch_first)
        if inputs.ndim == 3 and same_tensor(query, inputs):
            session.batch_first = module_batch_first
        elif inputs.ndim == 3 and same_tensor(query, inputs.transpose(0, 1)):
            session.batch_first = not module_batch_first
        elif inputs.ndim == 3 and _reordered_examples(query if module.batch_first else query.transpose(0, 1),
                                                      inputs if module.batch_first else inputs.transpose(0, 1)):
            raise AttentionCaptureError(
                f"The first attention layer of the stack {self._stack_name()} received the examples of `inputs` in "
                "another order (the wrapper reorders the batch), so scores would land on the wrong examples. Keep "
                "the batch order in forward_func, or pass the reordered tensor as inputs.")
        elif received not in (leading, leading[::-1]):
            raise AttentionCaptureError(
                f"The first attention layer of the stack {self._stack_name()} attends over (batch, positions) = "
                f"{received} (batch_first={module.batch_first}), but `inputs` have shape {tuple(inputs.shape)}: it "
                "did not receive `inputs`. Pass the tensor that reaches this stack as inputs (same batch and "
                "positions), or choose the stack that receives them with stack=....")
        elif received[0] != received[1]:
            session.batch_first = received == leading
        elif module.batch_first:
            session.batch_first = True  # ids and embeddings (B, S, ...), as the stack reads them
        else:
            raise AttentionCaptureError(
                f"The stack {self._stack_name()} (batch_first=False) received a square batch: batch size == sequence "
                f"length == {received[0]}, and `inputs` {tuple(inputs.shape)} do not reach it unchanged, so whether "
                "they are (batch, positions) or (positions, batch) cannot be told. Pass the embeddings the stack "
                "receives as inputs, or a batch whose size differs from the sequence length.")
        if key_padding_mask is None and session.observed_mask is None:
            refuse_dropped_mask(session.forward_args, received, (), stack=self._stack_name, bool_only=True)

    def check_inputs(self, inputs: Any) -> torch.Tensor:
        return check_sequence_inputs(inputs)

    def scores_to_inputs(self, scores: torch.Tensor, inputs: torch.Tensor, **options) -> torch.Tensor:
        if options.get("return_patch_grid"):
            return AttentionAdapter.scores_to_inputs(self, scores, inputs, **options)
        batch_first = options.get("batch_first")  # as the capture saw the inputs reach the stack
        if batch_first is None:
            batch_first = all(m.batch_first for m in self.attention_modules())
        return scores_to_sequence_inputs(scores, inputs, batch_first=batch_first, adapter_name=self.name)


def _reordered_examples(received: torch.Tensor, inputs: torch.Tensor, max_batch: int = 64) -> bool:
    """The batch-first ``received`` holds the examples of ``inputs``, some in another place.

    Only run when the two differ; a row-by-row search, so it is skipped for batches over ``max_batch``.
    """
    if received.shape != inputs.shape or received.shape[0] > max_batch:
        return False
    flat_received = received.reshape(received.shape[0], -1)
    flat_inputs = inputs.reshape(inputs.shape[0], -1).to(device=received.device, dtype=received.dtype)
    moved = False
    for row, example in enumerate(flat_received):
        if torch.equal(example, flat_inputs[row]):
            continue
        if not bool((flat_inputs == example).all(dim=-1).any()):
            return False  # values changed (positional encodings, say): no reordering to see
        moved = True
    return moved


def _is_self_attention(query, key) -> bool:
    """Self-attention reads its keys from the sequence of its queries (``x, x, x``)."""
    if query is key or not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
        return True
    return same_tensor(key, query)


def _refuse_padding_in_attn_mask(attn_mask, key_padding_mask, query, module: nn.Module) -> None:
    """Padding given only in ``attn_mask`` (keys masked for every query) is not seen as padding: refuse.

    A causal or other structural mask hides no key from every query and passes.
    """
    if not isinstance(attn_mask, torch.Tensor) or attn_mask.ndim not in (2, 3):
        return
    hidden = attn_mask if attn_mask.dtype == torch.bool else attn_mask <= ADDITIVE_MASKED_AT
    # (.., S_q, S_k): a key hidden from every query of an example (and head) acts as padding.
    unseen = hidden.all(dim=-2)
    if not bool(unseen.any()):
        return
    if isinstance(key_padding_mask, torch.Tensor) and isinstance(query, torch.Tensor) and unseen.ndim == 2:
        batch_size = query.shape[0 if module.batch_first else 1]
        padded = padding_mask_to_valid(key_padding_mask, convention="key-padding").logical_not()
        heads = unseen.shape[0] // batch_size if batch_size else 0
        if heads and bool((unseen.reshape(batch_size, heads, -1).any(1) <= padded.to(unseen.device)).all()):
            return  # the hidden keys are padding already
    elif isinstance(key_padding_mask, torch.Tensor) and unseen.ndim == 1:
        padded = padding_mask_to_valid(key_padding_mask, convention="key-padding").logical_not()
        if bool((unseen.to(padded.device) <= padded).all()):
            return
    raise InvalidInputError(
        "attention_mask: the attn_mask reaching nn.MultiheadAttention hides some keys from every query, i.e. it "
        "carries padding, but the padding mask is read from key_padding_mask only (here "
        f"{'absent' if key_padding_mask is None else 'not marking those keys'}), so padded tokens would be scored. "
        "Pass the padding as src_key_padding_mask= / key_padding_mask= (True = padding) and keep attn_mask for "
        "structure (e.g. causal).")


register_adapter(TorchMultiheadAttentionAdapter)
