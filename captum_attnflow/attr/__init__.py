"""Stage 4 of the pipeline: Captum attribution classes built on capture + propagate."""

from captum_attnflow.attr._base import AttentionAttributionBase
from captum_attnflow.attr.attention_flow import AttentionFlow
from captum_attnflow.attr.attention_rollout import AttentionRollout
from captum_attnflow.attr.llm_attention import LLMAttentionAttribution
from captum_attnflow.attr.raw_attention import RawAttention
from captum_attnflow.attr.seq2seq_attention import Seq2SeqAttentionAttribution, Seq2SeqAttributionResult

__all__ = ["AttentionAttributionBase", "AttentionFlow", "AttentionRollout", "LLMAttentionAttribution", "RawAttention",
           "Seq2SeqAttentionAttribution", "Seq2SeqAttributionResult"]
