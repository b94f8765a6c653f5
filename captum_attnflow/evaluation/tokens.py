"""Which tokens the metrics compare or perturb, and the checks of token-id and token-score
batches shared by the metrics.

All metrics compare or perturb only *eligible* tokens, given by :func:`eligible_tokens`:
real tokens (``attention_mask == 1``), minus ``exclude_positions`` (e.g. ``(0,)`` for
``[CLS]``) and minus ``special_tokens_mask`` (e.g. from a tokenizer's
``return_special_tokens_mask=True``, which also catches ``[SEP]`` at varying positions).
"""

from numbers import Integral
from typing import Optional, Sequence

import torch

from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError


def eligible_tokens(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                    exclude_positions: Sequence[int] = (),
                    special_tokens_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, S)`` bool mask of the tokens that metrics compare or perturb.

    Args:
        input_ids: ``(B, S)`` token ids (only the shape is used).
        attention_mask: ``(B, S)`` 0/1, 1 = real token; None means every token is real.
        exclude_positions: positions dropped in every example; negative indices count from
            the end of the padded sequence (use ``special_tokens_mask`` for ``[SEP]`` when
            padding varies).
        special_tokens_mask: ``(B, S)`` 0/1, 1 = special token to drop.

    Example:
        >>> import torch
        >>> ids = torch.tensor([[101, 7, 8, 102, 0]])
        >>> eligible_tokens(ids, torch.tensor([[1, 1, 1, 1, 0]]), exclude_positions=(0,),
        ...                 special_tokens_mask=torch.tensor([[1, 0, 0, 1, 0]])).int()
        tensor([[0, 1, 1, 0, 0]], dtype=torch.int32)
    """
    batch_size, seq_len = _check_ids(input_ids).shape
    keep = torch.ones(batch_size, seq_len, dtype=torch.bool, device=input_ids.device)
    if attention_mask is not None:
        keep &= _check_same_shape(attention_mask, input_ids, "attention_mask").bool()
    if special_tokens_mask is not None:
        keep &= ~_check_same_shape(special_tokens_mask, input_ids, "special_tokens_mask").bool()
    for position in exclude_positions:
        if not isinstance(position, Integral) or not -seq_len <= position < seq_len:
            raise InvalidParameterError(
                f"exclude_positions contains {position!r}; use ints in [{-seq_len}, {seq_len - 1}].")
        keep[:, position] = False
    return keep


def _check_ids(input_ids) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise InvalidInputError("input_ids must be a (B, S) torch.Tensor of token ids.")
    return input_ids


def _check_same_shape(tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.shape != like.shape:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise InvalidInputError(f"{name} must be a tensor of shape {tuple(like.shape)}, got {shape}.")
    return tensor.to(like.device)


def _as_token_scores(scores, name: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise InvalidInputError(f"{name} must be a (B, S) tensor of token scores, got {shape}.")
    return scores.detach()
