"""Receptive-field normalization for causal (decoder) attention.

Abnar & Zuidema (2020, Sec. 6) leave causal models as future work: under a causal mask,
input ``j`` can only be read by positions ``i ≥ j``, so early tokens are reachable along
many more paths and rollout/flow credit them whatever the attention says. With
``causal_normalization=True`` each score is divided by the score the same method gives
``j`` on the *uninformative causal model*: every position attends uniformly to every real
position it can see (``A[i, k] = 1/|{k' ≤ i real}|``), with the same residual weight,
padding mask, explained position and layer. That baseline is ``j``'s receptive-field
mass (the weighted count of paths from the explained token down to ``j``); dividing by it
removes the positional advantage, so uniform causal attention gives flat scores. Each
row is then rescaled to keep its original sum (1 for rollout and normalized flow).
Positions the explained token cannot see (baseline 0) get 0.
"""

from typing import Optional

import torch

from captum_attnflow.functional.fusion import transition_matrices


def uniform_causal_attention(num_layers: int, batch_size: int, seq_len: int, *,
                             dtype: torch.dtype = torch.float32,
                             device: Optional[torch.device] = None) -> torch.Tensor:
    """``(L, B, 1, S, S)`` causal attention where row ``i`` is uniform over positions ``0..i``.

    Example:
        >>> uniform_causal_attention(1, 1, 3)[0, 0, 0]
        tensor([[1.0000, 0.0000, 0.0000],
                [0.5000, 0.5000, 0.0000],
                [0.3333, 0.3333, 0.3333]])
    """
    visible = torch.ones(seq_len, seq_len, dtype=dtype, device=device).tril()
    rows = visible / visible.sum(dim=-1, keepdim=True)
    return rows.expand(num_layers, batch_size, 1, seq_len, seq_len).contiguous()


def receptive_field_transitions(num_layers: int, batch_size: int, seq_len: int, *,
                                residual_weight: float = 0.5,
                                attention_mask: Optional[torch.Tensor] = None,
                                dtype: torch.dtype = torch.float32,
                                device: Optional[torch.device] = None) -> torch.Tensor:
    """``(L, B, S, S)`` matrices ``Â_l`` of the uninformative causal model (see module docstring).

    Each row is uniform over the *real* positions it can see, as a model's softmax over its
    masked keys would be; padded rows become identity rows in
    :func:`~captum_attnflow.functional.transition_matrices`.
    """
    visible = torch.ones(seq_len, seq_len, dtype=dtype, device=device).tril()
    visible = visible.expand(num_layers, batch_size, 1, seq_len, seq_len)
    if attention_mask is not None:
        visible = visible * attention_mask.to(device=device, dtype=dtype)[None, :, None, None, :]
    counts = visible.sum(dim=-1, keepdim=True)
    # Padding rows of left-padded inputs see no real token; they are replaced downstream.
    uniform = torch.where(counts > 0, visible / counts.clamp(min=1), visible)
    return transition_matrices(uniform, residual_weight=residual_weight, attention_mask=attention_mask)


def normalize_by_receptive_field(scores: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Divide ``scores`` by ``baseline`` elementwise; rescale each last-axis row to its old sum.

    Entries with ``baseline == 0`` (unreachable positions) become 0.

    Example:
        >>> normalize_by_receptive_field(torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.6, 0.3, 0.1]))
        tensor([0.3333, 0.3333, 0.3333])
    """
    reachable = baseline > 0
    ratio = torch.where(reachable, scores / torch.where(reachable, baseline, torch.ones_like(baseline)),
                        torch.zeros_like(scores))
    old_sum = scores.sum(dim=-1, keepdim=True)
    new_sum = ratio.sum(dim=-1, keepdim=True)
    scale = torch.where(new_sum > 0, old_sum / torch.where(new_sum > 0, new_sum, torch.ones_like(new_sum)),
                        torch.zeros_like(new_sum))
    return ratio * scale
