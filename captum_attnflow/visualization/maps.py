"""Per-layer attribution maps (the paper's Fig. 3/4) and per-token method comparisons."""

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from captum_attnflow._validation import check_position
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.functional import attention_flow, attention_rollout, fuse_heads
from captum_attnflow.functional.fusion import transition_matrices
from captum_attnflow.visualization._common import (
    PathLike,
    check_tokens,
    new_figure,
    root_figure,
    save_figure,
    to_numpy,
)
from captum_attnflow.visualization.graph import _check_example

MAP_METHODS = ("raw", "rollout", "flow")


def layer_attribution_maps(attentions, *, token_index: int = 0, example: int = 0,
                           methods: Sequence[str] = MAP_METHODS, head_fusion: str = "mean",
                           residual_weight: float = 0.5) -> Dict[str, np.ndarray]:
    """Raw attention, rollout and flow of one token after every layer, as ``(L, S)`` arrays.

    Row ``l`` of each map explains ``token_index`` after layer ``l + 1``: ``"raw"`` is the
    head-fused attention row (no residual), ``"rollout"`` the rollout row and ``"flow"`` the
    normalized attention flow, all computed with :mod:`captum_attnflow.functional`.

    Example:
        >>> import torch
        >>> attentions = [torch.softmax(torch.randn(1, 2, 4, 4), -1) for _ in range(3)]
        >>> {name: m.shape for name, m in layer_attribution_maps(attentions).items()}
        {'raw': (3, 4), 'rollout': (3, 4), 'flow': (3, 4)}
    """
    unknown = set(methods) - set(MAP_METHODS)
    if unknown:
        raise InvalidParameterError(f"Unknown methods {sorted(unknown)}; choose from {MAP_METHODS}.")
    stacked = torch.stack(list(attentions)) if isinstance(attentions, (list, tuple)) else attentions
    example = _check_example(example, stacked.shape[1])
    stacked = stacked[:, example: example + 1]  # keep a batch of one: flow runs per example
    options: Dict[str, Any] = dict(head_fusion=head_fusion, residual_weight=residual_weight)
    maps = {}
    if "raw" in methods:
        maps["raw"] = to_numpy(fuse_heads(stacked, head_fusion)[:, 0, token_index], "attentions")
    if "rollout" in methods:
        maps["rollout"] = to_numpy(attention_rollout(stacked, **options)[:, 0, token_index], "rollout")
    if "flow" in methods:
        num_layers = transition_matrices(stacked, **options).shape[0]
        maps["flow"] = np.stack([
            to_numpy(attention_flow(stacked, token_index=token_index, layer=layer, **options)[0], "flow")
            for layer in range(num_layers)])
    return maps


def _map_array(values, example: int, name: str) -> np.ndarray:
    array = to_numpy(values, name)
    if array.ndim == 3:  # (L, B, S) as returned with return_all_layers=True
        array = array[:, _check_example(example, array.shape[1])]
    if array.ndim != 2:
        raise InvalidInputError(f"The map '{name}' must have shape (L, S) or (L, B, S); got {array.shape}.")
    return array


def plot_layer_maps(maps, tokens: Sequence[str], *, example: int = 0, token_index: int = 0,
                    hide_positions: Sequence[int] = (), axes: Optional[Sequence[Axes]] = None, cmap: str = "viridis",
                    title: Optional[str] = None, path: Optional[PathLike] = None, **map_options) -> Figure:
    """One heat map per method: layers bottom-to-top (numbered from 1, as in the paper), tokens left-to-right.

    Short inputs get the methods side by side; long ones a row per method, wrapped into
    lines of at most :data:`MAX_TOKENS_PER_LINE` tokens (one color scale per method), so
    the figure stays within :data:`MAX_FIGURE_WIDTH` inches.

    Args:
        maps: ``{method name: (L, S) or (L, B, S) scores}`` (e.g. from ``attribute(...,
            return_all_layers=True)``), or raw attentions, in which case
            :func:`layer_attribution_maps` computes raw attention, rollout and flow.
        tokens: one label per position.
        example: which example of a batched map to draw.
        token_index: the explained token (used when ``maps`` are attentions).
        hide_positions: positions left out of the picture (scores unchanged), e.g. ``(0,)``
            when ``[CLS]``'s share of its own explanation drowns out every word.
        axes: one axes per method to draw into (no wrapping); by default a new figure.
        cmap: colormap; every method has its own color scale (methods differ in range).
        title: figure title.
        path: also save the figure there.
        **map_options: ``head_fusion``, ``residual_weight``, ``methods`` for
            :func:`layer_attribution_maps`.

    Returns:
        The matplotlib figure.

    Example:
        >>> import torch
        >>> attentions = [torch.softmax(torch.randn(1, 2, 4, 4), -1) for _ in range(3)]
        >>> figure = plot_layer_maps(attentions, ["[CLS]", "a", "cat", "[SEP]"])
        >>> [ax.get_title() for ax in figure.axes[:3]]
        ['raw', 'rollout', 'flow']
    """
    if not isinstance(maps, Mapping):
        maps = layer_attribution_maps(maps, token_index=token_index, example=example, **map_options)
        example = 0
    arrays = {name: _map_array(values, example, name) for name, values in maps.items()}
    if not arrays:
        raise InvalidInputError("maps is empty; pass at least one method.")
    num_layers, seq_len = next(iter(arrays.values())).shape
    tokens = check_tokens(tokens, seq_len)
    for name, array in arrays.items():
        if array.shape != (num_layers, seq_len):
            raise InvalidInputError(f"Map '{name}' has shape {array.shape}, expected {(num_layers, seq_len)}.")
    hidden = {check_position(position, seq_len, "hide_positions") for position in hide_positions}
    shown = [position for position in range(seq_len) if position not in hidden]
    if not shown:
        raise InvalidParameterError("hide_positions hides every token; keep at least one.")
    labels = [tokens[position] for position in shown]
    if axes is not None:
        if len(axes) != len(arrays):
            raise InvalidParameterError(f"Got {len(axes)} axes for {len(arrays)} methods; pass one per method.")
        for ax, (name, array) in zip(axes, arrays.items()):
            _draw_map(ax, array[:, shown], labels, name, colormaps[cmap])
        figure = root_figure(axes[0])
    else:
        figure = _layer_map_figure({name: array[:, shown] for name, array in arrays.items()}, labels,
                                   colormaps[cmap])
    if title is not None:
        figure.suptitle(title)
    save_figure(figure, path)
    return figure


#: Figures stay this wide (inches; 2,400 px at the default 150 dpi): long inputs wrap.
MAX_FIGURE_WIDTH = 16.0
#: Tokens on one line of a per-layer map before it wraps.
MAX_TOKENS_PER_LINE = 40
_MAP_INCHES_PER_TOKEN = 0.36


def _layer_map_figure(arrays: Dict[str, np.ndarray], tokens: Sequence[str], cmap) -> Figure:
    """Methods side by side when they fit in :data:`MAX_FIGURE_WIDTH`, else a row per method, wrapped."""
    num_layers, seq_len = next(iter(arrays.values())).shape
    panel_width = max(3.0, _MAP_INCHES_PER_TOKEN * seq_len + 1.6)
    height = 0.45 * num_layers + 2.2
    if panel_width * len(arrays) <= MAX_FIGURE_WIDTH:
        figure, grid = new_figure((panel_width * len(arrays), height), ncols=len(arrays))
        for ax, (name, array) in zip(grid[0], arrays.items()):
            _draw_map(ax, array, tokens, name, cmap)
        return figure
    lines = _token_lines(seq_len, MAX_TOKENS_PER_LINE)
    width = min(MAX_FIGURE_WIDTH, _MAP_INCHES_PER_TOKEN * len(lines[0]) + 1.6)
    figure, grid = new_figure((width, height * len(arrays) * len(lines)), nrows=len(arrays) * len(lines))
    for index, (name, array) in enumerate(arrays.items()):
        scale = Normalize(float(array.min()), float(array.max()))  # one scale per method, across its lines
        for line_number, line in enumerate(lines):
            ax = grid[index * len(lines) + line_number, 0]
            label = name if len(lines) == 1 else f"{name} (tokens {line.start + 1}-{line.stop} of {seq_len})"
            _draw_map(ax, array[:, line], [tokens[position] for position in line], label, cmap, scale,
                      width_tokens=len(lines[0]))
    return figure


def _token_lines(seq_len: int, per_line: int):
    """``ceil(seq_len / per_line)`` ranges of near-equal length covering ``range(seq_len)``."""
    count = -(-seq_len // per_line)
    size = -(-seq_len // count)
    return [range(start, min(seq_len, start + size)) for start in range(0, seq_len, size)]


def _draw_map(ax: Axes, array: np.ndarray, tokens: Sequence[str], name: str, cmap,
              scale: Optional[Normalize] = None, width_tokens: Optional[int] = None) -> None:
    image = ax.imshow(array, cmap=cmap, norm=scale, aspect="auto", origin="lower", interpolation="nearest")
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(array.shape[0]), [str(layer) for layer in range(1, array.shape[0] + 1)], fontsize=8)
    if width_tokens is not None:  # wrapped lines share one token width, the last line stays short
        ax.set_xlim(-0.5, width_tokens - 0.5)
    ax.set_ylabel("layer")
    ax.set_title(name)
    ax.figure.colorbar(image, ax=ax, shrink=0.85, pad=0.02)


def plot_method_comparison(attributions: Mapping[str, object], tokens: Sequence[str], *, example: int = 0,
                           hide_positions: Sequence[int] = (), ax: Optional[Axes] = None,
                           title: Optional[str] = None, path: Optional[PathLike] = None) -> Figure:
    """Grouped bars: every method's score per token, each scaled by its largest magnitude.

    Scaling makes methods with different units (a distribution for rollout and flow,
    logit differences for ablation, gradients for IG) comparable by *shape*; signs are kept.
    Long inputs wrap onto several rows so the figure stays within :data:`MAX_FIGURE_WIDTH`
    inches (not when drawing into a given ``ax``).

    Args:
        attributions: ``{method name: (S,) or (B, S) scores}``.
        tokens: one label per position.
        example: which example of batched scores to draw.
        hide_positions: positions left out of the bars *and of the scaling*, e.g. ``[CLS]`` and
            ``[SEP]``, which attention methods of a mean-pooled model score far above every word:
            scaled by them, every word's bar is equally short and the ranking disappears.
        ax: axes to draw into; by default a new figure.
        title: figure title.
        path: also save the figure there.

    Example:
        >>> figure = plot_method_comparison({"a": [0.1, 0.9], "b": [0.5, -0.5]}, ["x", "y"])
        >>> len(figure.axes)
        1
    """
    rows = {}
    for name, values in attributions.items():
        array = to_numpy(values, name)
        if array.ndim == 2:
            array = array[_check_example(example, array.shape[0])]
        if array.ndim != 1:
            raise InvalidInputError(f"Scores of '{name}' must have shape (S,) or (B, S); got {array.shape}.")
        rows[name] = array
    if not rows:
        raise InvalidInputError("attributions is empty; pass at least one method.")
    seq_len = len(next(iter(rows.values())))
    tokens = check_tokens(tokens, seq_len)
    if any(len(row) != seq_len for row in rows.values()):
        raise InvalidInputError("Every method must score the same number of tokens.")
    hidden = {check_position(position, seq_len, "hide_positions") for position in hide_positions}
    shown = [position for position in range(seq_len) if position not in hidden]
    if not shown:
        raise InvalidParameterError("hide_positions hides every token; keep at least one.")
    rows = {name: _scaled_by_peak(row[shown]) for name, row in rows.items()}
    tokens, seq_len = [tokens[position] for position in shown], len(shown)
    inches_per_token = 0.55 * max(1.0, len(rows) / 3)
    if ax is not None:
        figure, axes, lines = root_figure(ax), [ax], [range(seq_len)]
    else:
        lines = _token_lines(seq_len, max(4, int((MAX_FIGURE_WIDTH - 1.5) / inches_per_token)))
        width = max(6.0, inches_per_token * len(lines[0]) + 1.5)
        figure, grid = new_figure((width, 3.6 * len(lines)), nrows=len(lines))
        axes = list(grid[:, 0])
    # One y-range for every line: negative only where some score is.
    bottom = -1.08 if any((row < 0).any() for row in rows.values()) else 0.0
    for line_number, (line_ax, line) in enumerate(zip(axes, lines)):
        _draw_bars(line_ax, {name: row[line] for name, row in rows.items()}, [tokens[p] for p in line],
                   len(lines[0]), legend=line_number == 0)
        line_ax.set_ylim(bottom, 1.08)
    if title is not None:
        (axes[0].set_title if ax is not None else figure.suptitle)(title)
    save_figure(figure, path)
    return figure


def _scaled_by_peak(row: np.ndarray) -> np.ndarray:
    peak = np.abs(row).max()
    return row / peak if peak > 0 else row


def _draw_bars(ax: Axes, rows: Dict[str, np.ndarray], tokens: Sequence[str], width_tokens: int,
               legend: bool) -> None:
    width = 0.8 / len(rows)
    colors = colormaps["tab10"]
    for index, (name, row) in enumerate(rows.items()):
        offsets = np.arange(len(tokens)) - 0.4 + width * (index + 0.5)
        ax.bar(offsets, row, width=width, label=name, color=colors(index % 10))
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(tokens)), tokens, rotation=45, ha="right")
    ax.set_ylabel("score / max |score|")
    ax.set_xlim(-0.6, width_tokens - 0.4)
    if legend:  # outside the axes, so it never covers a bar
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
