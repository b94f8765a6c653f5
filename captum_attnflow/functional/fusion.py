"""Fuse heads and add the residual connection: ``A_l -> Â_l``.

Abnar & Zuidema (2020), Sec. 3: the residual connection is modelled by adding
the identity to the (head-averaged) attention matrix and renormalising rows,
``Â_l = w·I + (1 − w)·A_l`` with ``w = 0.5`` in the paper.
"""

from typing import Optional

import torch

from captum_attnflow._validation import (
    check_attention_mask,
    check_attentions,
    check_fraction,
    check_head_fusion,
)


def fuse_heads(attentions: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """Reduce the head axis of ``(..., H, S, S)`` attentions with mean, max or min."""
    check_head_fusion(head_fusion)
    if head_fusion == "mean":
        return attentions.mean(dim=-3)
    if head_fusion == "max":
        return attentions.amax(dim=-3)
    return attentions.amin(dim=-3)


def _normalise_rows(matrices: torch.Tensor) -> torch.Tensor:
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
        attentions: L tensors ``(B, H, S, S)`` (as Hugging Face returns them) or one
            ``(L, B, H, S, S)`` tensor of post-softmax weights.
        head_fusion: ``"mean"`` (paper), ``"max"`` or ``"min"`` over heads.
        residual_weight: weight ``w`` of the identity, ``Â = w·I + (1−w)·A``, in [0, 1].
        discard_ratio: fraction in [0, 1) of the smallest fused weights per row set to
            zero before the residual is added (as in vit-explain); 0 keeps everything.
        attention_mask: optional ``(B, S)`` mask, 1 for real tokens. Attention to padded
            keys is removed and padded rows become identity rows, so real tokens never
            draw on padding and results do not depend on how much padding there is.

    Example:
        >>> import torch
        >>> att = torch.softmax(torch.randn(2, 1, 4, 3, 3), dim=-1)
        >>> transitions = transition_matrices(att)
        >>> tuple(transitions.shape), torch.allclose(transitions.sum(-1), torch.ones(2, 1, 3))
        ((2, 1, 3, 3), True)
    """
    stacked = check_attentions(attentions)
    residual_weight = check_fraction("residual_weight", residual_weight)
    discard_ratio = check_fraction("discard_ratio", discard_ratio, upper_open=True)
    _, batch_size, _, seq_len, _ = stacked.shape
    key_mask = check_attention_mask(attention_mask, batch_size, seq_len)
    if key_mask is not None:
        # An all-real mask changes nothing; skipping it saves several passes over L·B·S².
        key_mask = None if bool(key_mask.all()) else key_mask.to(stacked.device)
    if not stacked.dtype.is_floating_point or stacked.dtype in (torch.float16, torch.bfloat16):
        stacked = stacked.float()

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
    return _normalise_rows(with_residual)
