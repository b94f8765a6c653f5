"""Which outputs an attribution explains: the ``token_index`` and ``layer`` options.

One meaning in every layer of the library (the Captum classes and the functional API):

=========================  ============================================  ==============
``token_index``            explained positions                           result
=========================  ============================================  ==============
``int``                    that position in every example (``0``: CLS)   ``(B, S)``
``(B,)`` tensor / list     one position per example                      ``(B, S)``
``(B, P)`` tensor          P positions per example                       ``(B, P, S)``
``"mean"``                 every real token; their rows are averaged     ``(B, S)``
``"last"``                 the last real token (decoders; any padding)   ``(B, S)``
``"all"``                  every position; rows of padding are 0         ``(B, S, S)``
=========================  ============================================  ==============

Positions index like Python lists (``-1`` is the last position, padding included).
Explaining a padding position is refused: its row would explain nothing.
"""

from dataclasses import dataclass
from numbers import Integral
from typing import List, Optional, Sequence, Union

import torch

from captum_attnflow._validation import check_flag, check_layer, check_position
from captum_attnflow.exceptions import InvalidParameterError

TokenIndex = Union[int, str, torch.Tensor, Sequence[int]]
#: String values of ``token_index``.
TOKEN_INDEX_MODES = ("mean", "last", "all")
#: How the explained rows become the result (see :class:`ExplainedPositions`).
LAYOUTS = ("one", "rows", "mean", "all")


@dataclass(frozen=True)
class ExplainedPositions:
    """The rows to compute for each example and how they form the result.

    Attributes:
        index: ``(B, P)`` long tensor of positions (unused slots hold 0).
        used: ``(B, P)`` bool tensor, True where ``index`` holds a real request.
        layout: ``"one"`` (one row per example, result ``(..., B, S)``), ``"rows"`` (result
            ``(..., B, P, S)``), ``"mean"`` (rows averaged, ``(..., B, S)``) or ``"all"``
            (row p placed at position ``index[b, p]``, ``(..., B, S, S)``).
    """

    index: torch.Tensor
    used: torch.Tensor
    layout: str

    def per_example(self) -> List[List[int]]:
        """The requested positions of each example, as lists (the flow engine's input)."""
        return [row[mask].tolist() for row, mask in zip(self.index, self.used)]


def check_token_index(token_index: TokenIndex, batch_size: Optional[int] = None,
                      seq_len: Optional[int] = None) -> None:
    """Check ``token_index`` as far as the known sizes allow (before any forward pass).

    Example:
        >>> check_token_index("middle")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        captum_attnflow.exceptions.InvalidParameterError: token_index='middle' is not supported; use an int, ...
    """
    if isinstance(token_index, str):
        if token_index not in TOKEN_INDEX_MODES:
            raise InvalidParameterError(
                f"token_index={token_index!r} is not supported; use an int, a (B,) or (B, P) tensor of ints, "
                f"or one of {TOKEN_INDEX_MODES}.")
        return
    positions = _as_position_tensor(token_index)
    if positions.ndim >= 1 and batch_size is not None and positions.shape[0] != batch_size:
        raise InvalidParameterError(
            f"token_index has {positions.shape[0]} rows but the batch has {batch_size} examples; pass one "
            "position (or one row of positions) per example, or an int for all of them.")
    if seq_len is not None:
        for position in positions.flatten().tolist():
            check_position(position, seq_len, "token_index")


def _as_position_tensor(token_index) -> torch.Tensor:
    if isinstance(token_index, bool):
        raise InvalidParameterError("token_index must be an int position, a tensor of positions or a mode "
                                    f"{TOKEN_INDEX_MODES}, got a bool.")
    if isinstance(token_index, Integral):
        return torch.tensor(int(token_index))
    if isinstance(token_index, (list, tuple)):
        if not token_index:
            raise InvalidParameterError("token_index is empty; pass an int or one position per example.")
        try:
            token_index = torch.tensor(token_index)
        except (TypeError, ValueError) as error:
            raise InvalidParameterError(
                f"token_index must hold ints, one per example or one equal-length row per example ({error}).") \
                from None
    if not isinstance(token_index, torch.Tensor):
        raise InvalidParameterError(
            f"token_index must be an int, a (B,) or (B, P) tensor of ints, or one of {TOKEN_INDEX_MODES}; got "
            f"{type(token_index).__name__}.")
    if token_index.is_floating_point() or token_index.is_complex() or token_index.dtype == torch.bool \
            or token_index.ndim > 2 or token_index.numel() == 0:
        raise InvalidParameterError(
            f"token_index must be an int or a (B,) / (B, P) integer tensor, got a {token_index.dtype} tensor of "
            f"shape {tuple(token_index.shape)}.")
    return token_index.detach().cpu().long()


def explained_positions(token_index: TokenIndex, valid: torch.Tensor) -> ExplainedPositions:
    """Resolve ``token_index`` against ``valid``, the ``(B, S)`` bool mask of real tokens.

    Example:
        >>> valid = torch.tensor([[True, True, True], [True, True, False]])
        >>> explained_positions("last", valid).index.tolist()
        [[2], [1]]
        >>> explained = explained_positions("all", valid)
        >>> explained.layout, explained.per_example()
        ('all', [[0, 1, 2], [0, 1]])
    """
    batch_size, seq_len = valid.shape
    valid = valid.cpu()
    if isinstance(token_index, str):
        check_token_index(token_index)
        return _mode_positions(token_index, valid)
    positions = _as_position_tensor(token_index)
    check_token_index(positions, batch_size if positions.ndim else None, seq_len)
    layout = "rows" if positions.ndim == 2 else "one"
    index = positions.expand(batch_size) if positions.ndim == 0 else positions
    index = (index if index.ndim == 2 else index[:, None]) % seq_len
    on_padding = ~valid.gather(1, index)
    if on_padding.any():
        example, slot = on_padding.nonzero()[0].tolist()
        raise InvalidParameterError(
            f"token_index selects position {index[example, slot].item()} of example {example}, which is padding; "
            "explain a real token (token_index='last' finds the last real token of each example).")
    return ExplainedPositions(index, torch.ones_like(index, dtype=torch.bool), layout)


def _mode_positions(mode: str, valid: torch.Tensor) -> ExplainedPositions:
    batch_size, seq_len = valid.shape
    if mode == "last":
        # Last real position, left or right padding alike.
        last = seq_len - 1 - valid.flip(1).long().argmax(dim=1)
        index = last[:, None]
        return ExplainedPositions(index, torch.ones_like(index, dtype=torch.bool), "one")
    # "mean" and "all": every real position, packed to the front of each row.
    counts = valid.sum(dim=1)
    order = torch.argsort((~valid).long(), dim=1, stable=True)
    width = int(counts.max())
    index = order[:, :width]
    used = torch.arange(width)[None, :] < counts[:, None]
    return ExplainedPositions(index.masked_fill(~used, 0), used, mode)


def assemble(rows: torch.Tensor, explained: ExplainedPositions) -> torch.Tensor:
    """Shape ``(n, B, P, S)`` computed rows into the result of ``explained.layout``.

    ``rows`` at unused slots must be 0. Returns ``(n, B, S)``, ``(n, B, P, S)`` or ``(n, B, S, S)``.
    """
    if explained.layout in ("one",):
        return rows[:, :, 0]
    if explained.layout == "rows":
        return rows
    used = explained.used.to(rows.device)
    if explained.layout == "mean":
        counts = used.sum(dim=1).to(rows.dtype)
        return rows.sum(dim=2) / counts[None, :, None]
    seq_len = rows.shape[-1]
    matrices = rows.new_zeros(*rows.shape[:2], seq_len, seq_len)
    slots = explained.index.to(rows.device)[None, :, :, None].expand_as(rows)
    # Scatter every used row to its position; unused slots (index 0, zero rows) add nothing.
    return matrices.scatter_add(2, slots, rows * used[None, :, :, None])


def explained_layers(layer: Optional[int], return_all_layers: bool, num_layers: int) -> List[int]:
    """Layers whose output is explained: ``layer`` (default: the last) or all of them.

    Example:
        >>> explained_layers(None, False, 6), explained_layers(-2, False, 6), explained_layers(None, True, 3)
        ([5], [4], [0, 1, 2])
    """
    check_flag("return_all_layers", return_all_layers)
    if return_all_layers:
        if layer is not None:
            raise InvalidParameterError(
                f"layer={layer!r} and return_all_layers=True contradict each other: return_all_layers returns "
                "every layer; drop one of them.")
        return list(range(num_layers))
    return [check_layer(-1 if layer is None else layer, num_layers)]


def real_tokens(valid: Optional[torch.Tensor], batch_size: int, seq_len: int) -> torch.Tensor:
    """``(B, S)`` bool mask of real tokens on the CPU (all True without a mask)."""
    return torch.ones(batch_size, seq_len, dtype=torch.bool) if valid is None else valid.cpu()
