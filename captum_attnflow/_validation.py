"""One place for argument and input checks shared by every public entry point.

Each check raises one of the documented exceptions of
:mod:`captum_attnflow.exceptions` with a message that names the parameter and
says what to do.  Nothing here imports transformers.

Groups: options (``head_fusion``, fractions, flags, ``layer``, positions, ``token_index``),
model inputs per family (token ids, sequence inputs, pixel values), masks, attention
tensors. (The cost budget of exact flow lives with the engine, in ``functional/_cost.py``.)
"""

import math
from numbers import Integral, Real
from typing import Any, Optional, Sequence, Union

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
    if not -size <= value < size:
        raise InvalidParameterError(
            f"{name}={value} is out of range for {context}; use an index in [{-size}, {size - 1}].")
    return int(value) % size


def check_layer(layer, num_layers: int, name: str = "layer") -> int:
    """Normalise a Python-style layer index (0 = after the first layer, -1 = last)."""
    return _check_index(layer, num_layers, name,
                        f"an int indexing the {num_layers} layers like a Python list (-1 = last)",
                        f"a model with {num_layers} layers")


def check_position(position, seq_len: int, name: str) -> int:
    return _check_index(position, seq_len, name, f"an int position in [{-seq_len}, {seq_len - 1}]",
                        f"sequences of length {seq_len}")


def check_positions(positions: Union[int, Sequence[int]], seq_len: int, name: str):
    """Return ``(list_of_positions, was_scalar)``."""
    if isinstance(positions, torch.Tensor):
        if positions.ndim == 0:
            positions = positions.item()
        else:
            positions = positions.tolist()
    if isinstance(positions, Integral) and not isinstance(positions, bool):
        return [check_position(positions, seq_len, name)], True
    if isinstance(positions, (list, tuple)) and len(positions) > 0:
        return [check_position(p, seq_len, name) for p in positions], False
    raise InvalidParameterError(
        f"{name} must be an int or a non-empty sequence of ints, got {positions!r}."
    )


def check_attentions(attentions) -> torch.Tensor:
    """Stack Hugging Face style attentions into one ``(L, B, H, S, S)`` tensor and check it."""
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
    # One pass over the weights (this runs on every call): NaN propagates to min and max.
    lowest, highest = (float(v) for v in torch.aminmax(stacked.detach()))
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise InvalidInputError(
            "attentions contain NaN or inf; check the model's inputs and numerical precision "
            "(run it in float32)."
        )
    if lowest < 0:
        raise InvalidInputError("attentions contain negative weights; pass post-softmax probabilities.")
    return stacked


def check_attention_mask(attention_mask, batch_size: int, seq_len: int) -> Optional[torch.Tensor]:
    """Return a boolean ``(B, S)`` mask (True = real token) or None."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise InvalidInputTypeError(
            f"attention_mask must be a torch.Tensor of shape (B, S), got {type(attention_mask).__name__}."
        )
    if tuple(attention_mask.shape) != (batch_size, seq_len):
        raise InvalidInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have "
            f"(batch, seq_len) = ({batch_size}, {seq_len}); pass one 0/1 entry per token."
        )
    mask = attention_mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InvalidInputError(
            f"attention_mask marks every token of example(s) {empty} as padding; "
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

def check_token_ids(inputs: Any) -> torch.Tensor:
    """``inputs`` must be integer token ids of shape ``(B, S)`` (Hugging Face text models)."""
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputTypeError(
            f"inputs must be a torch.Tensor, got {type(inputs).__name__}; pass token ids (B, S) "
            "and the attention mask in additional_forward_args=(attention_mask,).")
    if inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool:
        raise InvalidInputTypeError(
            f"inputs must be integer token ids, got dtype {inputs.dtype}; this model's adapter "
            "expects input_ids of shape (B, S).")
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
    if inputs.ndim == 2 and inputs.is_floating_point():
        raise InvalidInputTypeError(
            f"inputs of shape {tuple(inputs.shape)} are read as token ids and must be integers, got dtype "
            f"{inputs.dtype}; pass embeddings as (B, S, D).")
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


def check_model_inputs(inputs: torch.Tensor, model=None) -> torch.Tensor:
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
    vocab_size = _vocabulary_size(model)
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bound = "" if vocab_size is None else f" and below the vocabulary size {vocab_size}"
        raise InvalidInputError(
            f"inputs holds token ids in [{low}, {high}]; token ids must be non-negative{bound}. "
            "Tokenize with the model's own tokenizer.")
    return inputs


def _vocabulary_size(model) -> Optional[int]:
    """Rows of the model's input embedding when it exposes one (Hugging Face models do)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if not callable(get_embeddings):
        return None
    try:
        embeddings = get_embeddings()
    except (NotImplementedError, AttributeError):
        return None
    return getattr(embeddings, "num_embeddings", None)


def check_mask_matches_inputs(attention_mask, inputs: torch.Tensor) -> None:
    """Before the forward pass: a token-id mask must be ``(B, S)`` like the ids, with real tokens.

    Checked before the model runs, since a mismatched mask otherwise fails inside the model
    with a raw broadcasting error.
    """
    if attention_mask is None or inputs.ndim != 2:
        return
    check_attention_mask(attention_mask, *inputs.shape)


def check_token_index(token_index, modes: Sequence[str]) -> None:
    """Type-level check of ``token_index`` (ranges need the sequence length, checked later)."""
    if isinstance(token_index, str):
        if token_index not in modes:
            raise InvalidParameterError(
                f"token_index={token_index!r} is not supported; use an int, a (B,) tensor of ints, "
                f"or one of {tuple(modes)}.")
        return
    if isinstance(token_index, torch.Tensor):
        if token_index.ndim > 1 or token_index.numel() == 0 or token_index.is_floating_point() \
                or token_index.dtype == torch.bool:
            raise InvalidParameterError(
                f"token_index must be an int or a (B,) integer tensor, got a {token_index.dtype} "
                f"tensor of shape {tuple(token_index.shape)}.")
        return
    if isinstance(token_index, (list, tuple)):
        if not token_index:
            raise InvalidParameterError("token_index is empty; pass an int or one position per example.")
        return
    if isinstance(token_index, bool) or not isinstance(token_index, Integral):
        raise InvalidParameterError(
            f"token_index must be an int, a (B,) tensor of ints, or one of {tuple(modes)}; "
            f"got {type(token_index).__name__}.")


def check_method_options(options: dict) -> None:
    """Check the propagation options an attribution method was given, before the model runs."""
    for name in ("residual_weight",):
        if name in options:
            check_fraction(name, options[name])
    if "discard_ratio" in options:
        check_fraction("discard_ratio", options["discard_ratio"], upper_open=True)
    for name in ("normalize", "allow_large", "causal_normalization", "return_all_layers", "return_patch_grid"):
        if name in options:
            check_flag(name, options[name])
    executor = options.get("executor")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise InvalidParameterError(
            f"executor must be a concurrent.futures.Executor (anything with .submit), got "
            f"{type(executor).__name__}; e.g. captum_attnflow.parallel.local_process_pool() or a Dask "
            "Client(...).get_executor().")


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
