"""Raw attention: the baseline of Abnar & Zuidema (2020), heads fused, no residual."""

from typing import Optional

import torch

from captum_attnflow.functional.fusion import checked_attentions, fuse_heads
from captum_attnflow.functional.positions import (
    ExplainedPositions,
    TokenIndex,
    assemble,
    explained_layers,
    explained_positions,
    real_tokens,
)


def raw_attribution(fused_attention: torch.Tensor, valid: torch.Tensor, explained: ExplainedPositions) -> torch.Tensor:
    """Rows of head-fused ``(n, B, S, S)`` attention at the explained positions, padded keys 0."""
    attention = fused_attention.masked_fill(~valid.to(fused_attention.device)[None, :, None, :], 0.0)
    index = explained.index.to(attention.device)
    rows = attention.gather(2, index[None, :, :, None].expand(attention.shape[0], -1, -1, attention.shape[-1]))
    return assemble(rows * explained.used.to(attention.device)[None, :, :, None], explained)


def raw_attention(attentions, *, token_index: TokenIndex = 0, layer: Optional[int] = None,
                  return_all_layers: bool = False, head_fusion: str = "mean",
                  attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The explained positions' rows of one layer's head-fused attention (the paper's baseline).

    Args:
        attentions: L tensors ``(B, H, S, S)``, one ``(L, B, H, S, S)`` tensor, or
            :class:`~captum_attnflow.functional.AttentionWeights`.
        token_index: the explained positions (see :mod:`captum_attnflow.functional.positions`).
        layer: which layer's attention (Python-list index; default: the last).
        return_all_layers: a leading axis over every layer instead.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        attention_mask: optional ``(B, S)`` padding mask; attention to padded keys is 0.

    Example:
        >>> import torch
        >>> attentions = torch.softmax(torch.randn(2, 1, 2, 4, 4), -1)
        >>> rows = raw_attention(attentions, token_index=1, layer=0)
        >>> torch.allclose(rows, attentions[0, :, :, 1].mean(1))
        True
    """
    stacked, head_fusion, valid = checked_attentions(attentions, head_fusion, attention_mask)
    num_layers, batch_size, _, seq_len, _ = stacked.shape
    layers = explained_layers(layer, return_all_layers, num_layers)
    valid = real_tokens(valid, batch_size, seq_len)
    explained = explained_positions(token_index, valid)
    scores = raw_attribution(fuse_heads(stacked[layers], head_fusion), valid, explained)
    return (scores if return_all_layers else scores[0]).to(stacked.dtype)
