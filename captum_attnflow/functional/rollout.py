"""Attention rollout (Abnar & Zuidema, 2020, Sec. 3, Eq. 1), and the same chain of products
over gradient-weighted edges (Chefer et al., 2021; vit-explain's grad rollout)."""

from typing import List, Optional

import torch

from captum_attnflow._validation import check_flag
from captum_attnflow.functional._problem import propagation_problem
from captum_attnflow.functional.causal import normalize_by_receptive_field
from captum_attnflow.functional.positions import (
    ExplainedPositions,
    TokenIndex,
    assemble,
)


def rollout_from_transitions(transitions: torch.Tensor) -> torch.Tensor:
    """Chain ``(L, B, S, S)`` matrices ``Â_l`` into ``R_1 = Â_1``, ``R_l = Â_l · R_{l−1}``.

    Example:
        >>> transitions = torch.eye(3).repeat(2, 1, 1, 1)       # two identity layers
        >>> torch.equal(rollout_from_transitions(transitions), transitions)
        True
    """
    rollout_matrices = torch.empty_like(transitions)
    running = transitions[0]
    rollout_matrices[0] = running
    for layer in range(1, transitions.shape[0]):
        running = torch.matmul(transitions[layer], running)
        rollout_matrices[layer] = running
    return rollout_matrices


def rollout_rows(transitions: torch.Tensor, row_weights: torch.Tensor, layers: List[int]) -> torch.Tensor:
    """Rows ``row_weights · R_l`` for each ``l`` in ``layers``: ``(len(layers), B, [P,] S)``.

    ``row_weights`` is ``(B, S)`` or ``(B, P, S)``: one-hot rows pick rows of the rollout
    matrix, averaged one-hots their mean. ``v · R_l = v · Â_l · … · Â_1`` is linear in ``v``, so few rows are
    chained right to left as vector–matrix products (``O(l·P·S²)``); when that is not cheaper
    than forming the matrices (``O(l·S³)``), the matrices are formed once and the rows read off.
    """
    if row_weights.ndim == 2:
        return rollout_rows(transitions, row_weights[:, None], layers)[:, :, 0]
    weights = row_weights.to(transitions.dtype)
    num_rows, seq_len = weights.shape[1], weights.shape[2]
    chained_cost = sum(layer + 1 for layer in layers) * num_rows
    if chained_cost >= (max(layers) + 1) * seq_len:
        rollout_matrices = rollout_from_transitions(transitions[: max(layers) + 1])
        return torch.stack([torch.matmul(weights, rollout_matrices[layer]) for layer in layers])
    rows = []
    for layer in layers:
        running = weights
        for step in range(layer, -1, -1):
            running = torch.matmul(running, transitions[step])
        rows.append(running)
    return torch.stack(rows)


def _one_hot_rows(explained: ExplainedPositions, seq_len: int, dtype, device) -> torch.Tensor:
    rows = torch.nn.functional.one_hot(explained.index, seq_len).to(dtype=dtype, device=device)
    return rows * explained.used.to(device)[..., None]


def rollout_attribution(transitions: torch.Tensor, explained: ExplainedPositions, layers: List[int], *,
                        causal_baseline: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rollout rows of the explained positions, assembled: ``(len(layers), B, ...)``.

    ``transitions`` are the checked ``(L, B, S, S)`` matrices ``Â_l``; ``causal_baseline`` the
    uninformative causal model's matrices when each row is divided by its receptive field.
    """
    seq_len = transitions.shape[-1]
    one_hot = _one_hot_rows(explained, seq_len, transitions.dtype, transitions.device)
    if explained.layout == "mean" and causal_baseline is None:
        # The mean of rows is the row of the mean weights: one chain instead of one per token.
        counts = explained.used.sum(dim=1).to(transitions.device, transitions.dtype)
        return rollout_rows(transitions, one_hot.sum(dim=1, keepdim=True) / counts[:, None, None], layers)[:, :, 0]
    rows = rollout_rows(transitions, one_hot, layers)
    if causal_baseline is not None:
        rows = normalize_by_receptive_field(rows, rollout_rows(causal_baseline, one_hot, layers))
    return assemble(rows, explained)


def attention_rollout(attentions, *, token_index: TokenIndex = "all", layer: Optional[int] = None,
                      return_all_layers: Optional[bool] = None, head_fusion: str = "mean",
                      residual_weight: float = 0.5, discard_ratio: float = 0.0,
                      attention_mask: Optional[torch.Tensor] = None,
                      causal_normalization: bool = False, edge_weights: str = "attention",
                      attention_grads=None, start_layer: int = 0, discard_mode: str = "row") -> torch.Tensor:
    """Attention rollout of the explained positions; by default every rollout matrix ``(L, B, S, S)``.

    Row ``i`` of ``result[l, b]`` says how token ``i`` after layer ``l + 1`` draws on the
    input tokens; every row of a real token sums to 1 and rows of padding are 0.

    With ``edge_weights="gradient"`` the result is Chefer et al.'s relevance (arXiv:2103.15679):
    ``R = I``, then ``R ← R + Ā_l·R`` for every layer ``l >= start_layer`` with
    ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]``; row ``i`` of ``R`` is returned as is, self entry included
    (``R[i, i]`` starts at 1 from the identity; Chefer's ViT code drops the [CLS] column with
    ``R[0, 1:]``, vision adapters here drop the special tokens likewise), and rows are not
    normalised (they sum to at least 1). With ``"grad_rollout"`` it is vit-explain's gradient
    rollout (rows sum to 1). Both need ``attention_grads``, the gradient of one scalar output
    per example with respect to every head's weights.

    Args:
        attentions: L tensors ``(B, H, S, S)`` (Hugging Face ``outputs.attentions``) or one
            ``(L, B, H, S, S)`` tensor of post-softmax weights.
        token_index: the explained positions, as in :mod:`captum_attnflow.functional.positions`
            (default ``"all"``: whole matrices).
        layer: explain the output of this layer (Python-list index over the L layers). Default:
            every layer when ``token_index="all"`` (the rollout matrices), else the last one.
        return_all_layers: return a leading axis over every layer; default True exactly when
            ``layer`` is None and ``token_index="all"``. Cannot be combined with ``layer``.
        head_fusion: ``"mean"`` | ``"max"`` | ``"min"`` over heads.
        residual_weight: ``w`` in ``Â = w·I + (1−w)·A`` (rows renormalized); paper: 0.5.
        discard_ratio: fraction of the smallest fused weights zeroed first (per row; per matrix with
            ``discard_mode="matrix"``).
        attention_mask: optional ``(B, S)`` padding mask (1/True = real token; additive masks
            with 0 and large negative values are read as such); see
            :func:`~captum_attnflow.functional.transition_matrices`.
        causal_normalization: for causal (decoder) attention, divide every row by the rollout of
            uniform causal attention (the receptive-field mass) and rescale it to sum to 1; see
            :mod:`captum_attnflow.functional.causal`. Only with ``edge_weights="attention"``.
        edge_weights: ``"attention"`` (default), ``"gradient"`` (Chefer et al.) or
            ``"grad_rollout"`` (vit-explain); see
            :func:`~captum_attnflow.functional.transition_matrices`.
        attention_grads: for the gradient weightings, ``∂y/∂A`` shaped like ``attentions``
            (L tensors ``(B, H, S, S)`` or one ``(L, B, H, S, S)``); taken from ``attentions``
            when they carry it (:func:`captum_attnflow.capture.capture_attention_gradients`).
        start_layer: skip the layers before it (Python-list index; Chefer et al.'s
            ``start_layer``): they count as identity matrices.
        discard_mode: ``"row"`` (default) or ``"matrix"``: ``discard_ratio`` of the smallest
            entries of the whole fused matrix, vit-explain's rule
            (see :func:`~captum_attnflow.functional.discard_lowest`).

    Returns:
        ``(L, B, S, S)`` by default; in general ``[L,] B`` followed by ``S`` (one position,
        ``"mean"``, ``"last"``), ``P, S`` (a ``(B, P)`` tensor) or ``S, S`` (``"all"``), in the
        attentions' dtype.

    Example:
        >>> import torch
        >>> from captum_attnflow.functional import attention_rollout
        >>> attentions = [torch.softmax(torch.randn(1, 2, 5, 5), -1) for _ in range(3)]
        >>> attention_rollout(attentions).shape
        torch.Size([3, 1, 5, 5])
        >>> attention_rollout(attentions, token_index=0).shape          # [CLS] after the last layer
        torch.Size([1, 5])
        >>> grads = [torch.randn(1, 2, 5, 5) for _ in range(3)]           # d(target)/d(attention)
        >>> relevance = attention_rollout(attentions, token_index=0, edge_weights="gradient", attention_grads=grads)
        >>> bool(relevance.sum() >= 1)
        True
    """
    check_flag("causal_normalization", causal_normalization)
    if return_all_layers is None:
        return_all_layers = layer is None and isinstance(token_index, str) and token_index == "all"
    problem = propagation_problem(attentions, token_index=token_index, layer=layer,
                                  return_all_layers=return_all_layers, head_fusion=head_fusion,
                                  residual_weight=residual_weight, discard_ratio=discard_ratio,
                                  attention_mask=attention_mask, causal_normalization=causal_normalization,
                                  edge_weights=edge_weights, attention_grads=attention_grads, start_layer=start_layer,
                                  discard_mode=discard_mode)
    scores = rollout_attribution(problem.transitions, problem.explained, problem.layers,
                                 causal_baseline=problem.causal_baseline)
    return (scores if return_all_layers else scores[0]).to(problem.dtype)
