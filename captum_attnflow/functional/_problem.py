"""What rollout and flow share before they propagate: the fused graphs, the explained
positions and layers, and the causal baseline, prepared once for both from the same options."""

from dataclasses import dataclass
from typing import List, Optional

import torch

from captum_attnflow._validation import check_causal_transitions
from captum_attnflow.functional.causal import receptive_field_transitions
from captum_attnflow.functional.fusion import check_edge_options, checked_attentions, fused_transitions, gradients_for
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
                        baseline_device: Optional[torch.device] = None, edge_weights: str = "attention",
                        attention_grads=None, start_layer: int = 0,
                        discard_mode: str = "row") -> PropagationProblem:
    """Check and fuse ``attentions`` and resolve the options into a :class:`PropagationProblem`.

    ``baseline_dtype`` / ``baseline_device``: where the causal baseline is built (default: as
    the transitions; flow solves in float64 on the CPU, so it asks for that). ``edge_weights``,
    ``attention_grads``, ``start_layer``, ``discard_mode``: see
    :func:`~captum_attnflow.functional.transition_matrices`.
    """
    check_edge_options(edge_weights, head_fusion=head_fusion, residual_weight=residual_weight,
                       discard_mode=discard_mode, causal_normalization=causal_normalization)
    stacked, head_fusion, valid = checked_attentions(attentions, head_fusion, attention_mask,
                                                     keep_heads=edge_weights != "attention")
    grads = gradients_for(edge_weights, attentions, attention_grads, stacked, valid)
    transitions = fused_transitions(stacked, head_fusion, residual_weight=residual_weight,
                                    discard_ratio=discard_ratio, valid=valid, edge_weights=edge_weights,
                                    attention_grads=grads, start_layer=start_layer, discard_mode=discard_mode)
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
