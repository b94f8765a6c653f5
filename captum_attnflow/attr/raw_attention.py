"""Raw (head-fused) attention weights as a Captum attribution: the paper's baseline."""

from typing import Optional

import torch
from captum.log import log_usage

from captum_attnflow.attr._base import AttentionAttributionBase
from captum_attnflow.capture import CapturedAttention
from captum_attnflow.functional import raw_attention
from captum_attnflow.functional.positions import TokenIndex


class RawAttention(AttentionAttributionBase):
    r"""Raw attention of the explained token at one layer, heads fused, no residual.

    The baseline that Abnar & Zuidema (2020, https://arxiv.org/abs/2005.00928) compare
    rollout and flow against: row ``token_index`` of the head-fused attention matrix of
    ``layer``. Attention to padded tokens is 0. ``target`` is accepted and ignored.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertModel
        >>> from captum_attnflow import RawAttention
        >>> model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                              num_attention_heads=2, intermediate_size=16)).eval()
        >>> scores = RawAttention(model).attribute(torch.tensor([[1, 5, 7, 2]]), return_all_layers=True)
        >>> tuple(scores.shape)
        (2, 1, 4)
    """

    @log_usage()
    def attribute(self, inputs, target=None, additional_forward_args=None, *,
                  token_index: TokenIndex = 0, layer: Optional[int] = None, return_all_layers: bool = False,
                  head_fusion: str = "mean", attention_mask: Optional[torch.Tensor] = None,
                  return_patch_grid: bool = False):
        r"""
        Args:
            inputs (Tensor or tuple of one Tensor): token ids ``(B, S)`` or pixel values
                ``(B, C, H, W)`` (vision models).
            target: unused.
            additional_forward_args (tuple, optional): e.g. ``(attention_mask,)``.
            token_index (int, Tensor or str): as in :class:`AttentionRollout`.
            layer (int, optional): which layer's attention (Python-list indexing; default: the last).
            return_all_layers (bool): return ``(L, B, ...)``.
            head_fusion (str): ``"mean"``, ``"max"`` or ``"min"``.
            attention_mask (Tensor, optional): as in :class:`AttentionRollout`.
            return_patch_grid (bool): vision models only: the ``(B, grid_h, grid_w)`` patch scores.

        Returns:
            Tensor shaped like ``inputs`` (``(L, *inputs.shape)`` with ``return_all_layers``);
            the scores of :func:`captum_attnflow.functional.raw_attention`.
        """
        return self._attribute(inputs, additional_forward_args, token_index=token_index, layer=layer,
                               return_all_layers=return_all_layers, head_fusion=head_fusion,
                               attention_mask=attention_mask, return_patch_grid=return_patch_grid)

    def _propagate(self, captured: CapturedAttention, **options) -> torch.Tensor:
        return raw_attention(captured, **options)
