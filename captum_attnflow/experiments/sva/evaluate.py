"""Per-example correlations between attention scores and reference attributions on one trained model.

Abnar & Zuidema (2020), Sec. 5, Tables 1–2: for every held-out example and every layer, the
Spearman correlation between the attention-based relevance of the inputs (raw attention,
rollout, flow) and their importance by blank-out (Table 1) or input gradients (Table 2); we
add integrated gradients as a third reference. Every choice that differs between the
protocols (see :mod:`~captum_attnflow.experiments.sva.protocol`) is computed once per
batch, so any number of configurations is correlated from the same model outputs.
"""

import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from tqdm.auto import tqdm

from captum_attnflow.evaluation import BlankOut, InputGradients, per_example_spearman, reduce_output_positions
from captum_attnflow.experiments.sva.data import Example, Vocabulary, collate
from captum_attnflow.experiments.sva.model import SvaTransformer
from captum_attnflow.experiments.sva.protocol import CLS_VARIANTS, EvaluationChoices
from captum_attnflow.functional import attention_flow, attention_rollout, fuse_heads

IG_STEPS = 32
RELEVANCES = {"cls": "row", "max": "max", "mean": "mean"}
#: Cell key: (cls variant, reference, method, layer numbered from 1).
Cell = Tuple[str, str, str, int]


class ProbabilityModel(torch.nn.Module):
    """Wraps :class:`SvaTransformer` to return class probabilities (what the references explain)."""

    def __init__(self, model: SvaTransformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids, attention_mask=attention_mask).softmax(dim=-1)


@dataclass
class BatchScores:
    """Everything the configurations choose from, for one batch."""

    methods: Dict[str, Dict[str, torch.Tensor]]  # relevance -> method -> (L, B, S)
    references: Dict[tuple, torch.Tensor]  # (reference, *choices) -> (B, S)
    real: torch.Tensor  # (B, S) bool
    end_token: torch.Tensor  # (B, S) bool, the [EOS] positions


def attention_matrices(model: SvaTransformer, input_ids: torch.Tensor, mask: torch.Tensor,
                       flow_backend: str, timings: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """``{"raw", "rollout", "flow": (L, B, S, S)}``: every output row after every layer."""
    tick = time.perf_counter()
    with torch.no_grad():
        _, attentions = model(input_ids, attention_mask=mask, output_attentions=True)
    matrices = {"raw": torch.stack([fuse_heads(layer) for layer in attentions]),
                "rollout": attention_rollout(attentions, attention_mask=mask)}
    timings["attention"] += time.perf_counter() - tick
    tick = time.perf_counter()
    every_row = list(range(input_ids.shape[1]))
    # allow_large: the batch size bounds each call; every example is wanted.
    matrices["flow"] = torch.stack([
        attention_flow(attentions, output_positions=every_row, layer=layer, attention_mask=mask,
                       backend=flow_backend, allow_large=True)
        for layer in range(len(attentions))])
    timings["flow"] += time.perf_counter() - tick
    return matrices


def method_scores(matrices: Mapping[str, torch.Tensor], real: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{relevance: {method: (L, B, S)}}`` for every relevance choice (``[CLS]`` row, max, mean)."""
    return {relevance: {method: reduce_output_positions(matrix.float(), reduction, row=0, output_mask=real)
                        for method, matrix in matrices.items()}
            for relevance, reduction in RELEVANCES.items()}


def reference_scores(model: SvaTransformer, batch: Dict[str, torch.Tensor], vocab: Vocabulary,
                     end_token: bool) -> Dict[tuple, torch.Tensor]:
    """Every reference variant the configurations use, ``(B, S)`` each, for the gold class.

    Blank-out replaces a token by ``[UNK]`` or ``[PAD]`` (an ``[EOS]`` scores 0, as in the
    authors' code); with two classes the predicted class gives the same ``|Δp|``, computed
    once for ``[UNK]`` to show it. Input gradients are taken at ``model.embeddings`` (token +
    position, the authors' "input"); integrated gradients at the token embeddings from an
    all-``[UNK]`` input that keeps ``[CLS]``, ``[EOS]`` and padding.
    """
    wrapped = ProbabilityModel(model)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    args, seq_len = (mask,), input_ids.shape[1]
    unscored = (vocab.eos_id,) if end_token else ()
    result = {}
    for name, replacement, target in (("unk", vocab.unk_id, labels), ("pad", vocab.pad_id, labels),
                                      ("unk", vocab.unk_id, None)):
        blank = BlankOut(wrapped, replacement, output_type="probs", unscored_token_ids=unscored)
        scores = blank.attribute(input_ids, target=target, additional_forward_args=args,
                                 perturbations_per_eval=seq_len)
        result[("blank_out", name, "gold" if target is not None else "predicted")] = scores
    for reducer in ("l2", "sum_abs", "grad_x_input"):
        gradients = InputGradients(wrapped, model.embeddings, reducer=reducer)
        result[("input_gradients", reducer)] = gradients.attribute(input_ids, target=labels,
                                                                   additional_forward_args=args)
    keep = (~mask.bool()) | (input_ids == vocab.cls_id) | (input_ids == vocab.eos_id)
    baseline_ids = torch.where(keep, input_ids, torch.full_like(input_ids, vocab.unk_id))
    integrated = LayerIntegratedGradients(wrapped, model.get_input_embeddings())
    ig = integrated.attribute(input_ids, baselines=baseline_ids, target=labels, additional_forward_args=args,
                              n_steps=IG_STEPS, internal_batch_size=IG_STEPS * input_ids.shape[0])
    result[("integrated_gradients",)] = ig.sum(dim=-1).abs().detach()
    return result


def ranked_tokens(scores: BatchScores, choices: EvaluationChoices) -> Dict[str, torch.Tensor]:
    """``{cls variant: (B, S) bool}``: the tokens each correlation ranks."""
    ranked = scores.real.clone()
    if not choices.rank_end_token:
        ranked &= ~scores.end_token
    without_cls = ranked.clone()
    without_cls[:, 0] = False
    return {"with_cls": ranked, "without_cls": without_cls}


def chosen_references(scores: BatchScores, choices: EvaluationChoices) -> Dict[str, torch.Tensor]:
    return {"blank_out": scores.references[("blank_out", choices.blank_out_id, choices.blank_out_class)],
            "input_gradients": scores.references[("input_gradients", choices.gradient_reducer)],
            "integrated_gradients": scores.references[("integrated_gradients",)]}


def correlate(scores: BatchScores, choices: EvaluationChoices) -> Dict[Cell, np.ndarray]:
    """``{(cls variant, reference, method, layer): (B,)}`` Spearman correlations (``nan`` if undefined)."""
    result = {}
    references = chosen_references(scores, choices)
    for variant, tokens in ranked_tokens(scores, choices).items():
        for reference, reference_values in references.items():
            for method, values in scores.methods[choices.relevance].items():
                for layer in range(values.shape[0]):
                    result[(variant, reference, method, layer + 1)] = per_example_spearman(
                        values[layer], reference_values, tokens, ranks=choices.ranks, formula=choices.formula)
    return result


def _length_sorted_batches(examples: Sequence[Example], batch_size: int) -> List[List[int]]:
    # Batching examples of similar length avoids computing on padding (most of the cost here).
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def evaluate_examples(model: SvaTransformer, vocab: Vocabulary, examples: Sequence[Example],
                      configurations: Mapping[str, EvaluationChoices], *, end_token: bool,
                      batch_size: int = 32, flow_backend: str = "auto", progress: bool = True) -> dict:
    """Correlations of every configuration for every example (in the order of ``examples``).

    Returns ``{"correlations": {configuration: {cell: (N,) array}}, "groups": (N,) str array,
    "timings": seconds per stage}``.
    """
    model.eval()
    n = len(examples)
    correlations: Dict[str, Dict[Cell, np.ndarray]] = {name: {} for name in configurations}
    timings = {"attention": 0.0, "flow": 0.0, "references": 0.0, "correlations": 0.0}
    for indices in tqdm(_length_sorted_batches(examples, batch_size), desc="evaluate", disable=not progress,
                        mininterval=5):
        batch = collate([examples[i] for i in indices], vocab, end_token=end_token)
        scores = _batch_scores(model, batch, vocab, end_token, flow_backend, timings)
        tick = time.perf_counter()
        for name, choices in configurations.items():
            for cell, values in correlate(scores, choices).items():
                correlations[name].setdefault(cell, np.full(n, np.nan))[indices] = values
        timings["correlations"] += time.perf_counter() - tick
    groups = np.array([example.group for example in examples])
    return {"correlations": correlations, "groups": groups, "timings": timings}


def _batch_scores(model, batch, vocab, end_token, flow_backend, timings) -> BatchScores:
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    real = mask.bool()
    matrices = attention_matrices(model, input_ids, mask, flow_backend, timings)
    tick = time.perf_counter()
    references = reference_scores(model, batch, vocab, end_token)
    timings["references"] += time.perf_counter() - tick
    return BatchScores(methods=method_scores(matrices, real), references=references, real=real,
                       end_token=(input_ids == vocab.eos_id) & real)


def flatten(correlations: Mapping[str, Mapping[Cell, np.ndarray]]) -> Dict[str, np.ndarray]:
    """``{"configuration|variant|reference|method|layer": values}`` for ``np.savez``."""
    return {"|".join([name, *map(str, cell)]): values
            for name, cells in correlations.items() for cell, values in cells.items()}


def unflatten(arrays: Mapping[str, np.ndarray]) -> Dict[str, Dict[Cell, np.ndarray]]:
    """Inverse of :func:`flatten`."""
    result: Dict[str, Dict[Cell, np.ndarray]] = {}
    for key, values in arrays.items():
        name, variant, reference, method, layer = key.split("|")
        result.setdefault(name, {})[(variant, reference, method, int(layer))] = np.asarray(values)
    return result


def cells_of(correlations: Mapping[Cell, np.ndarray], variant: Optional[str] = None) -> List[Cell]:
    """The cells of one configuration, optionally one ``[CLS]`` variant, in a stable order."""
    assert variant is None or variant in CLS_VARIANTS
    return sorted(cell for cell in correlations if variant is None or cell[0] == variant)
