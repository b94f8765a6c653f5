"""Per-example correlations between attention scores and reference attributions on one trained model.

Abnar & Zuidema (2020), Sec. 5, Tables 1–2: for every held-out example and every layer, the
Spearman correlation between the attention-based relevance of the inputs (raw attention,
rollout, flow) and their importance by blank-out (Table 1) or input gradients (Table 2).
Every choice that differs between the
protocols (see :mod:`~captum_attnflow.experiments.sva.protocol`) is computed once per
batch, so any number of configurations is correlated from the same model outputs.
"""

import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.stats import rankdata
from tqdm.auto import tqdm

from captum_attnflow.evaluation import BlankOut, InputGradients, reduce_output_positions, spearman_from_ranks
from captum_attnflow.experiments.sva.data import Example, Vocabulary, collate
from captum_attnflow.experiments.sva.model import SvaTransformer
from captum_attnflow.experiments.sva.protocol import CLS_VARIANTS, EvaluationChoices
from captum_attnflow.functional import attention_flow, attention_rollout, fuse_heads

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
    # token_index="all": every output row of every layer in one call (rows of padding are 0);
    # allow_large: the batch size bounds each call; every example is wanted.
    matrices["flow"] = attention_flow(attentions, token_index="all", return_all_layers=True,
                                      attention_mask=mask, backend=flow_backend, allow_large=True,
                                      show_progress=False)
    timings["flow"] += time.perf_counter() - tick
    return matrices


def method_scores(matrices: Mapping[str, torch.Tensor], real: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{relevance: {method: (L, B, S)}}`` for every relevance choice (``[CLS]`` row, max, mean)."""
    return {relevance: {method: reduce_output_positions(matrix.float(), reduction, token_index=0, output_mask=real)
                        for method, matrix in matrices.items()}
            for relevance, reduction in RELEVANCES.items()}


def reference_scores(model: SvaTransformer, batch: Dict[str, torch.Tensor], vocab: Vocabulary,
                     end_token: bool) -> Dict[tuple, torch.Tensor]:
    """Every reference variant the configurations use, ``(B, S)`` each, for the gold class.

    Blank-out replaces a token by ``[UNK]`` or ``[PAD]`` (an ``[EOS]`` scores 0, as in the
    authors' code). Input gradients are taken at ``model.embeddings`` (token + position, the
    authors' "input"), reduced three ways.
    """
    wrapped = ProbabilityModel(model)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    args = (mask,)
    unscored = (vocab.eos_id,) if end_token else ()
    result: Dict[tuple, torch.Tensor] = {}
    for name, replacement in (("unk", vocab.unk_id), ("pad", vocab.pad_id)):
        blank = BlankOut(wrapped, replacement, output_type="probs", unscored_token_ids=unscored)
        result[("blank_out", name, "gold")] = blank.attribute(
            input_ids, target=labels, additional_forward_args=args, perturbations_per_eval=input_ids.shape[1])
    for reducer in ("l2", "sum_abs", "grad_x_input"):
        gradients = InputGradients(wrapped, model.embeddings, reducer=reducer)
        result[("input_gradients", reducer)] = gradients.attribute(input_ids, target=labels,
                                                                   additional_forward_args=args)
    return result


def reference_keys(choices: EvaluationChoices) -> Dict[str, tuple]:
    """``{reference: key into BatchScores.references}`` chosen by ``choices``."""
    return {"blank_out": ("blank_out", choices.blank_out_id, choices.blank_out_class),
            "input_gradients": ("input_gradients", choices.gradient_reducer)}


class BatchCorrelator:
    """Spearman correlations of one batch under many configurations.

    Configurations share most score vectors, and ranking is the costly step, so every
    (vector, ranked tokens, tie rule) is ranked once and cached; the correlation itself is
    :func:`~captum_attnflow.evaluation.spearman_from_ranks` (as in ``per_example_spearman``).
    """

    def __init__(self, scores: BatchScores):
        self.scores = scores
        self._masks: Dict[tuple, np.ndarray] = {}
        self._groups: Dict[tuple, List[Tuple[np.ndarray, int]]] = {}
        self._ranks: Dict[tuple, List[Optional[np.ndarray]]] = {}

    def correlate(self, choices: EvaluationChoices) -> Dict[Cell, np.ndarray]:
        """``{(cls variant, reference, method, layer): (B,)}`` correlations (``nan`` if undefined)."""
        result = {}
        for variant in CLS_VARIANTS:
            tokens = (variant, choices.rank_end_token)
            for reference, key in reference_keys(choices).items():
                reference_ranks = self._ranked(("reference", key), self.scores.references[key], tokens, choices.ranks)
                for method, values in self.scores.methods[choices.relevance].items():
                    for layer in range(values.shape[0]):
                        method_ranks = self._ranked(("method", choices.relevance, method, layer), values[layer],
                                                    tokens, choices.ranks)
                        result[(variant, reference, method, layer + 1)] = self._spearman(
                            tokens, method_ranks, reference_ranks, choices.formula)
        return result

    def _mask(self, tokens: tuple) -> np.ndarray:
        if tokens not in self._masks:
            variant, rank_end_token = tokens
            ranked = self.scores.real.clone()
            if not rank_end_token:
                ranked &= ~self.scores.end_token
            if variant == "without_cls":
                ranked[:, 0] = False
            self._masks[tokens] = ranked.numpy()
        return self._masks[tokens]

    def _length_groups(self, tokens: tuple) -> List[Tuple[np.ndarray, int]]:
        # Rows with the same number of ranked tokens are ranked together (vectorised).
        if tokens not in self._groups:
            lengths = self._mask(tokens).sum(axis=1)
            self._groups[tokens] = [(np.flatnonzero(lengths == n), int(n)) for n in np.unique(lengths)]
        return self._groups[tokens]

    def _ranked(self, key: tuple, values: torch.Tensor, tokens: tuple, ranks: str) -> List[Optional[np.ndarray]]:
        cache_key = (key, tokens, ranks)
        if cache_key not in self._ranks:
            array, mask = values.detach().double().numpy(), self._mask(tokens)
            self._ranks[cache_key] = [
                rankdata(array[rows][mask[rows]].reshape(len(rows), n), method=ranks, axis=1) if n >= 2 else None
                for rows, n in self._length_groups(tokens)]
        return self._ranks[cache_key]

    def _spearman(self, tokens, method_ranks, reference_ranks, formula: str) -> np.ndarray:
        result = np.full(len(self._mask(tokens)), np.nan)
        for (rows, _), x, y in zip(self._length_groups(tokens), method_ranks, reference_ranks):
            if x is not None:
                result[rows] = spearman_from_ranks(x, y, formula)
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
        correlator = BatchCorrelator(scores)
        for name, choices in configurations.items():
            for cell, values in correlator.correlate(choices).items():
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
