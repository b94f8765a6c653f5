"""Vision transformers: Hugging Face ViT/DeiT (and any HF model whose main input is
``pixel_values``) and timm-style ViTs, without importing timm.

The model attends over ``prefix + grid_h·grid_w`` tokens: ``prefix`` special tokens (CLS,
and DeiT's distillation token) followed by one token per patch in row-major order. Scores
are mapped back to the ``(B, C, H, W)`` pixels: the special tokens are dropped, the patch
scores are reshaped to the grid and upsampled to the image size, and the same value is
written to every channel, so the result goes straight into
``captum.attr.visualization.visualize_image_attr``.
"""

import contextlib
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from captum_attnflow._validation import check_pixel_values
from captum_attnflow.capture.base import AttentionAdapter, register_adapter
from captum_attnflow.capture.huggingface import HuggingFaceAdapter, _pretrained_models
from captum_attnflow.exceptions import AttentionCaptureError, InvalidParameterError

#: Upsampling modes for the pixel map (``torch.nn.functional.interpolate`` names).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _pair(value) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def patch_scores_to_pixels(scores: torch.Tensor, inputs: torch.Tensor, patch_size: Tuple[int, int], *,
                           return_patch_grid: bool = False, interpolation: str = "nearest") -> torch.Tensor:
    """Map ``(n, B, S)`` token scores onto ``(n, B, C, H, W)`` pixels (or the patch grid).

    Args:
        scores: scores over the attended sequence, special tokens first.
        inputs: the ``(B, C, H, W)`` pixel values the model saw.
        patch_size: ``(p_h, p_w)``; the grid is ``(H // p_h, W // p_w)``.
        return_patch_grid: return the raw ``(n, B, grid_h, grid_w)`` patch scores instead:
            the scores of the patch tokens, special tokens dropped, not renormalized.
        interpolation: ``"nearest"`` (every pixel gets its patch's score exactly) or
            ``"bilinear"``/``"bicubic"`` (smooth map, ``align_corners=False``).

    Example:
        >>> scores = torch.arange(5.0).reshape(1, 1, 5)  # CLS + a 2x2 grid
        >>> patch_scores_to_pixels(scores, torch.zeros(1, 3, 4, 4), (2, 2), return_patch_grid=True)
        tensor([[[[1., 2.],
                  [3., 4.]]]])
    """
    if interpolation not in INTERPOLATIONS:
        raise InvalidParameterError(f"interpolation={interpolation!r}; use one of {INTERPOLATIONS}.")
    height, width = inputs.shape[-2:]
    grid_h, grid_w = height // patch_size[0], width // patch_size[1]
    n_prefix = scores.shape[-1] - grid_h * grid_w
    if n_prefix < 0 or grid_h == 0 or grid_w == 0:
        raise AttentionCaptureError(
            f"The model attended over {scores.shape[-1]} tokens, fewer than the {grid_h}x{grid_w} "
            f"patches of a {height}x{width} image with patch size {patch_size}.")
    grid = scores[..., n_prefix:].reshape(*scores.shape[:-1], grid_h, grid_w)
    if return_patch_grid:
        return grid.to(inputs.device)
    leading = grid.shape[:-2]
    flat = grid.reshape(-1, 1, grid_h, grid_w).float()
    extra = {} if interpolation == "nearest" else {"align_corners": False}
    pixels = F.interpolate(flat, size=(height, width), mode=interpolation, **extra)
    pixels = pixels.reshape(*leading, 1, height, width).expand(*leading, inputs.shape[1], height, width)
    return pixels.contiguous().to(inputs.device)


class _PixelInputsMixin:
    """Validation and score mapping shared by the vision adapters."""

    interpolation = "nearest"

    def patch_size(self) -> Tuple[int, int]:
        raise NotImplementedError

    def check_inputs(self, inputs: Any) -> torch.Tensor:
        return check_pixel_values(inputs)

    def scores_to_inputs(self, scores: torch.Tensor, inputs: torch.Tensor, *,
                         return_patch_grid: bool = False, **options) -> torch.Tensor:
        return patch_scores_to_pixels(scores, inputs, self.patch_size(), return_patch_grid=return_patch_grid,
                                      interpolation=self.interpolation)


class HuggingFaceVisionAdapter(_PixelInputsMixin, HuggingFaceAdapter):
    """Hugging Face image transformers (ViT, DeiT ...): ``main_input_name == "pixel_values"``.

    Args:
        model: the model.
        interpolation: how patch scores are upsampled to pixels, see
            :func:`patch_scores_to_pixels` (default ``"nearest"``).
    """

    name = "huggingface-vision"

    def __init__(self, model: nn.Module, interpolation: str = "nearest"):
        super().__init__(model)
        self.interpolation = interpolation

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        pretrained = _pretrained_models(model)
        return bool(pretrained) and getattr(pretrained[0], "main_input_name", None) == "pixel_values" \
            and getattr(pretrained[0].config, "patch_size", None) is not None and HuggingFaceAdapter.supports(model)

    def patch_size(self) -> Tuple[int, int]:
        return _pair(self._owner().config.patch_size)


def _timm_style_attention(module: nn.Module) -> bool:
    return hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module)


def _patch_embedding(model: nn.Module) -> Optional[nn.Module]:
    """The ``patch_embed`` (with a ``patch_size``) of the model or of a module inside it."""
    for module in model.modules():
        patch_embed = getattr(module, "patch_embed", None)
        if isinstance(patch_embed, nn.Module) and hasattr(patch_embed, "patch_size"):
            return patch_embed
    return None


class TimmVisionAdapter(_PixelInputsMixin, AttentionAdapter):
    """timm-style ViTs (``timm.models.vision_transformer``), recognised by their structure.

    timm's ``Attention`` computes ``softmax(q·kᵀ)`` and passes it through ``attn_drop`` when
    its ``fused_attn`` flag is off. For the call the flag is switched off on every attention
    block (and restored after) and ``attn_drop``'s output, the ``(B, H, N, N)`` weights, is
    recorded. timm is never imported: a model without this structure is not claimed.
    """

    name = "timm-vit"
    model: nn.Module  # adapters found by supports(model) always have one

    def __init__(self, model: nn.Module, interpolation: str = "nearest"):
        super().__init__(model)
        self.interpolation = interpolation

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _patch_embedding(model) is not None and any(_timm_style_attention(m) for m in model.modules())

    def _attention_blocks(self) -> List[nn.Module]:
        return [m for m in self.model.modules() if _timm_style_attention(m)]

    def attention_modules(self) -> List[nn.Module]:
        return [block.get_submodule("attn_drop") for block in self._attention_blocks()]

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        return output if isinstance(output, torch.Tensor) and output.ndim == 4 else None

    @contextlib.contextmanager
    def prepared(self, session):
        blocks = self._attention_blocks()
        saved = [block.fused_attn for block in blocks]
        try:
            for block in blocks:
                block.fused_attn = False  # the unfused path materialises the weights
            yield
        finally:
            for block, value in zip(blocks, saved):
                block.fused_attn = value

    def patch_size(self) -> Tuple[int, int]:
        embedding = _patch_embedding(self.model)
        assert embedding is not None  # supports() found it
        return _pair(embedding.patch_size)


# Vision adapters go first: a ViT is also a Hugging Face model, but its inputs are pixels.
register_adapter(TimmVisionAdapter, first=True)
register_adapter(HuggingFaceVisionAdapter, first=True)
