"""Raw (head-fused) attention weights as a Captum attribution: the paper's baseline."""

from typing import List

import torch
from captum.log import log_usage

from captum_attnflow.attr._base import AttentionAttributionBase, TokenIndex
from captum_attnflow.capture import CapturedAttention
from captum_attnflow.functional.fusion import fuse_heads


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
    def attribute(self, inputs: torch.Tensor, target=None, additional_forward_args=None, *,
                  token_index: TokenIndex = 0, layer: int = -1, return_all_layers: bool = False,
                  head_fusion: str = "mean", return_patch_grid: bool = False) -> torch.Tensor:
        r"""
        Args:
            inputs (Tensor): token ids ``(B, S)`` or pixel values ``(B, C, H, W)`` (vision models).
            target: unused.
            additional_forward_args (tuple, optional): e.g. ``(attention_mask,)``.
            token_index (int, Tensor or str): as in :class:`AttentionRollout`.
            layer (int): which layer's attention (Python-list indexing).
            return_all_layers (bool): return ``(L, B, S)``.
            head_fusion (str): ``"mean"``, ``"max"`` or ``"min"``.
            return_patch_grid (bool): vision models only: the ``(B, grid_h, grid_w)`` patch scores.

        Returns:
            Tensor shaped like ``inputs`` (``(L, *inputs.shape)`` with ``return_all_layers``).
        """
        return self._attribute(inputs, additional_forward_args, token_index, layer, return_all_layers,
                               head_fusion, return_patch_grid=return_patch_grid)

    def _layer_scores(self, captured: CapturedAttention, valid: torch.Tensor, positions: List[List[int]],
                      layers: List[int]) -> torch.Tensor:
        fused_attention = fuse_heads(captured.attentions[layers], captured.head_fusion or "mean")
        fused_attention = fused_attention.masked_fill(~valid.to(fused_attention.device)[None, :, None, :], 0.0)
        rows = [fused_attention[:, b, example_positions].mean(dim=1) for b, example_positions in enumerate(positions)]
        return torch.stack(rows, dim=1).float()
