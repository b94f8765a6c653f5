"""Vision transformers: HF ViT/DeiT (1 or 2 special tokens), timm ViTs (when installed) and the
timm-style structure the timm adapter relies on. Inputs are pixels ``(B, C, H, W)``."""

import copy

import numpy as np
import pytest
import torch
import transformers as T
from helpers import assert_unchanged, snapshot
from torch import nn

from captum_attnflow import (
    AttentionFlow,
    AttentionRollout,
    InvalidInputTypeError,
    InvalidParameterError,
    RawAttention,
)
from captum_attnflow.capture import HuggingFaceVisionAdapter, TimmVisionAdapter, find_adapter
from captum_attnflow.functional import attention_flow, attention_rollout

VIT = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=37)
GRID = (4, 4)
MODELS = {  # name -> (factory, number of special tokens)
    "vit": (lambda: T.ViTModel(T.ViTConfig(**VIT)), 1),
    "vit-classifier": (lambda: T.ViTForImageClassification(T.ViTConfig(**VIT)), 1),
    "deit": (lambda: T.DeiTModel(T.DeiTConfig(**VIT)), 2),
    "deit-with-teacher": (lambda: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**VIT)), 2),
}


def build(name):
    torch.manual_seed(0)
    return MODELS[name][0]().eval()


@pytest.fixture()
def pixels():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def reference_attentions(model, pixels):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return torch.stack(eager(pixel_values=pixels, output_attentions=True).attentions)


@pytest.mark.parametrize("name", list(MODELS))
def test_patch_grid_is_the_cls_row_over_patch_tokens(name, pixels):
    model = build(name)
    n_special = MODELS[name][1]
    attentions = reference_attentions(model, pixels)
    assert attentions.shape[-1] == n_special + GRID[0] * GRID[1]
    before = snapshot(model)

    grid = AttentionRollout(model).attribute(pixels, return_patch_grid=True)
    expected = attention_rollout(attentions)[-1, :, 0, n_special:].reshape(2, *GRID)
    torch.testing.assert_close(grid, expected.float(), atol=1e-5, rtol=0)
    assert grid.sum(dim=(1, 2)).lt(1).all()  # special tokens dropped, not renormalized

    flow_grid = AttentionFlow(model).attribute(pixels, return_patch_grid=True)
    expected_flow = attention_flow(attentions, token_index=0)[:, n_special:].reshape(2, *GRID)
    torch.testing.assert_close(flow_grid, expected_flow.float(), atol=1e-5, rtol=0)

    assert_unchanged(model, before)


@pytest.mark.parametrize("name", ["vit", "deit-with-teacher"])
def test_pixel_map_has_input_shape_and_nearest_patch_values(name, pixels):
    model = build(name)
    rollout = AttentionRollout(model)
    grid = rollout.attribute(pixels, return_patch_grid=True)
    pixel_map = rollout.attribute(pixels)
    assert pixel_map.shape == pixels.shape
    assert torch.equal(pixel_map[:, 0], pixel_map[:, 1]) and torch.equal(pixel_map[:, 0], pixel_map[:, 2])
    patch_h, patch_w = 16 // GRID[0], 16 // GRID[1]
    blocks = pixel_map[:, 0].reshape(2, GRID[0], patch_h, GRID[1], patch_w)
    torch.testing.assert_close(blocks, grid[:, :, None, :, None].expand_as(blocks))


def test_bilinear_interpolation_option(pixels):
    model = build("vit")
    smooth = AttentionRollout(model, adapter=HuggingFaceVisionAdapter(model, interpolation="bilinear"))
    nearest = AttentionRollout(model).attribute(pixels)
    bilinear = smooth.attribute(pixels)
    assert bilinear.shape == pixels.shape and not torch.allclose(bilinear, nearest)
    # Bilinear stays within the range of the patch scores.
    grid = smooth.attribute(pixels, return_patch_grid=True)
    assert bilinear.min() >= grid.min() - 1e-6 and bilinear.max() <= grid.max() + 1e-6


def test_return_all_layers_and_raw_attention(pixels):
    model = build("vit")
    every_layer = AttentionRollout(model).attribute(pixels, return_all_layers=True, return_patch_grid=True)
    assert every_layer.shape == (2, 2, *GRID)
    raw = RawAttention(model).attribute(pixels, return_patch_grid=True)
    expected = reference_attentions(model, pixels).mean(dim=2)[-1, :, 0, 1:].reshape(2, *GRID)
    torch.testing.assert_close(raw, expected, atol=1e-6, rtol=0)


def test_pixel_map_renders_with_captum_visualize_image_attr(pixels, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from captum.attr import visualization
    from matplotlib.image import imread

    attribution = AttentionRollout(build("vit")).attribute(pixels)
    image = pixels[0].permute(1, 2, 0).numpy()
    image = (image - image.min()) / np.ptp(image)
    figure, _ = visualization.visualize_image_attr(attribution[0].permute(1, 2, 0).numpy(), image,
                                                   method="blended_heat_map", sign="positive", use_pyplot=False)
    path = tmp_path / "rollout.png"
    figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rendered = imread(path)
    assert rendered.ndim == 3 and rendered.shape[0] > 16 and rendered.std() > 0


def test_inputs_are_validated_per_family(pixels):
    vit = build("vit")
    with pytest.raises(InvalidInputTypeError, match="float pixel values"):
        AttentionRollout(vit).attribute(pixels.long())
    bert = T.BertModel(T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=37)).eval()
    with pytest.raises(InvalidInputTypeError, match="integer token ids"):
        AttentionRollout(bert).attribute(torch.rand(1, 5))
    with pytest.raises(InvalidParameterError, match="vision model"):
        AttentionRollout(bert).attribute(torch.tensor([[1, 5, 7]]), return_patch_grid=True)


# ---- timm ----------------------------------------------------------------------------------------

class _TimmStyleAttention(nn.Module):
    """Mirrors timm.models.vision_transformer.Attention: fused SDPA unless ``fused_attn`` is off."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.fused_attn = heads, True
        self.qkv, self.proj, self.attn_drop = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x):
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.fused_attn:
            x = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            attn = self.attn_drop((q * q.shape[-1] ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1))
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class _PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.patch_size = (patch, patch)
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _TimmStyleViT(nn.Module):
    def __init__(self, dim=16, heads=2, depth=2, patch=4):
        super().__init__()
        self.patch_embed = _PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(_TimmStyleAttention(dim, heads) for _ in range(depth))

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        for block in self.blocks:
            x = x + block(x)
        return x[:, 0]


def _weights_by_hand(model, pixels):
    """Unfused forward with our own hooks on attn_drop: the reference weights."""
    recorded, handles = [], []
    attention = [m for m in model.modules() if hasattr(m, "fused_attn") and hasattr(m, "attn_drop")]
    flags = [module.fused_attn for module in attention]
    for module in attention:
        module.fused_attn = False
        handles.append(module.attn_drop.register_forward_hook(lambda m, i, o: recorded.append(o.detach())))
    with torch.no_grad():
        model(pixels)
    for module, flag, handle in zip(attention, flags, handles):
        module.fused_attn = flag
        handle.remove()
    return torch.stack(recorded)


def test_timm_style_structure_is_captured_and_restored(pixels):
    torch.manual_seed(0)
    model = _TimmStyleViT().eval()
    assert isinstance(find_adapter(model), TimmVisionAdapter)
    grid = AttentionRollout(model).attribute(pixels, return_patch_grid=True)
    expected = attention_rollout(_weights_by_hand(model, pixels))[-1, :, 0, 1:].reshape(2, *GRID)
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)
    assert all(block.fused_attn for block in model.blocks)
    assert all(not m._forward_hooks for m in model.modules())
    wrapped = nn.Sequential(model, nn.Linear(16, 2)).eval()  # inside a user module
    torch.testing.assert_close(AttentionRollout(wrapped).attribute(pixels, return_patch_grid=True), grid)


def test_real_timm_vit_when_installed(pixels):
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2,
                              num_classes=3).eval()
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    grid = AttentionRollout(model).attribute(pixels, return_patch_grid=True)
    prefix = model.num_prefix_tokens
    expected = attention_rollout(_weights_by_hand(model, pixels))[-1, :, 0, prefix:].reshape(2, *GRID)
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == flags
    assert AttentionRollout(model).attribute(pixels).shape == pixels.shape
