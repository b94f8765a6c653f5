"""One place for argument and input checks shared by every public entry point.

Each check raises one of the documented exceptions of
:mod:`captum_attnflow.exceptions` with a message that names the parameter and
says what to do.  Nothing here imports transformers.
"""

from numbers import Integral, Real
from typing import Optional, Sequence, Union

import torch

from captum_attnflow.exceptions import (
    InvalidInputError,
    InvalidInputTypeError,
    InvalidParameterError,
)

HEAD_FUSIONS = ("mean", "max", "min")


def check_head_fusion(head_fusion: str) -> str:
    if head_fusion not in HEAD_FUSIONS:
        raise InvalidParameterError(
            f"head_fusion={head_fusion!r} is not supported; use one of {HEAD_FUSIONS}."
        )
    return head_fusion


def check_fraction(name: str, value, *, upper_open: bool = False) -> float:
    """``value`` must be a real number in [0, 1] (or [0, 1) with ``upper_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidParameterError(f"{name} must be a float, got {type(value).__name__}.")
    value = float(value)
    upper_ok = value < 1.0 if upper_open else value <= 1.0
    if not (0.0 <= value and upper_ok):
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise InvalidParameterError(f"{name}={value} is outside {interval}; pass a value in {interval}.")
    return value


def check_layer(layer, num_layers: int, name: str = "layer") -> int:
    """Normalise a Python-style layer index (0 = after the first layer, -1 = last)."""
    if isinstance(layer, bool) or not isinstance(layer, Integral):
        raise InvalidParameterError(f"{name} must be an int, got {type(layer).__name__}.")
    if not -num_layers <= layer < num_layers:
        raise InvalidParameterError(
            f"{name}={layer} is out of range for a model with {num_layers} layers; "
            f"use an index in [{-num_layers}, {num_layers - 1}]."
        )
    return int(layer) % num_layers


def check_position(position, seq_len: int, name: str) -> int:
    if isinstance(position, bool) or not isinstance(position, Integral):
        raise InvalidParameterError(f"{name} must be an int, got {type(position).__name__}.")
    if not -seq_len <= position < seq_len:
        raise InvalidParameterError(
            f"{name}={position} is out of range for sequences of length {seq_len}; "
            f"use an index in [{-seq_len}, {seq_len - 1}]."
        )
    return int(position) % seq_len


def check_positions(positions: Union[int, Sequence[int]], seq_len: int, name: str):
    """Return ``(list_of_positions, was_scalar)``."""
    if isinstance(positions, torch.Tensor):
        if positions.ndim == 0:
            positions = positions.item()
        else:
            positions = positions.tolist()
    if isinstance(positions, Integral) and not isinstance(positions, bool):
        return [check_position(positions, seq_len, name)], True
    if isinstance(positions, (list, tuple)) and len(positions) > 0:
        return [check_position(p, seq_len, name) for p in positions], False
    raise InvalidParameterError(
        f"{name} must be an int or a non-empty sequence of ints, got {positions!r}."
    )


def check_attentions(attentions) -> torch.Tensor:
    """Stack Hugging Face style attentions into one ``(L, B, H, S, S)`` tensor and check it."""
    if isinstance(attentions, torch.Tensor):
        stacked = attentions
    elif isinstance(attentions, (list, tuple)):
        if len(attentions) == 0:
            raise InvalidInputError(
                "attentions is empty: the model returned no attention weights. If it runs SDPA "
                "or flash attention, capture through AttentionRollout/AttentionFlow, which "
                "switch to eager attention for the call."
            )
        if not all(isinstance(a, torch.Tensor) for a in attentions):
            raise InvalidInputTypeError("attentions must be a sequence of torch.Tensor.")
        shapes = {tuple(a.shape) for a in attentions}
        if len(shapes) != 1:
            raise InvalidInputError(f"all layers of attentions must share one shape, got {sorted(shapes)}.")
        stacked = torch.stack(list(attentions))
    else:
        raise InvalidInputTypeError(
            "attentions must be a sequence of (B, H, S, S) tensors or one (L, B, H, S, S) tensor, "
            f"got {type(attentions).__name__}."
        )
    if stacked.ndim != 5 or stacked.shape[-1] != stacked.shape[-2]:
        raise InvalidInputError(
            "attentions must have shape (L, B, H, S, S) (or be L tensors of shape (B, H, S, S)), "
            f"got {tuple(stacked.shape)}."
        )
    if not stacked.is_floating_point():
        raise InvalidInputTypeError(f"attentions must be floating point, got dtype {stacked.dtype}.")
    if min(stacked.shape) == 0:
        raise InvalidInputError(f"attentions has an empty dimension: shape {tuple(stacked.shape)}.")
    if not torch.isfinite(stacked).all():
        raise InvalidInputError(
            "attentions contain NaN or inf; check the model's inputs and numerical precision "
            "(run it in float32)."
        )
    if (stacked < 0).any():
        raise InvalidInputError("attentions contain negative weights; pass post-softmax probabilities.")
    return stacked


def check_attention_mask(attention_mask, batch_size: int, seq_len: int) -> Optional[torch.Tensor]:
    """Return a boolean ``(B, S)`` mask (True = real token) or None."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise InvalidInputTypeError(
            f"attention_mask must be a torch.Tensor of shape (B, S), got {type(attention_mask).__name__}."
        )
    if tuple(attention_mask.shape) != (batch_size, seq_len):
        raise InvalidInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have "
            f"(batch, seq_len) = ({batch_size}, {seq_len}); pass one 0/1 entry per token."
        )
    mask = attention_mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InvalidInputError(
            f"attention_mask marks every token of example(s) {empty} as padding; "
            "each example needs at least one real token."
        )
    return mask
