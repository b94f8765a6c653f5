"""Documented exceptions raised by captum-attnflow.

Every exception subclasses a built-in (``ValueError``, ``TypeError`` or
``RuntimeError``) *and* :class:`AttnFlowError`, so callers can catch either the
broad built-in family or everything this library raises::

    try:
        scores = AttentionFlow(model).attribute(input_ids)
    except AttnFlowError as err:
        print("captum-attnflow refused:", err)

Messages always name the offending parameter and say what to do instead.
"""


class AttnFlowError(Exception):
    """Base class of every error raised on purpose by captum-attnflow."""


class InvalidParameterError(AttnFlowError, ValueError):
    """A keyword argument (``head_fusion``, ``layer``, ``token_index`` ...) is out of range."""


class InvalidInputError(AttnFlowError, ValueError):
    """Inputs, masks or attention tensors have the wrong shape or values (NaN, inf, all padding)."""


class InvalidInputTypeError(AttnFlowError, TypeError):
    """Inputs, masks or attention tensors have the wrong type or dtype."""


class AttentionCaptureError(AttnFlowError, RuntimeError):
    """Attention weights could not be obtained from the model (fused kernels, no attention layers)."""


class UnsupportedModelError(AttnFlowError, TypeError):
    """No capture adapter knows this model; the message lists what is supported."""


class ProblemTooLargeError(AttnFlowError, RuntimeError):
    """An exact flow problem would exceed the time/memory budget; pass ``allow_large=True`` to run it."""


__all__ = [
    "AttnFlowError",
    "InvalidParameterError",
    "InvalidInputError",
    "InvalidInputTypeError",
    "AttentionCaptureError",
    "UnsupportedModelError",
    "ProblemTooLargeError",
]
