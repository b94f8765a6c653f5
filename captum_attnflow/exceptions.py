"""Documented exceptions raised by captum-attnflow.

Every exception here subclasses a built-in (``ValueError``, ``TypeError`` or
``RuntimeError``) *and* :class:`AttnFlowError`, so callers can catch either the
broad built-in family or everything this library raises on purpose:

    try:
        scores = AttentionFlow(model).attribute(input_ids)
    except AttnFlowError as err:
        print("captum-attnflow refused:", err)

Messages always name the offending parameter and say what to do instead. This is the one
table of which exception is raised when (the docs site renders it; ``tests/test_docs.py``
checks its first two columns against the classes below):

| Exception | Built-in | Raised when |
|---|---|---|
| `InvalidParameterError` | `ValueError` | an option is out of range or the wrong kind: `token_index` (out of range, on padding, wrong length), `layer` (also `layer` together with `return_all_layers=True`), unknown `head_fusion` (`None` included) or `backend`, `residual_weight` not in [0, 1], `discard_ratio` not in [0, 1), a non-bool flag, `causal_normalization=True` on bidirectional attention |
| `InvalidInputError` | `ValueError` | `inputs`, `attention_mask` or `attentions` with the wrong shape or rank, an empty dimension, NaN/inf (also in attention produced by the model, checked head by head before fusion), negative weights or weights above 1, token ids outside the vocabulary, a mask that is not a padding mask (soft biases, 0.5 ...) or does not match the inputs, an example that is all padding, an extra argument that would land in the wrong parameter of a Hugging Face model (`past_key_values` ...) |
| `InvalidInputTypeError` | `TypeError` | the wrong type or dtype: float/bool/int8 token ids (int64 or int32 only), integer pixels, 3-D integer "embeddings", numpy arrays or lists instead of tensors |
| `AttentionCaptureError` | `RuntimeError` | the attention weights cannot be obtained: a fused/flash kernel that cannot be switched to eager, no attention layers found or run, layers of different shapes, a forward function that runs the attention stack twice |
| `UnsupportedModelError` | `TypeError` | no adapter knows the model, or a plain function was given without `model=`; the message lists the supported families and the `attention_modules=` / `attention_fn=` routes |
| `ProblemTooLargeError` | `RuntimeError` | exact attention flow would go over the time or memory budget; the message gives the estimate; pass `allow_large=True` to run it anyway |

Errors raised by the model itself (for example a sequence longer than its position
table) propagate unchanged; the model is restored either way.
"""  # noqa: E501 (a Markdown table, one row per line, rendered by the docs site)


class AttnFlowError(Exception):
    """Base class of the errors captum-attnflow raises on purpose (the docs' "Errors and guarantees" lists the rest)."""


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
