"""Attention rollout (Abnar & Zuidema, 2020, Sec. 3, Eq. 1)."""

from typing import Optional

import torch

from captum_attnflow._validation import check_causal_transitions, check_flag
from captum_attnflow.functional.causal import normalize_by_receptive_field, receptive_field_transitions
from captum_attnflow.functional.fusion import transition_matrices


def rollout_from_transitions(transitions: torch.Tensor) -> torch.Tensor:
    """Chain ``(L, B, S, S)`` matrices ``Â_l`` into ``R_1 = Â_1``, ``R_l = Â_l · R_{l−1}``."""
    rollout_matrices = torch.empty_like(transitions)
    running = transitions[0]
    rollout_matrices[0] = running
    for layer in range(1, transitions.shape[0]):
        running = torch.matmul(transitions[layer], running)
        rollout_matrices[layer] = running
    return rollout_matrices


def rollout_rows(transitions: torch.Tensor, row_weights: torch.Tensor, layers) -> torch.Tensor:
    """Weighted rows of the rollout matrices without forming them: ``(len(layers), B, S)``.

    ``row_weights`` ``(B, S)`` says which rows to combine (a one-hot row for one token, uniform
    weights over real tokens for their mean). Since ``v · R_l = v · Â_l · … · Â_1`` is linear
    in ``v``, the chain is evaluated right to left as vector–matrix products: ``O(l·S²)`` per
    layer instead of the ``O(l·S³)`` of the full matrices.
    """
    weights = row_weights.to(transitions.dtype)
    rows = []
    for layer in layers:
        running = weights
        for step in range(layer, -1, -1):
            running = torch.bmm(running[:, None, :], transitions[step])[:, 0]
        rows.append(running)
    return torch.stack(rows)


def attention_rollout(attentions, *, head_fusion: str = "mean", residual_weight: float = 0.5,
                      discard_ratio: float = 0.0,
                      attention_mask: Optional[torch.Tensor] = None,
                      causal_normalization: bool = False) -> torch.Tensor:
    """Rollout matrix after every layer, shape ``(L, B, S, S)``.

    Row ``i`` of ``result[l, b]`` says how token ``i`` after layer ``l + 1`` draws on the
    input tokens; every row sums to 1.

    Args:
        attentions: L tensors ``(B, H, S, S)`` (Hugging Face ``outputs.attentions``) or one
            ``(L, B, H, S, S)`` tensor.
        head_fusion: ``"mean"`` | ``"max"`` | ``"min"`` over heads.
        residual_weight: ``w`` in ``Â = w·I + (1−w)·A`` (rows renormalised); paper: 0.5.
        discard_ratio: fraction of the smallest fused weights per row zeroed first.
        attention_mask: optional ``(B, S)`` 0/1 padding mask; see
            :func:`~captum_attnflow.functional.transition_matrices`.
        causal_normalization: for causal (decoder) attention, divide every entry by the
            rollout of uniform causal attention (the receptive-field mass) and rescale rows
            to sum to 1; see :mod:`captum_attnflow.functional.causal`.

    Example:
        >>> import torch
        >>> from captum_attnflow.functional import attention_rollout
        >>> attentions = [torch.softmax(torch.randn(1, 2, 5, 5), -1) for _ in range(3)]
        >>> attention_rollout(attentions).shape
        torch.Size([3, 1, 5, 5])
    """
    check_flag("causal_normalization", causal_normalization)
    transitions = transition_matrices(attentions, head_fusion=head_fusion,
                                      residual_weight=residual_weight,
                                      discard_ratio=discard_ratio, attention_mask=attention_mask)
    rollout = rollout_from_transitions(transitions)
    if not causal_normalization:
        return rollout
    check_causal_transitions(transitions)
    num_layers, batch_size, seq_len, _ = transitions.shape
    baseline = rollout_from_transitions(receptive_field_transitions(
        num_layers, batch_size, seq_len, residual_weight=residual_weight, attention_mask=attention_mask,
        dtype=transitions.dtype, device=transitions.device))
    return normalize_by_receptive_field(rollout, baseline)
