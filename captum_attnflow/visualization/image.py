"""Attribution heat maps blended over images, via Captum's ``visualize_image_attr``."""

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import visualization as captum_visualization
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from captum_attnflow.exceptions import InvalidInputError
from captum_attnflow.visualization._common import PathLike, new_figure, root_figure, save_figure, to_numpy


def _image_hwc(image) -> np.ndarray:
    """``(H, W, C)`` in [0, 1] from ``(C, H, W)``, ``(H, W, C)``, ``(H, W)`` or ``(1, C, H, W)``."""
    array = to_numpy(image, "image")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise InvalidInputError(f"image must be (C, H, W), (H, W, C) or (H, W); got shape {array.shape}.")
    if array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first, as torch keeps images
    low, high = array.min(), array.max()
    # Normalized model inputs (mean/std) are not displayable as they are; stretch to [0, 1].
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _attribution_hw(attribution, size: Tuple[int, int]) -> np.ndarray:
    """``(H, W)`` scores at the image's resolution, channels summed, patch grids upsampled."""
    array = to_numpy(attribution, "attribution")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        channel_axis = 0 if array.shape[0] <= 4 else 2
        array = array.sum(axis=channel_axis)
    if array.ndim != 2:
        raise InvalidInputError(
            f"attribution must be (C, H, W), (H, W, C) or (H, W); got shape {to_numpy(attribution, 'a').shape}.")
    if array.shape != tuple(size):
        # A ViT explains patches: stretch the patch grid over the pixels it covers.
        array = F.interpolate(torch.from_numpy(array)[None, None], size=tuple(size), mode="bilinear",
                              align_corners=False)[0, 0].numpy()
    return array


def _show_image(ax: Axes, image_hwc: np.ndarray) -> None:
    # Drawn directly: Captum's "original_image" shows one-channel images in false color.
    if image_hwc.shape[2] == 1:
        ax.imshow(image_hwc[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image_hwc[:, :, :3])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("image")


def image_overlay(attribution, image, *, sign: str = "positive", method: str = "blended_heat_map",
                  show_original: bool = True, alpha_overlay: float = 0.7, cmap: Optional[str] = "inferno",
                  outlier_perc: float = 1, title: Optional[str] = None, colorbar: bool = True,
                  ax: Optional[Axes] = None, path: Optional[PathLike] = None) -> Figure:
    """Blend an attribution heat map over its image with Captum's ``visualize_image_attr``.

    Args:
        attribution: ``(C, H, W)``, ``(H, W)`` (or with a leading batch of one) scores;
            channels are summed. A coarser grid (e.g. ViT patches, ``(H/p, W/p)``) is
            upsampled bilinearly to the image size.
        image: the input image, ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)``; any value range
            (it is rescaled to [0, 1] for display).
        sign: which scores to show, as in Captum: ``"positive"`` (attention rollout and flow
            are never negative), ``"absolute_value"``, ``"negative"`` or ``"all"``.
        method: Captum's visualization method (``"blended_heat_map"``, ``"heat_map"``,
            ``"masked_image"``, ``"alpha_scaling"``).
        show_original: add a panel with the plain image on the left (ignored with ``ax``).
        alpha_overlay, cmap, outlier_perc: passed to ``visualize_image_attr``; the default
            ``"inferno"`` keeps low scores dark, so bright image regions are not mistaken for
            high scores (``None``: Captum's default for ``sign``).
        title: title of the overlay panel.
        colorbar: add a color bar to the overlay. Captum divides the scores by their
            ``(100 - outlier_perc)``-th percentile and clips, so the bar runs over that scaled
            score (0 to 1 for ``sign="positive"``), as labeled.
        ax: draw only the overlay into this axes.
        path: also save the figure there (PNG from the suffix).

    Returns:
        The matplotlib figure.

    Example:
        >>> import torch
        >>> figure = image_overlay(torch.rand(4, 4), torch.rand(1, 16, 16))
        >>> len(figure.axes)  # the image, the overlay and its color bar
        3
    """
    image_hwc = _image_hwc(image)
    attribution_hw = _attribution_hw(attribution, image_hwc.shape[:2])
    if ax is None:
        figure, grid = new_figure((6.0 if show_original else 3.2, 3.2), ncols=2 if show_original else 1)
        axes = list(grid[0])
    else:
        figure, axes, show_original = root_figure(ax), [ax], False
    if show_original:
        _show_image(axes[0], image_hwc)
    # visualize_image_attr treats a max <= 1 image as [0, 1] floats and rescales it itself.
    captum_visualization.visualize_image_attr(
        attribution_hw[:, :, None], image_hwc, method=method, sign=sign, plt_fig_axis=(figure, axes[-1]),
        use_pyplot=False, alpha_overlay=alpha_overlay, cmap=cmap, outlier_perc=outlier_perc,
        title=title, show_colorbar=False)
    if colorbar:
        _add_colorbar(axes[-1], outlier_perc)
    save_figure(figure, path)
    return figure


def _add_colorbar(ax: Axes, outlier_perc: float) -> None:
    # The heat map is the last image Captum drew on the axes (the first is the photo).
    heat_map = ax.get_images()[-1]
    label = f"score / its {100 - outlier_perc:g}th percentile"
    bar = ax.figure.colorbar(heat_map, ax=ax, shrink=0.8, pad=0.02, fraction=0.05)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)
