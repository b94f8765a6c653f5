"""Fuse heads and add the residual connection: ``A_l -> Â_l``.

Abnar & Zuidema (2020), Sec. 3: the residual connection is modelled by adding
the identity to the (head-averaged) attention matrix and renormalizing rows,
``Â_l = w·I + (1 − w)·A_l`` with ``w = 0.5`` in the paper.

Every public function of :mod:`captum_attnflow.functional` takes its ``attentions`` as
Hugging Face returns them (L tensors ``(B, H, S, S)`` or one ``(L, B, H, S, S)`` tensor) or as
:class:`AttentionWeights`, what :func:`captum_attnflow.capture_attention` returns: weights
already checked (and heads possibly fused) with the padding mask the model received.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from captum_attnflow._validation import (
    check_attention_mask,
    check_attentions,
    check_fraction,
    check_head_fusion,
)
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError


@dataclass
class AttentionWeights:
    """Per-layer attention weights and what is known about them.

    Attributes:
        attentions: ``(L, B, H, S, S)`` weights; ``H == 1`` when heads were already fused.
        attention_mask: ``(B, S)`` bool mask of real tokens, or None when nothing is padded.
        head_fusion: the fusion already applied (``"mean"``, ``"max"``, ``"min"``), or None when
            every head was kept.
        checked: True when the values were checked head by head (finite probabilities, rows of
            padded queries zeroed), as :func:`captum_attnflow.capture_attention` does.
    """

    attentions: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    head_fusion: Optional[str]
    checked: bool = True

    @property
    def num_layers(self) -> int:
        return self.attentions.shape[0]


def checked_attentions(attentions, head_fusion: str,
                       attention_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, str, Optional[torch.Tensor]]:
    """``(stacked (L, B, H, S, S), fusion still to apply, bool mask of real tokens or None)``.

    Plain weights are checked here (after zeroing the rows of padded queries, which see only
    padding and may hold NaN); :class:`AttentionWeights` were checked when captured and carry
    their own mask.
    """
    check_head_fusion(head_fusion)
    if isinstance(attentions, AttentionWeights):
        if attentions.head_fusion is not None and attentions.head_fusion != head_fusion:
            raise InvalidParameterError(
                f"head_fusion={head_fusion!r}, but these attentions were captured with their heads already fused "
                f"by {attentions.head_fusion!r}; capture with head_fusion=None (every head) or with the fusion "
                "you want.")
        valid = attentions.attention_mask
        if attention_mask is not None:
            given = check_attention_mask(attention_mask, attentions.attentions.shape[1],
                                         attentions.attentions.shape[-1])
            assert given is not None  # a mask was given, so one is returned
            if valid is None or not torch.equal(given.cpu(), valid.cpu()):
                raise InvalidInputError(
                    "attention_mask differs from the padding mask the model received when the attentions were "
                    "captured; leave attention_mask out (the captured mask is used).")
        stacked = attentions.attentions if attentions.checked else check_attentions(attentions.attentions, valid)
        return stacked, head_fusion, valid
    stacked = check_attentions(attentions, attention_mask)
    valid = check_attention_mask(attention_mask, stacked.shape[1], stacked.shape[-1])
    return stacked, head_fusion, valid


def fuse_heads(attentions: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """Reduce the head axis of ``(..., H, S, S)`` attentions with mean, max or min."""
    check_head_fusion(head_fusion)
    if head_fusion == "mean":
        return attentions.mean(dim=-3)
    if head_fusion == "max":
        return attentions.amax(dim=-3)
    return attentions.amin(dim=-3)


def _normalize_rows(matrices: torch.Tensor) -> torch.Tensor:
    return matrices / matrices.sum(dim=-1, keepdim=True)


def discard_lowest(fused_attention: torch.Tensor, discard_ratio: float,
                   key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero the ``discard_ratio`` fraction of smallest weights in every row.

    The largest weight of each row is always kept, so a row never becomes empty.
    ``key_mask`` (``(B, S)``, True = real token) restricts the count to real keys.
    """
    if discard_ratio <= 0.0:
        return fused_attention
    seq_len = fused_attention.shape[-1]
    if key_mask is None:
        n_keys = torch.full(fused_attention.shape[:-1], seq_len, device=fused_attention.device)
    else:
        n_keys = key_mask.sum(dim=-1)[:, None].expand(fused_attention.shape[:-1])
    n_drop = torch.clamp((n_keys.float() * discard_ratio).floor().long(), max=n_keys - 1)
    # Padded keys hold zero weight already; rank them below every real key.
    ranking = fused_attention if key_mask is None else fused_attention.masked_fill(
        ~key_mask[:, None, :], -1.0)
    ranks = ranking.argsort(dim=-1).argsort(dim=-1)  # 0 = smallest
    n_padded = seq_len - n_keys
    drop = ranks < (n_padded + n_drop)[..., None]
    return fused_attention.masked_fill(drop, 0.0)


def transition_matrices(attentions, *, head_fusion: str = "mean", residual_weight: float = 0.5,
                        discard_ratio: float = 0.0,
                        attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-layer matrices ``Â_l`` of shape ``(L, B, S, S)``, every row summing to 1.

    Args:
        attentions: L tensors ``(B, H, S, S)`` (as Hugging Face returns them), one
            ``(L, B, H, S, S)`` tensor of post-softmax weights, or :class:`AttentionWeights`.
        head_fusion: ``"mean"`` (paper), ``"max"`` or ``"min"`` over heads.
        residual_weight: weight ``w`` of the identity, ``Â = w·I + (1−w)·A``, in [0, 1].
        discard_ratio: fraction in [0, 1) of the smallest fused weights per row set to
            zero before the residual is added (as in vit-explain); 0 keeps everything.
        attention_mask: optional ``(B, S)`` padding mask: bool or 0/1 (1 = real token), or
            additive (0 = attend, ``<= -1e4`` or ``-inf`` = masked). Attention to padded keys is
            removed and padded rows become identity rows, so real tokens never draw on padding
            and results do not depend on how much padding there is.

    Example:
        >>> import torch
        >>> att = torch.softmax(torch.randn(2, 1, 4, 3, 3), dim=-1)
        >>> transitions = transition_matrices(att)
        >>> tuple(transitions.shape), torch.allclose(transitions.sum(-1), torch.ones(2, 1, 3))
        ((2, 1, 3, 3), True)
    """
    stacked, head_fusion, valid = checked_attentions(attentions, head_fusion, attention_mask)
    return fused_transitions(stacked, head_fusion, residual_weight=residual_weight, discard_ratio=discard_ratio,
                             valid=valid)


def fused_transitions(stacked: torch.Tensor, head_fusion: str, *, residual_weight: float, discard_ratio: float,
                      valid: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`transition_matrices` of checked ``(L, B, H, S, S)`` weights and a bool mask of real tokens."""
    residual_weight = check_fraction("residual_weight", residual_weight)
    discard_ratio = check_fraction("discard_ratio", discard_ratio, upper_open=True)
    seq_len = stacked.shape[-1]
    # An all-real mask changes nothing; skipping it saves several passes over L·B·S².
    key_mask = None if valid is None or bool(valid.all()) else valid.to(stacked.device)
    if stacked.dtype in (torch.float16, torch.bfloat16):
        stacked = stacked.float()  # sums over S keys in half precision lose the ranking

    fused_attention = fuse_heads(stacked, head_fusion)
    if key_mask is not None:
        fused_attention = fused_attention.masked_fill(~key_mask[None, :, None, :], 0.0)
    fused_attention = discard_lowest(fused_attention, discard_ratio, key_mask)
    identity = torch.eye(seq_len, dtype=stacked.dtype, device=stacked.device)
    with_residual = residual_weight * identity + (1.0 - residual_weight) * fused_attention
    if residual_weight == 0.0:
        # Only then can a row be empty; a token that attends nowhere keeps itself.
        empty_rows = with_residual.sum(dim=-1, keepdim=True) <= 0
        with_residual = torch.where(empty_rows, identity.expand_as(with_residual), with_residual)
    if key_mask is not None:
        padded_rows = ~key_mask[None, :, :, None]
        with_residual = torch.where(padded_rows, identity.expand_as(with_residual), with_residual)
    return _normalize_rows(with_residual)
