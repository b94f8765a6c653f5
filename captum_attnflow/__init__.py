"""captum-attnflow: attention rollout and attention flow as Captum attribution methods.

Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers", ACL.
https://arxiv.org/abs/2005.00928
"""

from captum_attnflow import functional
from captum_attnflow.attr import (
    AttentionFlow,
    AttentionRollout,
    LLMAttentionAttribution,
    RawAttention,
    Seq2SeqAttentionAttribution,
)
from captum_attnflow.capture import capture_attention
from captum_attnflow.capture.seq2seq import capture_encoder_decoder_attention
from captum_attnflow.exceptions import (
    AttentionCaptureError,
    AttnFlowError,
    InvalidInputError,
    InvalidInputTypeError,
    InvalidParameterError,
    ProblemTooLargeError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionFlow",
    "AttentionRollout",
    "LLMAttentionAttribution",
    "RawAttention",
    "Seq2SeqAttentionAttribution",
    "capture_attention",
    "capture_encoder_decoder_attention",
    "functional",
    "AttnFlowError",
    "AttentionCaptureError",
    "InvalidInputError",
    "InvalidInputTypeError",
    "InvalidParameterError",
    "ProblemTooLargeError",
    "UnsupportedModelError",
]
