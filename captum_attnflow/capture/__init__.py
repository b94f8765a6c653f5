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
from captum_attnflow.capture.custom import FunctionAttentionAdapter, ModuleAttentionAdapter, make_adapter
from captum_attnflow.capture.gradients import (
    CapturedAttentionGradients,
    capture_attention_gradients,
    capture_attention_gradients_per_target,
)
from captum_attnflow.capture.huggingface import HuggingFaceAdapter, eager_attention
from captum_attnflow.capture.torch_nn import TorchMultiheadAttentionAdapter
from captum_attnflow.capture.vision import HuggingFaceVisionAdapter, TimmVisionAdapter, patch_scores_to_pixels

__all__ = [
    "AttentionAdapter",
    "CapturedAttention",
    "CapturedAttentionGradients",
    "FunctionAttentionAdapter",
    "HuggingFaceAdapter",
    "HuggingFaceVisionAdapter",
    "ModuleAttentionAdapter",
    "TimmVisionAdapter",
    "TorchMultiheadAttentionAdapter",
    "capture_attention",
    "capture_attention_gradients",
    "capture_attention_gradients_per_target",
    "eager_attention",
    "find_adapter",
    "make_adapter",
    "patch_scores_to_pixels",
    "register_adapter",
    "registered_adapters",
    "resolve_model",
]
