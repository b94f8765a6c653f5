"""The one place that reads or writes private internals of ``transformers`` and Captum.

Each internal is wrapped in one small function named for what it does, so a release that
changes it breaks here and nowhere else; ``tests/test_compat.py`` is the canary that says
which function to update (setup.cfg keeps transformers below 6 for the same reason).

transformers (5.x):

* ``PreTrainedModel._can_record_outputs``: which modules produce each output (the attention
  modules to hook), see :func:`output_recorders`;
* ``PretrainedConfig._attn_implementation`` (a property over ``_attn_implementation_internal``):
  the attention kernel a model runs; SDPA and flash kernels return no weights, so capture
  switches to eager with :func:`set_attn_implementation` and writes the stored setting back
  with :func:`restore_attn_implementation`.

Captum (0.8+): ``captum.attr._core.llm_attr._convert_ids_to_pretty_tokens``, the readable
tokens Captum's LLM classes show, see :func:`pretty_tokens`.
"""

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
from torch import nn

from captum_attnflow.exceptions import AttentionCaptureError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def output_recorders(pretrained: nn.Module) -> Dict[str, Any]:
    """``{output name: recorder spec(s)}`` a Hugging Face model declares (``_can_record_outputs``).

    Empty for models of the older style (DeBERTa-v2), which return weights only when asked with
    ``output_attentions=True``.
    """
    return getattr(pretrained, "_can_record_outputs", None) or {}


def attn_implementation(config: Any) -> Optional[str]:
    """The attention implementation a config selects (``"eager"``, ``"sdpa"`` ...)."""
    try:
        return config._attn_implementation
    except AttributeError as error:
        raise AttentionCaptureError(
            f"{type(config).__name__} has no _attn_implementation: this transformers release changed how the "
            "attention implementation is stored, which captum-attnflow reads (captum_attnflow/_compat.py). "
            "Install a transformers version setup.cfg allows.") from error


def saved_attn_implementation(config: Any) -> Optional[str]:
    """The setting as stored on the config itself (``None``: transformers' default), to restore later."""
    return config.__dict__.get("_attn_implementation_internal")


def restore_attn_implementation(config: Any, saved: Optional[str]) -> None:
    """Write back a value from :func:`saved_attn_implementation` on this config only.

    The public setter (``config._attn_implementation = ...``) recurses into sub-configs, whose
    own saved values are written back one by one instead.
    """
    config._attn_implementation_internal = saved


def set_attn_implementation(pretrained: "PreTrainedModel", implementation: str) -> None:
    """Switch a model (and its sub-models) to ``implementation``; transformers checks it is available."""
    pretrained.set_attn_implementation(implementation)


def pretty_tokens(ids: torch.Tensor, tokenizer: Any) -> List[str]:
    """Readable target tokens, as Captum's LLM classes show them (no byte-level markers)."""
    try:
        from captum.attr._core.llm_attr import _convert_ids_to_pretty_tokens
    except ImportError:  # Captum 0.7, before the helper: the tokenizer's own tokens
        return list(tokenizer.convert_ids_to_tokens(ids.tolist()))
    return _convert_ids_to_pretty_tokens(ids, tokenizer)
