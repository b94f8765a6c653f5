"""Pure tensor functions: fuse heads, add the residual, propagate (rollout or flow).

Nothing here touches a model or imports transformers; the inputs are attention
weights as Hugging Face returns them (L tensors of shape ``(B, H, S, S)``) or the
:class:`AttentionWeights` that :func:`captum_attnflow.capture_attention` returns. The
Captum classes of :mod:`captum_attnflow.attr` call :func:`attention_rollout`,
:func:`attention_flow` and :func:`raw_attention` on the weights they capture, so both
give identical results for the same options.
"""

from captum_attnflow.functional._cost import estimate_flow_cost
from captum_attnflow.functional._maxflow import FLOW_BACKENDS
from captum_attnflow.functional.causal import (
    normalize_by_receptive_field,
    receptive_field_transitions,
    uniform_causal_attention,
)
from captum_attnflow.functional.encoder_decoder import (
    EncoderDecoderAttentions,
    chefer_relevance,
    encoder_decoder_flow,
    joint_transitions,
)
from captum_attnflow.functional.flow import (
    attention_flow,
    batched_flow_from_transitions,
    flow_attribution,
    flow_from_transitions,
)
from captum_attnflow.functional.fusion import (
    DISCARD_MODES,
    EDGE_WEIGHTS,
    AttentionWeights,
    discard_lowest,
    fuse_heads,
    gradient_weighted_attention,
    transition_matrices,
)
from captum_attnflow.functional.graph import attention_graph
from captum_attnflow.functional.positions import TOKEN_INDEX_MODES, check_token_index, explained_positions
from captum_attnflow.functional.raw import raw_attention
from captum_attnflow.functional.rollout import (
    attention_rollout,
    rollout_attribution,
    rollout_from_transitions,
    rollout_rows,
)

__all__ = [
    "DISCARD_MODES",
    "EDGE_WEIGHTS",
    "FLOW_BACKENDS",
    "TOKEN_INDEX_MODES",
    "AttentionWeights",
    "EncoderDecoderAttentions",
    "attention_flow",
    "attention_graph",
    "attention_rollout",
    "batched_flow_from_transitions",
    "check_token_index",
    "chefer_relevance",
    "discard_lowest",
    "encoder_decoder_flow",
    "estimate_flow_cost",
    "explained_positions",
    "flow_attribution",
    "flow_from_transitions",
    "fuse_heads",
    "gradient_weighted_attention",
    "joint_transitions",
    "normalize_by_receptive_field",
    "raw_attention",
    "receptive_field_transitions",
    "rollout_attribution",
    "rollout_from_transitions",
    "rollout_rows",
    "transition_matrices",
    "uniform_causal_attention",
]
