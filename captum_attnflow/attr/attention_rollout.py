"""Attention rollout as a Captum attribution."""

from typing import List

import torch
from captum.log import log_usage

from captum_attnflow.attr._base import AttentionAttributionBase, TokenIndex
from captum_attnflow.capture import CapturedAttention
from captum_attnflow.functional.fusion import transition_matrices
from captum_attnflow.functional.rollout import rollout_rows


class AttentionRollout(AttentionAttributionBase):
    r"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
    Transformers", ACL, https://arxiv.org/abs/2005.00928, Eq. 1).

    Heads are fused per layer and the residual connection is added,
    ``Â_l = w·I + (1−w)·A_l`` with rows renormalised; the rollout after layer ``l`` is
    ``R_l = Â_l · R_{l−1}`` with ``R_1 = Â_1``. The attribution of the explained token is
    its row of ``R_layer``: how much it draws on each input token. Scores are
    class-agnostic, so ``target`` is accepted (for drop-in use in Captum loops) and ignored.

    Works on unmodified Hugging Face models whatever attention implementation they were
    loaded with (SDPA is switched to eager for the call and restored afterwards).

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertModel
        >>> from captum_attnflow import AttentionRollout
        >>> model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                              num_attention_heads=2, intermediate_size=16)).eval()
        >>> input_ids = torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]])
        >>> attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        >>> scores = AttentionRollout(model).attribute(input_ids, additional_forward_args=(attention_mask,))
        >>> tuple(scores.shape), bool(scores[1, 3] == 0)
        ((2, 4), True)
    """

    @log_usage()
    def attribute(self, inputs: torch.Tensor, target=None, additional_forward_args=None, *,
                  token_index: TokenIndex = 0, layer: int = -1, return_all_layers: bool = False,
                  head_fusion: str = "mean", residual_weight: float = 0.5,
                  discard_ratio: float = 0.0) -> torch.Tensor:
        r"""
        Args:
            inputs (Tensor): token ids of shape ``(B, S)``.
            target: unused; rollout does not depend on the output class.
            additional_forward_args (tuple, optional): extra positional arguments of the
                forward function, e.g. ``(attention_mask,)``; the padding mask is read from
                there and padded tokens get 0.
            token_index (int, Tensor or str): the explained position: an int (default 0, the
                CLS token), a ``(B,)`` tensor of positions, ``"mean"`` (average over the real
                tokens) or ``"last"`` (last real token, for decoders).
            layer (int): explain the output of this layer, indexed like a Python list over the
                L layers (``-1`` = last).
            return_all_layers (bool): return ``(L, B, S)`` scores after every layer.
            head_fusion (str): ``"mean"``, ``"max"`` or ``"min"`` over heads.
            residual_weight (float): ``w`` in ``Â = w·I + (1−w)·A`` (paper: 0.5).
            discard_ratio (float): fraction of the smallest fused weights per row zeroed first.

        Returns:
            Tensor of shape ``(B, S)`` (``(L, B, S)`` with ``return_all_layers``); rows sum to 1.
        """
        return self._attribute(inputs, additional_forward_args, token_index, layer, return_all_layers,
                               head_fusion, residual_weight=residual_weight, discard_ratio=discard_ratio)

    def _layer_scores(self, captured: CapturedAttention, valid: torch.Tensor, positions: List[List[int]],
                      layers: List[int], *, residual_weight: float, discard_ratio: float) -> torch.Tensor:
        transitions = transition_matrices(captured.attentions, head_fusion=captured.head_fusion or "mean",
                                          residual_weight=residual_weight, discard_ratio=discard_ratio,
                                          attention_mask=valid.to(captured.attentions.device))
        # Averaging explained rows == one row of weights 1/|positions| on each of them.
        row_weights = torch.zeros(transitions.shape[1:3], dtype=transitions.dtype, device=transitions.device)
        for b, example_positions in enumerate(positions):
            row_weights[b, example_positions] = 1.0 / len(example_positions)
        return rollout_rows(transitions, row_weights, layers).float()
