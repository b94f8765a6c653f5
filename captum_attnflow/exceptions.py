"""Documented exceptions raised by captum-attnflow.

Every exception subclasses a built-in (``ValueError``, ``TypeError`` or
``RuntimeError``) *and* :class:`AttnFlowError`, so callers can catch either the
broad built-in family or everything this library raises::

    try:
        scores = AttentionFlow(model).attribute(input_ids)
    except AttnFlowError as err:
        print("captum-attnflow refused:", err)

Messages always name the offending parameter and say what to do instead.

=========================  ============  ==================================================
Exception                  Built-in      Raised when
=========================  ============  ==================================================
``InvalidParameterError``  ValueError    an option is out of range or of the wrong kind:
                                         ``token_index``, ``layer``,
                                         ``head_fusion``, ``residual_weight`` (not in [0, 1]),
                                         ``discard_ratio`` (not in [0, 1)), ``backend``,
                                         boolean flags, ``causal_normalization`` on
                                         bidirectional attention
``InvalidInputError``      ValueError    ``inputs``, ``attention_mask`` or ``attentions``
                                         have the wrong shape or rank, an empty dimension,
                                         NaN/inf, negative weights, token ids outside the
                                         vocabulary, or an example that is all padding
``InvalidInputTypeError``  TypeError     ``inputs``, ``attention_mask`` or ``attentions``
                                         have the wrong type or dtype (float token ids,
                                         integer pixels, numpy arrays, ...)
``AttentionCaptureError``  RuntimeError  the model's attention weights cannot be obtained:
                                         a fused/flash kernel that cannot be switched to
                                         eager, no attention layers found or run,
                                         inconsistent layer shapes
``UnsupportedModelError``  TypeError     no capture adapter knows the model (or no model
                                         was given); the message lists what is supported
``ProblemTooLargeError``   RuntimeError  exact attention flow would exceed the time or
                                         memory budget; the message gives the estimate;
                                         pass ``allow_large=True`` to run it anyway
=========================  ============  ==================================================

Errors raised by the model itself (for example a sequence longer than its position
table) propagate unchanged; the model is restored either way.
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
