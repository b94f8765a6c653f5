"""Pure tensor functions: fuse heads, add the residual, propagate (rollout or flow).

Nothing here touches a model or imports transformers; the inputs are attention
weights as Hugging Face returns them (L tensors of shape ``(B, H, S, S)``).
"""

from captum_attnflow.functional._cost import estimate_flow_cost
from captum_attnflow.functional._maxflow import FLOW_BACKENDS
from captum_attnflow.functional.causal import (
    normalize_by_receptive_field,
    receptive_field_transitions,
    uniform_causal_attention,
)
from captum_attnflow.functional.flow import attention_flow, batched_flow_from_transitions, flow_from_transitions
from captum_attnflow.functional.fusion import discard_lowest, fuse_heads, transition_matrices
from captum_attnflow.functional.rollout import attention_rollout, rollout_from_transitions, rollout_rows

__all__ = [
    "FLOW_BACKENDS",
    "attention_flow",
    "attention_rollout",
    "batched_flow_from_transitions",
    "discard_lowest",
    "estimate_flow_cost",
    "flow_from_transitions",
    "fuse_heads",
    "normalize_by_receptive_field",
    "receptive_field_transitions",
    "rollout_from_transitions",
    "rollout_rows",
    "transition_matrices",
    "uniform_causal_attention",
]
