"""One place for argument and input checks shared by every public entry point.

Each check raises one of the documented exceptions of
:mod:`captum_attnflow.exceptions` with a message that names the parameter and
says what to do.  Nothing here imports transformers.

Groups: options (``head_fusion``, fractions, flags, ``layer``, positions, ``token_index``),
model inputs per family (token ids, sequence inputs, pixel values), masks, attention
tensors. (The cost budget of exact flow lives with the engine, in ``functional/_cost.py``.)
"""

import math
import warnings
from numbers import Integral, Real
from typing import Any, Optional, Sequence

import torch

from captum_attnflow.exceptions import (
    InvalidInputError,
    InvalidInputTypeError,
    InvalidParameterError,
)

HEAD_FUSIONS = ("mean", "max", "min")


def check_head_fusion(head_fusion: str) -> str:
    if head_fusion not in HEAD_FUSIONS:
        raise InvalidParameterError(
            f"head_fusion={head_fusion!r} is not supported; use one of {HEAD_FUSIONS}."
        )
    return head_fusion


def check_fraction(name: str, value, *, upper_open: bool = False) -> float:
    """``value`` must be a real number in [0, 1] (or [0, 1) with ``upper_open``).

    Example:
        >>> check_fraction("residual_weight", 0.5)
        0.5
    """
    interval = "[0, 1)" if upper_open else "[0, 1]"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidParameterError(
            f"{name} must be a float, got {type(value).__name__}; pass a value in {interval}.")
    value = float(value)
    upper_ok = value < 1.0 if upper_open else value <= 1.0
    if not (0.0 <= value and upper_ok):  # NaN fails both comparisons
        raise InvalidParameterError(f"{name}={value} is outside {interval}; pass a value in {interval}.")
    return value


def _check_index(value, size: int, name: str, expected: str, context: str) -> int:
    """A Python-style index into ``size`` items (negative counts from the end)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidParameterError(f"{name} must be {expected}, got {type(value).__name__}.")
    index = int(value)
    if not -size <= index < size:
        raise InvalidParameterError(
            f"{name}={value} is out of range for {context}; use an index in [{-size}, {size - 1}].")
    return index % size


def check_layer(layer, num_layers: int, name: str = "layer") -> int:
    """Normalize a Python-style layer index (0 = after the first layer, -1 = last)."""
    return _check_index(layer, num_layers, name,
                        f"an int indexing the {num_layers} layers like a Python list (-1 = last)",
                        f"a model with {num_layers} layers")


def check_position(position, seq_len: int, name: str) -> int:
    return _check_index(position, seq_len, name, f"an int position in [{-seq_len}, {seq_len - 1}]",
                        f"sequences of length {seq_len}")


def check_attentions(attentions, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Stack Hugging Face style attentions into one ``(L, B, H, S, S)`` tensor and check it.

    With an ``attention_mask``, rows of padded queries are zeroed first: a query that sees only
    padding gets NaN from a softmax, and its row is never used.
    """
    if isinstance(attentions, torch.Tensor):
        stacked = attentions
    elif isinstance(attentions, (list, tuple)):
        if len(attentions) == 0:
            raise InvalidInputError(
                "attentions is empty: the model returned no attention weights. If it runs SDPA "
                "or flash attention, capture through AttentionRollout/AttentionFlow, which "
                "switch to eager attention for the call."
            )
        if not all(isinstance(a, torch.Tensor) for a in attentions):
            raise InvalidInputTypeError("attentions must be a sequence of torch.Tensor.")
        shapes = {tuple(a.shape) for a in attentions}
        if len(shapes) != 1:
            raise InvalidInputError(f"all layers of attentions must share one shape, got {sorted(shapes)}.")
        stacked = torch.stack(list(attentions))
    else:
        raise InvalidInputTypeError(
            "attentions must be a sequence of (B, H, S, S) tensors or one (L, B, H, S, S) tensor, "
            f"got {type(attentions).__name__}."
        )
    if stacked.ndim != 5 or stacked.shape[-1] != stacked.shape[-2]:
        raise InvalidInputError(
            "attentions must have shape (L, B, H, S, S) (or be L tensors of shape (B, H, S, S)), "
            f"got {tuple(stacked.shape)}."
        )
    if not stacked.is_floating_point():
        raise InvalidInputTypeError(
            f"attentions must be floating point, got dtype {stacked.dtype}; pass post-softmax probabilities.")
    if min(stacked.shape) == 0:
        raise InvalidInputError(f"attentions has an empty dimension: shape {tuple(stacked.shape)}.")
    valid = check_attention_mask(attention_mask, stacked.shape[1], stacked.shape[-1])
    if valid is not None and not bool(valid.all()):
        stacked = stacked.masked_fill(~valid.to(stacked.device)[None, :, None, :, None], 0.0)
    check_attention_values(stacked, "attentions")
    return stacked


#: A softmax row sums to 1; a row further off than this is reported (and renormalized).
ROW_SUM_TOLERANCE = 1e-3
#: Post-softmax weights are at most 1; rounding may overshoot by this much.
ABOVE_ONE_TOLERANCE = 1e-4


def check_attention_values(weights: torch.Tensor, where: str, *, allow_above_one: bool = False,
                           check_row_sums: bool = True) -> None:
    """Attention weights must be finite probabilities; rows far from summing to 1 get a warning.

    ``weights`` is ``(..., S, S)`` per head. Rows of padded queries must be zeroed before (a
    query that sees only padding gets NaN from a softmax). ``allow_above_one`` admits weights
    above 1 (dropout in training mode scales them by ``1/(1-p)``); ``check_row_sums=False``
    skips the sum check (max/min-fused or already renormalized weights).

    Example:
        >>> check_attention_values(torch.tensor([[0.5, 0.5], [2.0, -1.0]]), "layer 1")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        captum_attnflow.exceptions.InvalidInputError: layer 1: attention weights must be non-negative, ...
    """
    detached = weights.detach()
    # One pass: NaN propagates to min and max.
    lowest, highest = (float(v) for v in torch.aminmax(detached))
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise InvalidInputError(
            f"{where}: attention weights contain NaN or inf; check the model's inputs and numerical precision "
            "(run it in float32).")
    if lowest < 0:
        raise InvalidInputError(
            f"{where}: attention weights must be non-negative, got a minimum of {lowest:.3g}; pass post-softmax "
            "probabilities.")
    if highest > 1 + ABOVE_ONE_TOLERANCE and not allow_above_one:
        raise InvalidInputError(
            f"{where}: attention weights must be probabilities (at most 1), got a maximum of {highest:.3g}; "
            "pass post-softmax weights, not logits or scores.")
    if check_row_sums:
        warn_if_rows_do_not_sum_to_one(detached.sum(dim=-1), where)


def warn_if_rows_do_not_sum_to_one(row_sums: torch.Tensor, where: str) -> None:
    """Warn when attention rows (other than all-zero padded rows) do not sum to 1."""
    real_rows = row_sums[row_sums > 0]
    if real_rows.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(real_rows))
    if low < 1 - ROW_SUM_TOLERANCE or high > 1 + ROW_SUM_TOLERANCE:
        warnings.warn(
            f"{where}: attention rows sum to between {low:.3g} and {high:.3g}, not 1; they are renormalized "
            "to 1 after the residual is added, which can change the ranking a lot. Pass post-softmax "
            "weights over all keys (padded keys included).", UserWarning, stacklevel=4)


#: Additive masks: entries at or below this are masked (a softmax gives them ~e^-10000).
ADDITIVE_MASKED_AT = -1e4


#: How a padding mask is read (see :func:`padding_mask_to_valid`).
MASK_CONVENTIONS = ("real-or-additive", "hugging-face", "key-padding")


def padding_mask_to_valid(mask: torch.Tensor, *, convention: str = "real-or-additive",
                          name: str = "attention_mask") -> torch.Tensor:
    """Read a ``(B, S)`` padding mask as a bool mask of real tokens.

    Conventions:

    * ``"real-or-additive"`` (the functional API, ``attention_mask=`` of the classes): bool or
      0/1 numbers with True/1 = real token, or an additive float mask holding only 0 (attend)
      and values ``<= -1e4`` or ``-inf`` (masked).
    * ``"hugging-face"`` (what a Hugging Face model received): bool or 0/1 only, as the model
      itself reads it; an additive mask would be misread by the model and is refused.
    * ``"key-padding"`` (torch's ``key_padding_mask``): bool with True = padding, or an additive
      float mask (0 / ``<= -1e4`` / ``-inf``), as ``nn.MultiheadAttention`` reads it.

    Anything else (soft biases, 0.5 …) is refused: it is not a padding mask, and guessing
    would give a silently wrong attribution.

    Example:
        >>> padding_mask_to_valid(torch.tensor([[0.0, 0.0, float("-inf")]])).tolist()
        [[True, True, False]]
        >>> padding_mask_to_valid(torch.tensor([[1, 1, 0]])).tolist()
        [[True, True, False]]
        >>> padding_mask_to_valid(torch.tensor([[False, True]]), convention="key-padding").tolist()
        [[True, False]]
    """
    if convention not in MASK_CONVENTIONS:
        raise InvalidParameterError(f"convention={convention!r}; use one of {MASK_CONVENTIONS}.")
    if mask.dtype == torch.bool:
        return ~mask if convention == "key-padding" else mask
    if mask.is_complex():
        raise InvalidInputTypeError(f"{name} must be bool, 0/1 or an additive float mask, got dtype {mask.dtype}.")
    values = mask.detach()
    additive = mask.is_floating_point() and bool(((values == 0) | (values <= ADDITIVE_MASKED_AT)).all()) \
        and bool((values < 0).any())
    zero_one = bool(((values == 0) | (values == 1)).all())
    if convention == "key-padding" and mask.is_floating_point() and (additive or bool((values == 0).all())):
        return values > ADDITIVE_MASKED_AT  # torch adds a float key_padding_mask to the scores
    if convention != "key-padding" and zero_one:
        return values == 1
    if convention == "real-or-additive" and additive:
        return values == 0
    if convention == "hugging-face" and additive:
        raise InvalidInputError(
            f"{name}: the Hugging Face model received an additive mask (0 and large negative values), but it "
            "reads attention_mask as 0/1 (1 = real token) and so attended to the wrong tokens. Pass "
            "attention_mask=(additive_mask == 0).long() to the model.")
    expected = {"real-or-additive": "bool, 0/1 (1 = real token) or additive (0 = attend, <= -1e4 or -inf = masked)",
                "hugging-face": "bool or 0/1 (1 = real token)",
                "key-padding": "bool (True = padding) or additive float (0 = attend, <= -1e4 or -inf = padding)"}
    sample = sorted({float(v) for v in values.flatten()[:1000].tolist()})[:6]
    raise InvalidInputError(
        f"{name} must be a padding mask, {expected[convention]}; got values such as {sample}. Soft biases "
        "are not padding masks.")


def check_attention_mask(attention_mask, batch_size: int, seq_len: int, *,
                         convention: str = "real-or-additive", name: str = "attention_mask") -> Optional[torch.Tensor]:
    """Return a boolean ``(B, S)`` mask (True = real token) or None; see :func:`padding_mask_to_valid`."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise InvalidInputTypeError(
            f"{name} must be a torch.Tensor of shape (B, S), got {type(attention_mask).__name__}."
        )
    if tuple(attention_mask.shape) != (batch_size, seq_len):
        raise InvalidInputError(
            f"{name} has shape {tuple(attention_mask.shape)} but the inputs have "
            f"(batch, seq_len) = ({batch_size}, {seq_len}); pass one entry per token."
        )
    mask = padding_mask_to_valid(attention_mask, convention=convention, name=name)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InvalidInputError(
            f"{name} marks every token of example(s) {empty} as padding; "
            "each example needs at least one real token."
        )
    return mask


def check_key_padding_mask(key_padding_mask: torch.Tensor, batch_size: int, seq_len: int) -> None:
    """A padding mask reaching ``nn.MultiheadAttention`` must be ``(B, S)`` like its keys.

    Checked as the attention module is called, since for plain PyTorch models the mask only
    becomes known there; torch would otherwise fail with an assertion inside the model.
    (An all-padding example is refused once the mask is read, by :func:`check_attention_mask`.)
    """
    if tuple(key_padding_mask.shape) != (batch_size, seq_len):
        raise InvalidInputError(
            f"attention_mask: the key_padding_mask reaching nn.MultiheadAttention has shape "
            f"{tuple(key_padding_mask.shape)} but the keys have (batch, seq_len) = ({batch_size}, {seq_len}); "
            "pass one entry per token (e.g. src_key_padding_mask=attention_mask == 0).")


# --- Model inputs, per family ------------------------------------------------------------

#: What an embedding layer indexes with.
TOKEN_ID_DTYPES = (torch.int64, torch.int32)


def check_token_ids(inputs: Any) -> torch.Tensor:
    """``inputs`` must be integer token ids of shape ``(B, S)`` (Hugging Face text models)."""
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputTypeError(
            f"inputs must be a torch.Tensor, got {type(inputs).__name__}; pass token ids (B, S) "
            "and the attention mask in additional_forward_args=(attention_mask,).")
    if inputs.dtype not in TOKEN_ID_DTYPES:
        raise InvalidInputTypeError(
            f"inputs must be integer token ids (int64 or int32), got dtype {inputs.dtype}; this model's adapter "
            "expects input_ids of shape (B, S)" + (" (convert with inputs.long())." if not inputs.is_floating_point()
                                                   and inputs.dtype != torch.bool else "."))
    if inputs.ndim != 2:
        raise InvalidInputError(
            f"inputs (token ids) must have shape (B, S), got {tuple(inputs.shape)}; add a batch "
            "dimension with inputs[None] for a single sequence.")
    return inputs


def check_sequence_inputs(inputs: Any) -> torch.Tensor:
    """Hand-built sequence models: token ids ``(B, S)`` or embeddings ``(B, S, D)`` / ``(S, B, D)``."""
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputTypeError(
            f"inputs must be a torch.Tensor (token ids (B, S) or embeddings), got {type(inputs).__name__}.")
    if inputs.dtype == torch.bool or inputs.is_complex():
        # No attention model reads booleans or complex numbers as tokens or embeddings.
        raise InvalidInputTypeError(
            f"inputs must be integer token ids or real-valued embeddings, got dtype {inputs.dtype}.")
    if inputs.ndim not in (2, 3):
        raise InvalidInputError(
            f"inputs must be token ids (B, S) or embeddings (B, S, D) / (S, B, D), got {tuple(inputs.shape)}.")
    if inputs.ndim == 2 and inputs.dtype not in TOKEN_ID_DTYPES:
        raise InvalidInputTypeError(
            f"inputs of shape {tuple(inputs.shape)} are read as token ids and must be int64 or int32, got dtype "
            f"{inputs.dtype}; pass embeddings as (B, S, D)" + ("." if inputs.is_floating_point() else
                                                             ", or convert ids with inputs.long()."))
    if inputs.ndim == 3 and not inputs.is_floating_point():
        raise InvalidInputTypeError(
            f"inputs of shape {tuple(inputs.shape)} are read as embeddings and must be floating point, got "
            f"dtype {inputs.dtype}; pass token ids as (B, S).")
    return inputs


def check_pixel_values(inputs: Any) -> torch.Tensor:
    """``inputs`` must be floating-point pixel values of shape ``(B, C, H, W)`` (vision models)."""
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputTypeError(
            f"inputs must be a torch.Tensor of pixel values (B, C, H, W), got {type(inputs).__name__}.")
    if not inputs.is_floating_point():
        raise InvalidInputTypeError(
            f"inputs of a vision model must be float pixel values, got dtype {inputs.dtype}; "
            "preprocess images with the model's image processor.")
    if inputs.ndim != 4:
        raise InvalidInputError(
            f"inputs (pixel values) must have shape (B, C, H, W), got {tuple(inputs.shape)}; add a batch "
            "dimension with inputs[None] for a single image.")
    return inputs


def check_flag(name: str, value) -> bool:
    """Boolean options must be real bools: ``normalize="no"`` would otherwise read as True."""
    if not isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be True or False, got {value!r}.")
    return value


def check_model_inputs(inputs: torch.Tensor, vocabulary_size: Optional[int] = None) -> torch.Tensor:
    """Checks every adapter needs on top of its own shape check, run before the forward pass.

    Empty dimensions, NaN/inf in float inputs, and token ids outside the model's vocabulary
    would otherwise surface as raw errors (or silent NaN) deep inside the model.
    """
    if inputs.numel() == 0:
        raise InvalidInputError(
            f"inputs has an empty dimension: shape {tuple(inputs.shape)}; pass at least one example "
            "of at least one token.")
    if inputs.is_floating_point():
        if not torch.isfinite(inputs).all():
            raise InvalidInputError("inputs contain NaN or inf; pass finite embeddings or pixel values.")
        return inputs
    if inputs.dtype == torch.bool or inputs.is_complex():
        return inputs  # the adapter's own check decides; nothing to range-check
    low, high = int(inputs.min()), int(inputs.max())
    if low < 0 or (vocabulary_size is not None and high >= vocabulary_size):
        bound = "" if vocabulary_size is None else f" and below the vocabulary size {vocabulary_size}"
        raise InvalidInputError(
            f"inputs holds token ids in [{low}, {high}]; token ids must be non-negative{bound}. "
            "Tokenize with the model's own tokenizer.")
    return inputs


def check_choice(name: str, value, choices: Sequence[str], hint: str = "") -> str:
    """``value`` must be one of ``choices`` (strings).

    Example:
        >>> check_choice("backend", "auto", ("auto", "networkx"))
        'auto'
    """
    if not isinstance(value, str) or value not in choices:
        raise InvalidParameterError(f"{name}={value!r} is not available; use one of {tuple(choices)} {hint}".rstrip()
                                    + ".")
    return value


def check_causal_transitions(transitions: torch.Tensor, tolerance: float = 1e-6) -> None:
    """``causal_normalization`` divides by what each token can see under a causal mask.

    Attention to later positions (a bidirectional encoder) breaks that assumption and would
    give all-zero rows, so it is refused. ``transitions`` are the ``(L, B, S, S)`` matrices,
    padding already removed.
    """
    future = torch.ones(transitions.shape[-2:], dtype=torch.bool, device=transitions.device).triu(1)
    leaks = (transitions.masked_fill(~future, 0.0) > tolerance).nonzero()
    if len(leaks):
        layer, example, row, column = leaks[0].tolist()
        raise InvalidParameterError(
            f"causal_normalization=True needs causal (decoder) attention, but in layer {layer} token "
            f"{row} of example {example} attends to the later position {column}; use "
            "causal_normalization=False for bidirectional (encoder) models.")
