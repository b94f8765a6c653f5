"""Helpers shared by the plotting functions: figures, saving, array conversion."""

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure

from captum_attnflow.exceptions import InvalidInputError

PathLike = Union[str, "os.PathLike[str]"]


def new_figure(figsize: Tuple[float, float], ncols: int = 1, nrows: int = 1,
               **subplot_kw) -> Tuple[Figure, np.ndarray]:
    """A figure on the Agg canvas with a grid of axes, independent of pyplot.

    Figures built this way never pop up a window and are never kept alive by pyplot's
    global registry, so a script or the CLI can make hundreds of them without leaking.
    In Jupyter they still display inline when returned as a cell's value.
    """
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return figure, axes


def root_figure(ax: Axes) -> Figure:
    """The figure holding ``ax``: the top-level one when ``ax`` sits in a subfigure (only it can be saved)."""
    figure = ax.figure
    while isinstance(figure, SubFigure):
        figure = figure.figure
    return figure


def figure_and_axes(ax: Optional[Axes], figsize: Tuple[float, float]) -> Tuple[Figure, Axes]:
    """``(figure of ax, ax)`` when an axes is given, otherwise a new one-axes figure."""
    if ax is not None:
        return root_figure(ax), ax
    figure, axes = new_figure(figsize)
    return figure, axes[0, 0]


def save_figure(figure: Figure, path: Optional[PathLike], dpi: int = 150) -> None:
    """Write ``figure`` to ``path`` (format from the suffix) with the Agg renderer; None skips."""
    if path is None:
        return
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    # An explicit Agg canvas: saving works the same whatever pyplot backend is active.
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi, facecolor="white", bbox_inches="tight")


def to_numpy(values, name: str) -> np.ndarray:
    """A float64 NumPy copy of a tensor, array or nested sequence."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{name} contains NaN or infinite values.")
    return array


def check_tokens(tokens: Sequence[str], length: int, name: str = "tokens") -> list:
    """Token labels as strings, checked against the sequence length they describe."""
    labels = [str(token) for token in tokens]
    if len(labels) != length:
        raise InvalidInputError(
            f"{name} has {len(labels)} entries but the attributions cover {length} positions; "
            "pass one label per position (padding removed on both sides).")
    return labels
