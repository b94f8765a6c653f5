"""What rollout and flow share before they propagate: the fused graphs, the explained
positions and layers, and the causal baseline, prepared once for both from the same options."""

from dataclasses import dataclass
from typing import List, Optional

import torch

from captum_attnflow._validation import check_causal_transitions
from captum_attnflow.functional.causal import receptive_field_transitions
from captum_attnflow.functional.fusion import checked_attentions, fused_transitions
from captum_attnflow.functional.positions import (
    ExplainedPositions,
    TokenIndex,
    explained_layers,
    explained_positions,
    real_tokens,
)


@dataclass(frozen=True)
class PropagationProblem:
    """The inputs of :func:`~.rollout.rollout_attribution` and :func:`~.flow.flow_attribution`."""

    transitions: torch.Tensor  # (L, B, S, S): Â_l, heads fused and the residual added
    explained: ExplainedPositions
    layers: List[int]  # 0-based layers whose outputs are explained
    valid: torch.Tensor  # (B, S) bool: real (non-padding) tokens
    causal_baseline: Optional[torch.Tensor]  # (L, B, S, S) uniform causal graphs, or None
    dtype: torch.dtype  # of the attention weights: the dtype of the result
    device: torch.device


def propagation_problem(attentions, *, token_index: TokenIndex, layer: Optional[int], return_all_layers: bool,
                        head_fusion: str, residual_weight: float, discard_ratio: float,
                        attention_mask: Optional[torch.Tensor], causal_normalization: bool,
                        baseline_dtype: Optional[torch.dtype] = None,
                        baseline_device: Optional[torch.device] = None) -> PropagationProblem:
    """Check and fuse ``attentions`` and resolve the options into a :class:`PropagationProblem`.

    ``baseline_dtype`` / ``baseline_device``: where the causal baseline is built (default: as
    the transitions; flow solves in float64 on the CPU, so it asks for that).
    """
    stacked, head_fusion, valid = checked_attentions(attentions, head_fusion, attention_mask)
    transitions = fused_transitions(stacked, head_fusion, residual_weight=residual_weight,
                                    discard_ratio=discard_ratio, valid=valid)
    num_layers, batch_size, seq_len, _ = transitions.shape
    layers = explained_layers(layer, return_all_layers, num_layers)
    valid = real_tokens(valid, batch_size, seq_len)
    explained = explained_positions(token_index, valid)
    baseline = None
    if causal_normalization:
        check_causal_transitions(transitions[: max(layers) + 1])
        baseline = receptive_field_transitions(
            num_layers, batch_size, seq_len, residual_weight=residual_weight,
            dtype=baseline_dtype or transitions.dtype, device=baseline_device or transitions.device,
            attention_mask=valid)
    return PropagationProblem(transitions, explained, layers, valid, baseline, stacked.dtype, stacked.device)
