"""Attention rollout as a Captum attribution."""

from typing import Optional

import torch
from captum.log import log_usage

from captum_attnflow.attr._base import AttentionAttributionBase
from captum_attnflow.capture import CapturedAttention
from captum_attnflow.functional import attention_rollout
from captum_attnflow.functional.positions import TokenIndex


class AttentionRollout(AttentionAttributionBase):
    r"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
    Transformers", ACL, https://arxiv.org/abs/2005.00928, Eq. 1).

    Heads are fused per layer and the residual connection is added,
    ``Â_l = w·I + (1−w)·A_l`` with rows renormalized; the rollout after layer ``l`` is
    ``R_l = Â_l · R_{l−1}`` with ``R_1 = Â_1``. The attribution of the explained token is
    its row of ``R_layer``: how much it draws on each input token. With the default
    ``edge_weights="attention"`` scores are class-agnostic, so ``target`` is accepted (for
    drop-in use in Captum loops) and ignored.

    **Target-aware edges.** ``edge_weights="gradient"`` weighs each head's attention by the
    gradient of the target output (Chefer et al., 2021, "Generic Attention-model Explainability
    for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV,
    https://arxiv.org/abs/2103.15679): ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]``, ``R = I`` and
    ``R ← R + Ā_l·R`` from ``start_layer`` on; the attribution is the explained token's row of
    ``R`` (unnormalised, self entry included). ``edge_weights="grad_rollout"`` is
    jacobgil/vit-explain's gradient rollout (``(E_h[A ⊙ ∇A])^+``, then rollout with the residual
    and renormalised rows). One forward and one backward pass per call, whatever the batch
    size; see :mod:`captum_attnflow.capture.gradients`.

    Works on unmodified Hugging Face models whatever attention implementation they were
    loaded with (SDPA is switched to eager for the call and restored afterwards). The scores
    are :func:`captum_attnflow.functional.attention_rollout` of the captured weights.

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
        >>> from transformers import BertForSequenceClassification
        >>> classifier = BertForSequenceClassification(model.config).eval()      # 2 labels
        >>> relevance = AttentionRollout(classifier).attribute(input_ids, target=1, edge_weights="gradient",
        ...                                                    additional_forward_args=(attention_mask,))
        >>> tuple(relevance.shape), bool(relevance[1, 3] == 0)
        ((2, 4), True)
    """

    @log_usage()
    def attribute(self, inputs, target=None, additional_forward_args=None, *,
                  token_index: TokenIndex = 0, layer: Optional[int] = None, return_all_layers: bool = False,
                  head_fusion: str = "mean", residual_weight: float = 0.5,
                  discard_ratio: float = 0.0, causal_normalization: bool = False,
                  attention_mask: Optional[torch.Tensor] = None, return_patch_grid: bool = False,
                  edge_weights: str = "attention", start_layer: int = 0, discard_mode: str = "row"):
        r"""
        Args:
            inputs (Tensor or tuple of one Tensor): token ids of shape ``(B, S)``, pixel values
                ``(B, C, H, W)`` for vision transformers, or what the model's adapter accepts
                (embeddings for ``nn.TransformerEncoder`` models). A 1-tuple gives a 1-tuple back,
                as in Captum.
            target: with the gradient edge weights, the output to explain, one scalar per example,
                in Captum's conventions: an int (``output[:, target]``), a tuple of ints, a tensor
                (one index, or one per example), or a list with an int or a tuple per example;
                None when the forward function returns ``(B,)`` scores. A Hugging Face output's
                ``logits`` are used. Ignored with ``edge_weights="attention"`` (class-agnostic).
            additional_forward_args (tuple, optional): extra positional arguments of the
                forward function, e.g. ``(attention_mask,)``. The padding mask is the one the model
                receives in its own call (Hugging Face ``attention_mask``, PyTorch
                ``key_padding_mask``), whatever the wrapper names it; padded tokens get 0.
            token_index (int, Tensor or str): the explained position(s): an int (default 0, the
                CLS token), a ``(B,)`` tensor, a ``(B, P)`` tensor (result ``(B, P, ...)``),
                ``"mean"`` (average over the real tokens), ``"last"`` (last real token, for
                decoders) or ``"all"`` (every position: ``(B, S, S)`` rollout matrices).
            layer (int, optional): explain the output of this layer, indexed like a Python list
                over the L layers (default: the last).
            return_all_layers (bool): return ``(L, B, ...)`` scores after every layer.
            head_fusion (str): ``"mean"``, ``"max"`` or ``"min"`` over heads.
            residual_weight (float): ``w`` in ``Â = w·I + (1−w)·A`` (paper: 0.5).
            discard_ratio (float): fraction of the smallest fused weights zeroed first, per row (or
                per matrix with ``discard_mode="matrix"``).
            causal_normalization (bool): for decoders, divide each score by the rollout of uniform
                causal attention (the input's receptive-field mass) and rescale to sum to 1, so
                early tokens are not favoured merely for being visible to more positions; see
                :mod:`captum_attnflow.functional.causal`.
            attention_mask (Tensor, optional): ``(B, S)`` padding mask (1 = real) for models whose
                mask cannot be seen (``attention_fn=``, ``attention_modules=``); elsewhere it must
                equal the mask the model received.
            return_patch_grid (bool): vision models only: return the ``(B, grid_h, grid_w)`` scores
                of the patch tokens (special tokens dropped, not renormalized) instead of pixels.
            edge_weights (str): ``"attention"`` (default), ``"gradient"`` (Chefer et al.) or
                ``"grad_rollout"`` (vit-explain); see
                :func:`~captum_attnflow.functional.transition_matrices`. The gradient weightings
                need ``head_fusion="mean"``; ``"gradient"`` ignores no option silently: it refuses
                ``residual_weight`` other than the default and ``causal_normalization``.
            start_layer (int): skip the layers before it (Python-list index; Chefer et al.'s
                ``start_layer``); default 0, every layer.
            discard_mode (str): ``"row"`` (default) or ``"matrix"``, vit-explain's rule: the
                ``discard_ratio`` smallest entries of the whole fused matrix (see
                :func:`~captum_attnflow.functional.discard_lowest`).

        Returns:
            Tensor shaped like ``inputs`` (``(L, *inputs.shape)`` with ``return_all_layers``; a
            ``P`` axis after the batch for several positions), in the model's floating dtype.
            Token scores sum to 1 per explained position (not with ``edge_weights="gradient"``:
                Chefer's relevance rows sum to at least 1); for images, the patch scores are
            upsampled to pixels and repeated over channels (or the patch grid with
            ``return_patch_grid``).
        """
        return self._attribute(inputs, additional_forward_args, token_index=token_index, layer=layer,
                               return_all_layers=return_all_layers, head_fusion=head_fusion,
                               attention_mask=attention_mask, return_patch_grid=return_patch_grid,
                               residual_weight=residual_weight, discard_ratio=discard_ratio,
                               causal_normalization=causal_normalization, target=target,
                               edge_weights=edge_weights, start_layer=start_layer, discard_mode=discard_mode)

    def _propagate(self, captured: CapturedAttention, **options) -> torch.Tensor:
        return attention_rollout(captured, **options)
