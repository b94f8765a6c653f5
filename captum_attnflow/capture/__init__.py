"""Stage 1 of the pipeline: capture attention weights from a model.

:func:`capture_attention` runs the model once with hooks on its attention modules;
adapters (one per model family, chosen by :func:`find_adapter`) know where those
modules are and how to make them return weights.
"""

from captum_attnflow.capture.base import (
    AttentionAdapter,
    CapturedAttention,
    capture_attention,
    find_adapter,
    register_adapter,
    registered_adapters,
    resolve_model,
)
from captum_attnflow.capture.huggingface import HuggingFaceAdapter, eager_attention

__all__ = [
    "AttentionAdapter",
    "CapturedAttention",
    "HuggingFaceAdapter",
    "capture_attention",
    "eager_attention",
    "find_adapter",
    "register_adapter",
    "registered_adapters",
    "resolve_model",
]
