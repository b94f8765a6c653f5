"""Attention rollout as a Captum attribution."""

from typing import List

import torch
from captum.log import log_usage

from captum_attnflow._validation import check_causal_transitions
from captum_attnflow.attr._base import AttentionAttributionBase, TokenIndex
from captum_attnflow.capture import CapturedAttention
from captum_attnflow.functional.causal import normalize_by_receptive_field, receptive_field_transitions
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
                  discard_ratio: float = 0.0, causal_normalization: bool = False,
                  return_patch_grid: bool = False) -> torch.Tensor:
        r"""
        Args:
            inputs (Tensor): token ids of shape ``(B, S)``, pixel values ``(B, C, H, W)`` for
                vision transformers, or what the model's adapter accepts (embeddings for
                ``nn.TransformerEncoder`` models).
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
            causal_normalization (bool): for decoders, divide each score by the rollout of uniform
                causal attention (the input's receptive-field mass) and rescale to sum to 1, so
                early tokens are not favoured merely for being visible to more positions; see
                :mod:`captum_attnflow.functional.causal`.
            return_patch_grid (bool): vision models only: return the ``(B, grid_h, grid_w)`` scores
                of the patch tokens (special tokens dropped, not renormalised) instead of pixels.

        Returns:
            Tensor shaped like ``inputs`` (``(L, *inputs.shape)`` with ``return_all_layers``).
            Token scores sum to 1 per example; for images, the patch scores are upsampled to
            pixels and repeated over channels (or the patch grid with ``return_patch_grid``).
        """
        return self._attribute(inputs, additional_forward_args, token_index, layer, return_all_layers,
                               head_fusion, return_patch_grid=return_patch_grid, residual_weight=residual_weight,
                               discard_ratio=discard_ratio, causal_normalization=causal_normalization)

    def _layer_scores(self, captured: CapturedAttention, valid: torch.Tensor, positions: List[List[int]],
                      layers: List[int], *, residual_weight: float, discard_ratio: float,
                      causal_normalization: bool) -> torch.Tensor:
        transitions = transition_matrices(captured.attentions, head_fusion=captured.head_fusion or "mean",
                                          residual_weight=residual_weight, discard_ratio=discard_ratio,
                                          attention_mask=valid.to(captured.attentions.device))
        # Averaging explained rows == one row of weights 1/|positions| on each of them.
        row_weights = torch.zeros(transitions.shape[1:3], dtype=transitions.dtype, device=transitions.device)
        for b, example_positions in enumerate(positions):
            row_weights[b, example_positions] = 1.0 / len(example_positions)
        scores = rollout_rows(transitions, row_weights, layers)
        if causal_normalization:
            check_causal_transitions(transitions[: max(layers) + 1])
            num_layers, batch_size, seq_len, _ = transitions.shape
            uniform = receptive_field_transitions(num_layers, batch_size, seq_len, residual_weight=residual_weight,
                                                  attention_mask=valid.to(transitions.device),
                                                  dtype=transitions.dtype, device=transitions.device)
            scores = normalize_by_receptive_field(scores, rollout_rows(uniform, row_weights, layers))
        return scores.float()
