"""Fuse heads and add the residual connection: ``A_l -> Â_l``.

Abnar & Zuidema (2020), Sec. 3: the residual connection is modelled by adding
the identity to the (head-averaged) attention matrix and renormalizing rows,
``Â_l = w·I + (1 − w)·A_l`` with ``w = 0.5`` in the paper.

The edges can instead be weighted by the gradient of a target output (``edge_weights``):
``"gradient"`` is Chefer et al.'s rule and ``"grad_rollout"`` vit-explain's; see
:func:`gradient_weighted_attention` and :func:`fused_transitions`.

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
    check_layer,
)
from captum_attnflow.exceptions import InvalidInputError, InvalidInputTypeError, InvalidParameterError

#: What weighs the edges of the attention graph: the attention probabilities, or their
#: products with the gradient of a target output (Chefer et al.; vit-explain's grad rollout).
EDGE_WEIGHTS = ("attention", "gradient", "grad_rollout")
#: The edge weightings that need ``attention_grads``.
GRADIENT_EDGE_WEIGHTS = ("gradient", "grad_rollout")
#: ``discard_ratio`` counted per row of the fused matrix, or over the whole matrix (vit-explain).
DISCARD_MODES = ("row", "matrix")


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


def checked_attentions(attentions, head_fusion: str, attention_mask: Optional[torch.Tensor], *,
                       keep_heads: bool = False) -> Tuple[torch.Tensor, str, Optional[torch.Tensor]]:
    """``(stacked (L, B, H, S, S), fusion still to apply, bool mask of real tokens or None)``.

    Plain weights are checked here (after zeroing the rows of padded queries, which see only
    padding and may hold NaN); :class:`AttentionWeights` were checked when captured and carry
    their own mask. ``keep_heads``: the caller weighs every head (by its gradient) before
    fusing, so weights captured with their heads fused are refused.
    """
    check_head_fusion(head_fusion)
    if isinstance(attentions, AttentionWeights):
        if keep_heads and attentions.head_fusion is not None:
            raise InvalidParameterError(
                f"these attentions were captured with their heads fused by {attentions.head_fusion!r}, but the "
                "gradient edge weightings weigh every head by its gradient before fusing; capture with "
                "head_fusion=None (captum_attnflow.capture.capture_attention_gradients does).")
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
                   key_mask: Optional[torch.Tensor] = None, *, mode: str = "row",
                   keep_first: bool = True) -> torch.Tensor:
    """Zero the ``discard_ratio`` fraction of smallest fused weights, per row or per matrix.

    ``mode="row"`` (this library's default): in every row, the ``floor(n · discard_ratio)``
    smallest of its ``n`` real keys are zeroed; the largest weight of each row is always kept,
    so a row never becomes empty.

    ``mode="matrix"``: jacobgil/vit-explain's rule (``vit_rollout.py:24-27``,
    ``vit_grad_rollout.py:19-22``): the ``floor(n² · discard_ratio)`` smallest entries of the
    whole flattened ``n × n`` matrix are zeroed, whichever rows they sit in (rows may become
    empty; the residual added afterwards keeps the graph connected). With ``keep_first``
    the entry ``[0, 0]`` (the first real token's weight on itself, [CLS]→[CLS]) is never
    zeroed, as ``indices = indices[indices != 0]`` does in ``vit_rollout.py:26``; it is not
    replaced, so one entry fewer is dropped when it was among the smallest. vit-explain's grad
    rollout has that line commented out (``vit_grad_rollout.py:21``): ``keep_first=False``.
    vit-explain zeroes only batch row 0 (``flat[0, indices] = 0``, written for one image);
    here every example gets its own matrix's smallest entries.

    ``key_mask`` (``(B, S)``, True = real token) restricts the count to real tokens, so a
    padded example gets what it gets alone.
    """
    if discard_ratio <= 0.0:
        return fused_attention
    if mode == "matrix":
        return _discard_lowest_in_matrix(fused_attention, discard_ratio, key_mask, keep_first)
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


def _discard_lowest_in_matrix(fused_attention: torch.Tensor, discard_ratio: float,
                              key_mask: Optional[torch.Tensor], keep_first: bool) -> torch.Tensor:
    """``mode="matrix"`` of :func:`discard_lowest` on ``(..., B, S, S)`` matrices."""
    seq_len = fused_attention.shape[-1]
    batch_size = fused_attention.shape[-3]
    device = fused_attention.device
    valid = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device) if key_mask is None else key_mask
    real_entries = valid[:, :, None] & valid[:, None, :]  # (B, S, S)
    n_real = valid.sum(dim=-1).to(torch.float64)
    # vit-explain: int(flat.size(-1) * discard_ratio), in double precision as Python computes it.
    n_drop = (n_real * n_real * discard_ratio).floor().long()  # (B,)
    # Entries outside the real n × n block rank below every real entry and are dropped anyway (they are 0).
    ranking = fused_attention.masked_fill(~real_entries, -1.0).flatten(-2)
    ranks = ranking.argsort(dim=-1).argsort(dim=-1).view_as(fused_attention)
    n_outside = (seq_len * seq_len - n_real * n_real).long()
    drop = ranks < (n_outside + n_drop)[:, None, None]
    if keep_first:
        first = valid.to(torch.int64).argmax(dim=-1)  # the first real token of every example
        drop[..., torch.arange(batch_size, device=device), first, first] = False
    return fused_attention.masked_fill(drop, 0.0)


def gradient_weighted_attention(attentions: torch.Tensor, attention_grads: torch.Tensor,
                                edge_weights: str) -> torch.Tensor:
    """Fuse the heads of ``(..., H, S, S)`` attention weighted by its gradient: ``(..., S, S)``.

    * ``"gradient"``, Chefer et al. 2021 ("Generic Attention-model Explainability for
      Interpreting Bi-Modal and Encoder-Decoder Transformers", https://arxiv.org/abs/2103.15679,
      Eq. 5): ``Ā = E_h[(∇A ⊙ A)^+]``, negatives clamped *per head* before the mean over heads
      (``avg_heads`` in hila-chefer/Transformer-MM-Explainability,
      ``lxmert/lxmert/src/ExplanationGenerator.py:18-23``).
    * ``"grad_rollout"``, jacobgil/vit-explain: ``(E_h[A ⊙ ∇A])^+``, the mean over heads first,
      then negatives set to 0 (``vit_grad_rollout.py:13-15``).

    Example:
        >>> attention = torch.tensor([[[[0.5, 0.5]], [[1.0, 0.0]]]])          # (1, H=2, 1, 2)
        >>> grads = torch.tensor([[[[2.0, -2.0]], [[-1.0, 3.0]]]])
        >>> gradient_weighted_attention(attention, grads, "gradient").tolist()
        [[[0.5, 0.0]]]
        >>> gradient_weighted_attention(attention, grads, "grad_rollout").tolist()
        [[[0.0, 0.0]]]
    """
    product = attention_grads * attentions
    if edge_weights == "gradient":
        return product.clamp(min=0).mean(dim=-3)
    if edge_weights == "grad_rollout":
        return product.mean(dim=-3).clamp(min=0)
    raise InvalidParameterError(f"edge_weights={edge_weights!r} is not a gradient weighting; use one of "
                                f"{GRADIENT_EDGE_WEIGHTS}.")


def check_edge_options(edge_weights: str, *, head_fusion: str = "mean", residual_weight: float = 0.5,
                       discard_mode: str = "row", causal_normalization: bool = False) -> str:
    """Refuse option combinations that the chosen edge weighting does not define.

    Both gradient weightings average the heads (their definitions fuse heads after weighting
    by the gradient); Chefer's rule adds the identity with weight 1 and does not renormalise,
    so ``residual_weight`` has no meaning there; the causal baseline is uniform *attention*.
    """
    if not isinstance(edge_weights, str) or edge_weights not in EDGE_WEIGHTS:
        raise InvalidParameterError(
            f"edge_weights={edge_weights!r} is not supported; use one of {EDGE_WEIGHTS} ('attention': the "
            "attention probabilities; 'gradient': Chefer et al.'s gradient-weighted attention; 'grad_rollout': "
            "vit-explain's).")
    if not isinstance(discard_mode, str) or discard_mode not in DISCARD_MODES:
        raise InvalidParameterError(
            f"discard_mode={discard_mode!r} is not supported; use one of {DISCARD_MODES} ('row': per row; "
            "'matrix': the smallest entries of the whole matrix, as vit-explain).")
    if edge_weights == "attention":
        return edge_weights
    if head_fusion != "mean":
        raise InvalidParameterError(
            f"head_fusion={head_fusion!r} with edge_weights={edge_weights!r}: gradient-weighted attention is "
            "averaged over heads by definition; leave head_fusion at 'mean'.")
    if edge_weights == "gradient" and residual_weight != 0.5:
        raise InvalidParameterError(
            f"residual_weight={residual_weight!r} with edge_weights='gradient': Chefer et al.'s rule R <- R + Ā·R "
            "adds the identity unweighted and does not renormalise; leave residual_weight at its default, or "
            "use edge_weights='grad_rollout' (w·I + (1-w)·Ā, rows renormalised).")
    if causal_normalization:
        raise InvalidParameterError(
            f"causal_normalization=True needs edge_weights='attention': its baseline is uniform causal attention, "
            f"not a gradient-weighted graph (edge_weights={edge_weights!r}).")
    return edge_weights


def checked_gradients(attention_grads, attentions: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """``attention_grads`` stacked like ``attentions`` ``(L, B, H, S, S)``, finite, padding zeroed."""
    if isinstance(attention_grads, (list, tuple)):
        if not attention_grads or not all(isinstance(g, torch.Tensor) for g in attention_grads):
            raise InvalidInputTypeError("attention_grads must be a non-empty sequence of (B, H, S, S) tensors or "
                                        "one (L, B, H, S, S) tensor.")
        try:
            attention_grads = torch.stack(list(attention_grads))
        except RuntimeError as error:
            raise InvalidInputError(f"all layers of attention_grads must share one shape ({error}).") from error
    if not isinstance(attention_grads, torch.Tensor):
        raise InvalidInputTypeError(
            f"attention_grads must be a tensor (or L tensors) shaped like the attentions, got "
            f"{type(attention_grads).__name__}.")
    if tuple(attention_grads.shape) != tuple(attentions.shape):
        raise InvalidInputError(
            f"attention_grads has shape {tuple(attention_grads.shape)} but the attentions have "
            f"{tuple(attentions.shape)}; pass the gradient of the target with respect to every head's weights "
            "(capture with every head kept).")
    if not attention_grads.is_floating_point():
        raise InvalidInputTypeError(f"attention_grads must be floating point, got dtype {attention_grads.dtype}.")
    grads = attention_grads.to(attentions.device)
    if valid is not None and not bool(valid.all()):
        real = valid.to(grads.device)
        # Rows of padded queries may hold anything (NaN included); they and padded keys are unused.
        grads = grads.masked_fill(~(real[None, :, None, :, None] & real[None, :, None, None, :]), 0.0)
    if not bool(torch.isfinite(grads).all()):
        raise InvalidInputError("attention_grads holds NaN or infinite values; the target output's gradient is not "
                                "finite (check the model's output for this input).")
    return grads


def transition_matrices(attentions, *, head_fusion: str = "mean", residual_weight: float = 0.5,
                        discard_ratio: float = 0.0, attention_mask: Optional[torch.Tensor] = None,
                        edge_weights: str = "attention", attention_grads=None, start_layer: int = 0,
                        discard_mode: str = "row") -> torch.Tensor:
    """Per-layer matrices ``Â_l`` of shape ``(L, B, S, S)``: the edges of the attention graph.

    With ``edge_weights="attention"`` and ``"grad_rollout"`` every row sums to 1; with
    ``"gradient"`` the matrices are Chefer et al.'s ``I + Ā_l``, not renormalised.

    Args:
        attentions: L tensors ``(B, H, S, S)`` (as Hugging Face returns them), one
            ``(L, B, H, S, S)`` tensor of post-softmax weights, or :class:`AttentionWeights`.
        head_fusion: ``"mean"`` (paper), ``"max"`` or ``"min"`` over heads.
        residual_weight: weight ``w`` of the identity, ``Â = w·I + (1−w)·A``, in [0, 1].
        discard_ratio: fraction in [0, 1) of the smallest fused weights set to zero before the
            residual is added (see ``discard_mode``); 0 keeps everything.
        attention_mask: optional ``(B, S)`` padding mask: bool or 0/1 (1 = real token), or
            additive (0 = attend, ``<= -1e4`` or ``-inf`` = masked). Attention to padded keys is
            removed and padded rows become identity rows, so real tokens never draw on padding
            and results do not depend on how much padding there is.
        edge_weights: ``"attention"`` (the weights themselves), ``"gradient"`` (Chefer et al.
            2021: ``Â_l = I + E_h[(∇A_l ⊙ A_l)^+]``) or ``"grad_rollout"`` (vit-explain:
            ``Â_l = w·I + (1−w)·(E_h[∇A_l ⊙ A_l])^+``, rows renormalised; their
            ``vit_grad_rollout.py:26`` divides by ``a.sum(dim=-1)`` without ``keepdim``, which
            broadcasts row sums over columns, and rows are normalised here instead); see
            :func:`gradient_weighted_attention`.
        attention_grads: with the gradient weightings, the gradient of the target output with
            respect to every head's weights, shaped like ``attentions`` (or carried by
            ``attentions``, as :func:`captum_attnflow.capture.capture_attention_gradients` returns).
        start_layer: layers before it (Python-list index) get identity matrices, i.e. are
            skipped, as ``start_layer`` in Chefer et al.'s code (``if i < start_layer: continue``
            in ``interpret`` of Transformer-MM-Explainability's ``CLIP_explainability.ipynb``).
        discard_mode: ``"row"`` or ``"matrix"`` (vit-explain's whole-matrix rule), see
            :func:`discard_lowest`.

    Example:
        >>> import torch
        >>> att = torch.softmax(torch.randn(2, 1, 4, 3, 3), dim=-1)
        >>> transitions = transition_matrices(att)
        >>> tuple(transitions.shape), torch.allclose(transitions.sum(-1), torch.ones(2, 1, 3))
        ((2, 1, 3, 3), True)
        >>> chefer = transition_matrices(att, edge_weights="gradient", attention_grads=torch.randn(2, 1, 4, 3, 3))
        >>> bool((chefer.diagonal(dim1=-2, dim2=-1) >= 1).all())      # I + Ā, Ā >= 0
        True
    """
    check_edge_options(edge_weights, head_fusion=head_fusion, residual_weight=residual_weight,
                       discard_mode=discard_mode)
    stacked, head_fusion, valid = checked_attentions(attentions, head_fusion, attention_mask,
                                                     keep_heads=edge_weights != "attention")
    grads = gradients_for(edge_weights, attentions, attention_grads, stacked, valid)
    return fused_transitions(stacked, head_fusion, residual_weight=residual_weight, discard_ratio=discard_ratio,
                             valid=valid, edge_weights=edge_weights, attention_grads=grads, start_layer=start_layer,
                             discard_mode=discard_mode)


def gradients_for(edge_weights: str, attentions, attention_grads, stacked: torch.Tensor,
                  valid: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The checked gradients a weighting needs: given, or carried by captured ``attentions``; None for
    ``"attention"`` (which refuses them rather than ignoring them)."""
    carried = getattr(attentions, "attention_grads", None)
    if edge_weights == "attention":
        if attention_grads is not None:
            raise InvalidParameterError(
                "attention_grads is only used with edge_weights='gradient' or 'grad_rollout'; pass one of them, "
                "or leave attention_grads out.")
        return None
    if attention_grads is None:
        attention_grads = carried
    if attention_grads is None:
        raise InvalidParameterError(
            f"edge_weights={edge_weights!r} needs attention_grads: the gradient of the target output with respect "
            "to every head's attention weights, shaped like the attentions (capture both with "
            "captum_attnflow.capture.capture_attention_gradients, or use AttentionRollout/AttentionFlow with "
            "target=...).")
    return checked_gradients(attention_grads, stacked, valid)


def fused_transitions(stacked: torch.Tensor, head_fusion: str, *, residual_weight: float, discard_ratio: float,
                      valid: Optional[torch.Tensor], edge_weights: str = "attention",
                      attention_grads: Optional[torch.Tensor] = None, start_layer: int = 0,
                      discard_mode: str = "row") -> torch.Tensor:
    """:func:`transition_matrices` of checked ``(L, B, H, S, S)`` weights (and, for the gradient
    weightings, checked gradients of the same shape) and a bool mask of real tokens."""
    residual_weight = check_fraction("residual_weight", residual_weight)
    discard_ratio = check_fraction("discard_ratio", discard_ratio, upper_open=True)
    check_edge_options(edge_weights, head_fusion=head_fusion, residual_weight=residual_weight,
                       discard_mode=discard_mode)
    start_layer = check_layer(start_layer, stacked.shape[0], "start_layer")
    seq_len = stacked.shape[-1]
    # An all-real mask changes nothing; skipping it saves several passes over L·B·S².
    key_mask = None if valid is None or bool(valid.all()) else valid.to(stacked.device)
    if stacked.dtype in (torch.float16, torch.bfloat16):
        stacked = stacked.float()  # sums over S keys in half precision lose the ranking

    if edge_weights == "attention":
        fused_attention = fuse_heads(stacked, head_fusion)
    else:
        if attention_grads is None:
            raise InvalidParameterError(f"edge_weights={edge_weights!r} needs attention_grads.")
        fused_attention = gradient_weighted_attention(stacked, attention_grads.to(stacked.dtype), edge_weights)
    if key_mask is not None:
        fused_attention = fused_attention.masked_fill(~key_mask[None, :, None, :], 0.0)
    fused_attention = discard_lowest(fused_attention, discard_ratio, key_mask, mode=discard_mode,
                                     keep_first=edge_weights == "attention")
    identity = torch.eye(seq_len, dtype=stacked.dtype, device=stacked.device)
    if edge_weights == "gradient":
        # Chefer et al.'s R <- R + Ā·R is R <- (I + Ā)·R: the identity, unweighted and not renormalised.
        transitions = identity + fused_attention
    else:
        transitions = residual_weight * identity + (1.0 - residual_weight) * fused_attention
        if residual_weight == 0.0:
            # Only then can a row be empty; a token that attends nowhere keeps itself.
            empty_rows = transitions.sum(dim=-1, keepdim=True) <= 0
            transitions = torch.where(empty_rows, identity.expand_as(transitions), transitions)
    if key_mask is not None:
        padded_rows = ~key_mask[None, :, :, None]
        transitions = torch.where(padded_rows, identity.expand_as(transitions), transitions)
    if edge_weights != "gradient":
        transitions = _normalize_rows(transitions)
    if start_layer > 0:
        # Layers before start_layer are skipped: identity matrices leave rollout and flow unchanged.
        transitions = transitions.clone()
        transitions[:start_layer] = identity
    return transitions
