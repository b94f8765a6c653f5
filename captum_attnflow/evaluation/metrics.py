"""Metrics that score token attributions: rank correlation, blank-out, AOPC, Captum's
infidelity / sensitivity with token-id perturbations.

Every function here works on one batch of token ids ``(B, S)`` and returns one value per
example, so :mod:`captum_attnflow.evaluation.harness` only has to batch and aggregate.

Which tokens take part
----------------------
All metrics compare or perturb only *eligible* tokens, given by :func:`eligible_tokens`:
real tokens (``attention_mask == 1``), minus ``exclude_positions`` (e.g. ``(0,)`` for
``[CLS]``) and minus ``special_tokens_mask`` (e.g. from a tokenizer's
``return_special_tokens_mask=True``, which also catches ``[SEP]`` at varying positions).
"""

import functools
from numbers import Integral
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from captum.attr import Attribution, FeatureAblation
from scipy.stats import rankdata

from captum_attnflow._args import format_forward_args
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

#: ERASER's default AOPC bins (fractions of the eligible tokens).
AOPC_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)
OUTPUT_TYPES = ("logits", "probs")
REMOVALS = ("replace", "mask")


# --------------------------------------------------------------------------- tokens


def eligible_tokens(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                    exclude_positions: Sequence[int] = (),
                    special_tokens_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, S)`` bool mask of the tokens that metrics compare or perturb.

    Args:
        input_ids: ``(B, S)`` token ids (only the shape is used).
        attention_mask: ``(B, S)`` 0/1, 1 = real token; None means every token is real.
        exclude_positions: positions dropped in every example; negative indices count from
            the end of the padded sequence (use ``special_tokens_mask`` for ``[SEP]`` when
            padding varies).
        special_tokens_mask: ``(B, S)`` 0/1, 1 = special token to drop.

    Example:
        >>> import torch
        >>> ids = torch.tensor([[101, 7, 8, 102, 0]])
        >>> eligible_tokens(ids, torch.tensor([[1, 1, 1, 1, 0]]), exclude_positions=(0,),
        ...                 special_tokens_mask=torch.tensor([[1, 0, 0, 1, 0]])).int()
        tensor([[0, 1, 1, 0, 0]], dtype=torch.int32)
    """
    batch_size, seq_len = _check_ids(input_ids).shape
    keep = torch.ones(batch_size, seq_len, dtype=torch.bool, device=input_ids.device)
    if attention_mask is not None:
        keep &= _check_same_shape(attention_mask, input_ids, "attention_mask").bool()
    if special_tokens_mask is not None:
        keep &= ~_check_same_shape(special_tokens_mask, input_ids, "special_tokens_mask").bool()
    for position in exclude_positions:
        if not isinstance(position, Integral) or not -seq_len <= position < seq_len:
            raise InvalidParameterError(
                f"exclude_positions contains {position!r}; use ints in [{-seq_len}, {seq_len - 1}].")
        keep[:, position] = False
    return keep


def _check_ids(input_ids) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise InvalidInputError("input_ids must be a (B, S) torch.Tensor of token ids.")
    return input_ids


def _check_same_shape(tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.shape != like.shape:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise InvalidInputError(f"{name} must be a tensor of shape {tuple(like.shape)}, got {shape}.")
    return tensor.to(like.device)


# --------------------------------------------------------------------------- correlation

#: How ties are ranked: ``"average"`` (scipy's default, the textbook Spearman) or ``"dense"``
#: (1, 2, 3 ... over the distinct values, pandas ``rank(method="dense")``, as in the authors' code).
RANK_METHODS = ("average", "dense")
#: ``"pearson"``: Pearson correlation of the ranks (exact with ties); ``"difference"``:
#: ``1 − 6Σd²/(n(n²−1))`` on the ranks, the shortcut that is exact only without ties (the authors').
SPEARMAN_FORMULAS = ("pearson", "difference")
#: What an undefined correlation counts as in a mean: left out, or 0 (the authors' code).
UNDEFINED_POLICIES = ("exclude", "zero")


def spearman_correlation(x, y, *, ranks: str = "average", formula: str = "pearson") -> float:
    """Spearman's rank correlation of two 1-D vectors, ``nan`` when it is undefined.

    The default is the textbook statistic, as :func:`scipy.stats.spearmanr`: ties get their
    average rank, then the Pearson correlation of the ranks is returned. It is ``nan`` (no
    warning) when fewer than two values are given or either vector is constant: a constant
    attribution has no ranking, and scoring it 0 would silently pull averages towards
    "uncorrelated".

    ``ranks="dense", formula="difference"`` is the variant of Abnar & Zuidema's code
    (pandas dense ranks put into ``1 − 6Σd²/(n(n²−1))``): with ties it is not a correlation
    (it can leave [−1, 1] and is defined for constant vectors), which is why it is an option.

    Args:
        x, y: 1-D sequences of equal length.
        ranks: one of :data:`RANK_METHODS`.
        formula: one of :data:`SPEARMAN_FORMULAS`; ``"difference"`` is ``nan`` only for n < 2.

    Example:
        >>> spearman_correlation([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
        0.5
        >>> spearman_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
        nan
        >>> spearman_correlation([1.0, 1.0, 2.0], [1.0, 2.0, 3.0], ranks="dense", formula="difference")
        0.5
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InvalidInputError(f"x and y must have the same length, got {x.size} and {y.size}.")
    return float(_row_spearman(x[None], y[None], ranks, formula)[0])


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidParameterError(f"{name}={value!r} is not supported; use one of {tuple(choices)}.")
    return value


def _row_spearman(x: np.ndarray, y: np.ndarray, ranks: str, formula: str) -> np.ndarray:
    """Spearman of each row pair of two ``(B, n)`` float64 arrays (same n for every row)."""
    _check_choice("ranks", ranks, RANK_METHODS)
    if x.shape[1] < 2:
        return np.full(x.shape[0], np.nan)
    return spearman_from_ranks(rankdata(x, method=ranks, axis=1), rankdata(y, method=ranks, axis=1), formula)


def spearman_from_ranks(rank_x: np.ndarray, rank_y: np.ndarray, formula: str = "pearson") -> np.ndarray:
    """Spearman correlation of each row of two ``(B, n)`` arrays of ranks (e.g. from
    :func:`scipy.stats.rankdata` with ``axis=1``); lets callers rank once and correlate often.

    ``nan`` where n < 2, and for ``formula="pearson"`` where a row's ranks are all equal.

    Example:
        >>> import numpy as np
        >>> spearman_from_ranks(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 3.0, 2.0]]))
        array([0.5])
    """
    _check_choice("formula", formula, SPEARMAN_FORMULAS)
    rank_x = np.asarray(rank_x, dtype=np.float64)
    rank_y = np.asarray(rank_y, dtype=np.float64)
    batch, n = rank_x.shape
    if n < 2:
        return np.full(batch, np.nan)
    if formula == "difference":
        return 1.0 - 6.0 * ((rank_x - rank_y) ** 2).sum(axis=1) / (n * (n * n - 1.0))
    defined = (np.ptp(rank_x, axis=1) > 0) & (np.ptp(rank_y, axis=1) > 0)
    rank_x = rank_x - rank_x.mean(axis=1, keepdims=True)
    rank_y = rank_y - rank_y.mean(axis=1, keepdims=True)
    norms = np.sqrt((rank_x * rank_x).sum(axis=1) * (rank_y * rank_y).sum(axis=1))
    values = np.divide((rank_x * rank_y).sum(axis=1), norms, out=np.full(batch, np.nan), where=defined)
    return np.clip(values, -1.0, 1.0)  # rounding can overshoot ±1 by an ulp


def per_example_spearman(attributions: torch.Tensor, reference: torch.Tensor,
                         mask: Optional[torch.Tensor] = None, *, ranks: str = "average",
                         formula: str = "pearson") -> np.ndarray:
    """Spearman correlation of each row of ``attributions`` with the same row of ``reference``.

    Args:
        attributions, reference: ``(B, S)`` token scores.
        mask: ``(B, S)`` bool, only True tokens are ranked (see :func:`eligible_tokens`);
            None compares every token.
        ranks, formula: as in :func:`spearman_correlation`.

    Returns:
        ``(B,)`` float64 array; ``nan`` where :func:`spearman_correlation` is undefined.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[9.0, 1.0, 2.0, 3.0]])
        >>> blank = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
        >>> per_example_spearman(scores, blank, mask=torch.tensor([[False, True, True, True]]))
        array([-1.])
    """
    attributions = _as_token_scores(attributions, "attributions")
    reference = _check_same_shape(_as_token_scores(reference, "reference"), attributions, "reference")
    if mask is None:
        mask = torch.ones_like(attributions, dtype=torch.bool)
    mask = _check_same_shape(mask, attributions, "mask").bool()
    # float64: float32 scores that differ in the last bit must stay distinct ranks.
    a, r = (t.detach().cpu().double().numpy() for t in (attributions, reference))
    m = mask.cpu().numpy()
    result = np.full(a.shape[0], np.nan)
    lengths = m.sum(axis=1)
    # Rows with the same number of ranked tokens are ranked together, vectorised.
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        selected = m[rows]
        result[rows] = _row_spearman(a[rows][selected].reshape(len(rows), length),
                                     r[rows][selected].reshape(len(rows), length), ranks, formula)
    return result


def _as_token_scores(scores, name: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise InvalidInputError(f"{name} must be a (B, S) tensor of token scores, got {shape}.")
    return scores.detach()


def summarize(values, *, undefined: str = "exclude") -> Tuple[float, float, int]:
    """``(mean, std, n)`` over ``values``.

    ``std`` is the sample standard deviation (``ddof=1``), ``nan`` when ``n < 2``. With
    ``undefined="exclude"`` ``nan`` entries (undefined correlations) are left out and not
    counted in ``n``; with ``"zero"`` they count as 0, as in the authors' code.

    Example:
        >>> summarize([0.5, float("nan"), 1.0])
        (0.75, 0.3535533905932738, 2)
        >>> summarize([0.5, float("nan"), 1.0], undefined="zero")[0]
        0.5
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = _apply_undefined(values, undefined)
    values = values[np.isfinite(values)]
    n = int(values.size)
    mean = float(values.mean()) if n else float("nan")
    std = float(values.std(ddof=1)) if n > 1 else float("nan")
    return mean, std, n


def _apply_undefined(values: np.ndarray, undefined: str) -> np.ndarray:
    _check_choice("undefined", undefined, UNDEFINED_POLICIES)
    return np.where(np.isnan(values), 0.0, values) if undefined == "zero" else values


def bootstrap_mean_ci(values, *, n_resamples: int = 2000, level: float = 0.95, undefined: str = "exclude",
                      seed: int = 0) -> Tuple[float, float, float]:
    """Mean of a ``(seeds, examples)`` table and its percentile bootstrap confidence interval.

    Rows are training runs (seeds), columns the evaluation examples they share. Each resample
    draws seeds *and* examples with replacement (a two-way bootstrap), so the interval covers
    both run-to-run and example-to-example variation; with one row it is the ordinary
    bootstrap over examples. ``nan`` entries are handled as in :func:`summarize`.

    Returns:
        ``(mean, low, high)``.

    Example:
        >>> import numpy as np
        >>> mean, low, high = bootstrap_mean_ci(np.full((3, 50), 0.4))
        >>> round(mean, 6), round(low, 6), round(high, 6)
        (0.4, 0.4, 0.4)
    """
    table = _apply_undefined(np.atleast_2d(np.asarray(values, dtype=np.float64)), undefined)
    mean, low, high = bootstrap_mean_cis(table[None], n_resamples=n_resamples, level=level, seed=seed)[0]
    return float(mean), float(low), float(high)


def bootstrap_mean_cis(tables, *, n_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> np.ndarray:
    """:func:`bootstrap_mean_ci` for ``K`` tables ``(K, seeds, examples)`` with the same resamples.

    ``nan`` entries are left out. Returns ``(K, 3)``: mean, low, high.
    """
    point, resampled = bootstrap_means(tables, n_resamples=n_resamples, seed=seed)
    low, high = _percentile_interval(resampled, level)
    return np.stack([point, low, high], axis=1)


def bootstrap_means(tables, *, n_resamples: int = 2000, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Means of ``K`` tables ``(K, seeds, examples)`` and their two-way bootstrap resamples.

    Every table is resampled with the *same* draws of seeds and examples, so differences
    between tables (e.g. one protocol choice switched) are paired. ``nan`` entries are left
    out of every mean.

    Returns:
        ``(point (K,), resampled (K, n_resamples))``; a resample without any finite entry is ``nan``.
    """
    tables = np.asarray(tables, dtype=np.float64)
    if tables.ndim != 3 or 0 in tables.shape:
        raise InvalidInputError(f"tables must be a non-empty (K, seeds, examples) array, got {tables.shape}.")
    seed_weights, example_weights = _bootstrap_weights(tables.shape[1], tables.shape[2], n_resamples, seed)
    finite = np.isfinite(tables)
    filled = np.where(finite, tables, 0.0)
    resampled = np.empty((len(tables), n_resamples))
    for k in range(len(tables)):
        # Σ_s Σ_e w_s v_e t[s, e] / Σ_s Σ_e w_s v_e [t finite], for every resample at once.
        totals = ((seed_weights @ filled[k]) * example_weights).sum(axis=1)
        counts = ((seed_weights @ finite[k]) * example_weights).sum(axis=1)
        resampled[k] = np.divide(totals, counts, out=np.full(n_resamples, np.nan), where=counts > 0)
    n_finite = finite.sum(axis=(1, 2))
    point = np.divide(filled.sum(axis=(1, 2)), n_finite, out=np.full(len(tables), np.nan), where=n_finite > 0)
    return point, resampled


def bootstrap_difference_ci(treated, baseline, *, n_resamples: int = 2000, level: float = 0.95,
                            seed: int = 0) -> Tuple[float, float, float]:
    """``mean(treated) − mean(baseline)`` of two ``(seeds, examples)`` tables, with a paired bootstrap CI.

    Both tables are resampled with the same seeds and examples; ``nan`` entries are left out
    of each mean (so the two may average different examples).

    Example:
        >>> import numpy as np
        >>> base = np.arange(12.0).reshape(2, 6)
        >>> tuple(round(v, 6) for v in bootstrap_difference_ci(base + 0.25, base))
        (0.25, 0.25, 0.25)
    """
    treated = np.asarray(treated, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if treated.shape != baseline.shape:
        raise InvalidInputError(f"treated and baseline must have the same shape, got {treated.shape} and "
                                f"{baseline.shape}.")
    point, resampled = bootstrap_means(np.stack([treated, baseline]), n_resamples=n_resamples, seed=seed)
    low, high = _percentile_interval((resampled[0] - resampled[1])[None], level)
    return float(point[0] - point[1]), float(low[0]), float(high[0])


def _percentile_interval(resampled: np.ndarray, level: float) -> Tuple[np.ndarray, np.ndarray]:
    if not 0.0 < level < 1.0:
        raise InvalidParameterError(f"level={level} must be in (0, 1).")
    tail = (1.0 - level) / 2 * 100
    low, high = np.full(len(resampled), np.nan), np.full(len(resampled), np.nan)
    defined = np.isfinite(resampled).any(axis=1)
    if defined.any():
        low[defined], high[defined] = np.nanpercentile(resampled[defined], [tail, 100 - tail], axis=1)
    return low, high


def _bootstrap_weights(n_seeds: int, n_examples: int, n_resamples: int, seed: int):
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, Integral) or n_resamples < 1:
        raise InvalidParameterError(f"n_resamples must be a positive int, got {n_resamples!r}.")
    if isinstance(seed, Integral) and not isinstance(seed, bool):
        return _cached_bootstrap_weights(int(n_seeds), int(n_examples), int(n_resamples), int(seed))
    return _draw_bootstrap_weights(n_seeds, n_examples, n_resamples, seed)


@functools.lru_cache(maxsize=8)
def _cached_bootstrap_weights(n_seeds: int, n_examples: int, n_resamples: int, seed: int):
    """The draws depend only on the sizes and an int seed: a report with thousands of cells draws them once."""
    return _draw_bootstrap_weights(n_seeds, n_examples, n_resamples, seed)


def _draw_bootstrap_weights(n_seeds: int, n_examples: int, n_resamples: int, seed):
    rng = np.random.default_rng(seed)
    # Multinomial counts = how often each seed / example is drawn in a resample.
    seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples).astype(np.float64)
    example_weights = rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples),
                                      size=n_resamples).astype(np.float64)
    seed_weights.flags.writeable = False  # shared between calls
    example_weights.flags.writeable = False
    return seed_weights, example_weights


# --------------------------------------------------------------------------- model outputs


def probability_forward(forward_func: Callable, output_type: str = "logits") -> Callable:
    """Wrap ``forward_func`` so it returns class probabilities ``(B, C)``.

    ``output_type="logits"`` applies a softmax over the last dimension, ``"probs"`` passes
    the output through. Metrics that speak of ``p(y|x)`` call the wrapped function.

    Example:
        >>> import torch
        >>> probs = probability_forward(lambda ids: torch.tensor([[0.0, 0.0]]))
        >>> probs(torch.tensor([[1, 2]]))
        tensor([[0.5000, 0.5000]])
    """
    if output_type not in OUTPUT_TYPES:
        raise InvalidParameterError(f"output_type={output_type!r} is not supported; use one of {OUTPUT_TYPES}.")
    if output_type == "probs":
        return forward_func

    def forward_probabilities(*args, **kwargs):
        return torch.softmax(_logits_of(forward_func(*args, **kwargs)), dim=-1)

    return forward_probabilities


def _logits_of(output):
    # Hugging Face models return a ModelOutput; plain modules return the tensor.
    return output.logits if hasattr(output, "logits") else output


def _class_probability(prob_forward: Callable, input_ids, additional_forward_args, target) -> torch.Tensor:
    with torch.no_grad():
        probs = prob_forward(input_ids, *additional_forward_args)
    return probs.gather(1, target.view(-1, 1)).squeeze(1)


def _resolve_target(prob_forward: Callable, input_ids, additional_forward_args, target) -> torch.Tensor:
    """``(B,)`` long tensor of the classes to explain; None means the predicted class."""
    batch_size = input_ids.shape[0]
    if target is None:
        with torch.no_grad():
            return prob_forward(input_ids, *additional_forward_args).argmax(dim=-1)
    target = torch.as_tensor(target, device=input_ids.device).long().view(-1)
    if target.numel() == 1:
        target = target.expand(batch_size)
    if target.numel() != batch_size:
        raise InvalidInputError(f"target has {target.numel()} entries for a batch of {batch_size}.")
    return target


# --------------------------------------------------------------------------- blank-out


class BlankOut(Attribution):
    r"""Blank-out attribution of Abnar & Zuidema (2020, Sec. 5): ``|Δp(y)|`` per token.

    Token ``i`` scores ``|p(y | x) − p(y | x with x_i replaced by UNK)|``, one forward pass
    per token. It is Captum's :class:`~captum.attr.FeatureAblation` with every token its own
    feature, ``baselines=unk_token_id`` and the model's output turned into probabilities,
    followed by an absolute value (the paper ranks tokens by the size of the change).

    Args:
        forward_func: model or function of ``(input_ids, *additional_forward_args)``.
        unk_token_id: the id that replaces a token (``tokenizer.unk_token_id``; the authors'
            SVA code used ``[UNK]`` in one version and the padding id 0 in another).
        output_type: ``"logits"`` (softmax applied) or ``"probs"``.
        unscored_token_ids: ids whose score is 0 instead of their blank-out change (the
            authors' SVA code gives its end-of-sentence token 0 instead of blanking it).

    Which class is tracked is ``attribute``'s ``target``: the gold class, or None for the
    predicted one. (With two classes both give the same scores: ``|Δp_0| = |Δp_1|``.)

    Example:
        >>> import torch
        >>> weights = torch.tensor([0.0, 1.0, -2.0])
        >>> def toy_logits(ids):  # class-1 logit = sum of per-id weights
        ...     return torch.stack([torch.zeros(len(ids)), weights[ids].sum(1)], dim=1)
        >>> BlankOut(toy_logits, unk_token_id=0).attribute(torch.tensor([[1, 2]]), target=1).shape
        torch.Size([1, 2])
    """

    def __init__(self, forward_func: Callable, unk_token_id: int, *, output_type: str = "logits",
                 unscored_token_ids: Sequence[int] = ()) -> None:
        if isinstance(unk_token_id, bool) or not isinstance(unk_token_id, Integral):
            raise InvalidParameterError(f"unk_token_id must be an int, got {unk_token_id!r}.")
        if any(isinstance(i, bool) or not isinstance(i, Integral) for i in unscored_token_ids):
            raise InvalidParameterError(f"unscored_token_ids must be ints, got {tuple(unscored_token_ids)!r}.")
        super().__init__(probability_forward(forward_func, output_type))
        self.unk_token_id = int(unk_token_id)
        self.output_type = output_type
        self.unscored_token_ids = tuple(int(i) for i in unscored_token_ids)

    def attribute(self, inputs: torch.Tensor, target=None, additional_forward_args=None, *,
                  perturbations_per_eval: int = 1, show_progress: bool = False) -> torch.Tensor:
        r"""
        Args:
            inputs (Tensor): token ids ``(B, S)`` (or a 1-tuple of it; the result is then a 1-tuple).
            target (int, Tensor or None): class whose probability is tracked per example;
                None uses the class the model predicts for the unperturbed input.
            additional_forward_args (tuple, optional): e.g. ``(attention_mask,)``.
            perturbations_per_eval (int): tokens blanked per forward pass (Captum batches them).
            show_progress (bool): Captum's progress bar.

        Returns:
            ``(B, S)`` tensor of ``|Δp|``; padded positions are scored too (by blanking a
            padding token), so mask them out downstream.
        """
        # Like Captum's methods: a 1-tuple in (as sensitivity_max passes), a 1-tuple out.
        is_tuple = isinstance(inputs, tuple) and len(inputs) == 1
        inputs = _check_ids(inputs[0] if is_tuple else inputs)
        args = format_forward_args(additional_forward_args)
        target = _resolve_target(self.forward_func, inputs, args, target)
        ablation = FeatureAblation(self.forward_func)
        with torch.no_grad():
            deltas = ablation.attribute(inputs, baselines=self.unk_token_id, target=target,
                                        additional_forward_args=args or None,
                                        perturbations_per_eval=perturbations_per_eval,
                                        show_progress=show_progress)
        scores = deltas.abs().float()
        if self.unscored_token_ids:
            unscored = torch.isin(inputs, torch.tensor(self.unscored_token_ids, device=inputs.device))
            scores = scores.masked_fill(unscored, 0.0)
        return (scores,) if is_tuple else scores

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


def blank_out_attribution(forward_func: Callable, unk_token_id: int, **kwargs) -> BlankOut:
    """Function-style alias of :class:`BlankOut`.

    Example:
        >>> import torch
        >>> probs = lambda ids: torch.stack([1 - ids.sum(1) / 10, ids.sum(1) / 10], 1)
        >>> blank_out_attribution(probs, 0, output_type="probs").attribute(torch.tensor([[1, 3]]), target=1)
        tensor([[0.1000, 0.3000]])
    """
    return BlankOut(forward_func, unk_token_id, **kwargs)


# --------------------------------------------------------------------------- AOPC


def top_k_counts(num_eligible: torch.Tensor, fraction: float) -> torch.Tensor:
    """Tokens removed for one AOPC bin: ``max(1, ceil(fraction · n))``, at most ``n``.

    Example:
        >>> import torch
        >>> top_k_counts(torch.tensor([10, 3, 200]), 0.05).tolist()
        [1, 1, 10]
    """
    # The small epsilon keeps 0.1 * 30 = 3.0000000000000004 from rounding up to 4.
    counts = torch.ceil(num_eligible.double() * fraction - 1e-9).long().clamp(min=1)
    return torch.minimum(counts, num_eligible.long())


def top_k_mask(attributions: torch.Tensor, eligible: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` bool mask of the ``counts[b]`` highest-scoring eligible tokens of each row.

    Ties are broken by position (earlier first) so results are deterministic.

    Example:
        >>> import torch
        >>> top_k_mask(torch.tensor([[0.2, 0.7, 0.7, 0.1]]), torch.tensor([[True, True, True, False]]),
        ...            torch.tensor([2])).int()
        tensor([[0, 1, 1, 0]], dtype=torch.int32)
    """
    scores = attributions.detach().float().masked_fill(~eligible, float("-inf"))
    # A stable sort keeps equal scores in position order.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return (rank < counts.view(-1, 1)) & eligible


def aopc_scores(forward_func: Callable, input_ids: torch.Tensor, attributions: torch.Tensor,
                target=None, additional_forward_args=None, *, baseline_token_id: int = 0,
                removal: str = "replace", bins: Sequence[float] = AOPC_BINS,
                output_type: str = "logits", eligible: Optional[torch.Tensor] = None) -> Dict[str, np.ndarray]:
    r"""ERASER comprehensiveness and sufficiency (DeYoung et al., 2020), per example, as AOPC.

    With ``E`` the eligible tokens of ``x`` (see :func:`eligible_tokens`), ``n = |E|``, and for
    each bin ``q`` the set ``T_q`` of the ``k_q = max(1, ceil(q·n))`` eligible tokens with the
    highest attribution (ties: earlier position first)::

        comprehensiveness = 1/|bins| · Σ_q [ p(y|x) − p(y| x with T_q removed) ]
        sufficiency       = 1/|bins| · Σ_q [ p(y|x) − p(y| x with E \ T_q removed) ]

    High comprehensiveness and low sufficiency are good. Non-eligible tokens (special tokens,
    padding) are never removed. ``p`` is the probability of class ``y = target``.

    Args:
        forward_func: model or function of ``(input_ids, *additional_forward_args)``.
        input_ids: ``(B, S)`` token ids.
        attributions: ``(B, S)`` token scores (higher = more important).
        target: ``(B,)`` classes, an int, or None for the predicted class.
        additional_forward_args: extra forward arguments; with ``removal="mask"`` the first
            one must be the ``(B, S)`` attention mask.
        baseline_token_id: id written over removed tokens (PAD or UNK) with ``removal="replace"``.
        removal: ``"replace"`` (overwrite ids) or ``"mask"`` (set the attention mask to 0).
        bins: fractions ``q`` of the eligible tokens; ERASER uses 1, 5, 10, 20 and 50 %.
        output_type: ``"logits"`` (softmax applied) or ``"probs"``.
        eligible: ``(B, S)`` bool mask of removable tokens; None = every token real.

    Returns:
        ``{"comprehensiveness": (B,), "sufficiency": (B,)}`` float64 arrays.

    Example:
        >>> import torch
        >>> weights = torch.tensor([0.0, 2.0, 1.0])  # token id -> contribution to p(class 0)
        >>> probs = lambda ids: torch.stack([weights[ids].sum(1) / 4, 1 - weights[ids].sum(1) / 4], 1)
        >>> scores = aopc_scores(probs, torch.tensor([[1, 2]]), torch.tensor([[0.9, 0.1]]),
        ...                      target=0, output_type="probs", bins=(0.5,))
        >>> [float(v[0]) for v in scores.values()]  # remove id 1: 3/4 - 1/4; keep only id 1: 3/4 - 2/4
        [0.5, 0.25]
    """
    input_ids = _check_ids(input_ids)
    attributions = _check_same_shape(_as_token_scores(attributions, "attributions"), input_ids, "attributions")
    if removal not in REMOVALS:
        raise InvalidParameterError(f"removal={removal!r} is not supported; use one of {REMOVALS}.")
    bins = _check_bins(bins)
    args = format_forward_args(additional_forward_args)
    if removal == "mask" and not (args and isinstance(args[0], torch.Tensor) and args[0].shape == input_ids.shape):
        raise InvalidInputError("removal='mask' needs the (B, S) attention mask as additional_forward_args[0].")
    if eligible is None:
        eligible = torch.ones_like(input_ids, dtype=torch.bool)
    eligible = _check_same_shape(eligible, input_ids, "eligible").bool()

    prob_forward = probability_forward(forward_func, output_type)
    target = _resolve_target(prob_forward, input_ids, args, target)
    full = _class_probability(prob_forward, input_ids, args, target)
    num_eligible = eligible.sum(dim=1)
    comprehensiveness, sufficiency = [], []
    for fraction in bins:
        top = top_k_mask(attributions, eligible, top_k_counts(num_eligible, fraction))
        for removed, totals in ((top, comprehensiveness), (eligible & ~top, sufficiency)):
            ids, removed_args = _remove_tokens(input_ids, args, removed, removal, baseline_token_id)
            totals.append(full - _class_probability(prob_forward, ids, removed_args, target))
    # Rows without eligible tokens have nothing to remove: report nan, not a fake 0.
    empty = (num_eligible == 0).cpu().numpy()
    return {name: np.where(empty, np.nan, torch.stack(values).mean(0).double().cpu().numpy())
            for name, values in (("comprehensiveness", comprehensiveness), ("sufficiency", sufficiency))}


def _check_bins(bins) -> Tuple[float, ...]:
    bins = tuple(float(b) for b in bins)
    if not bins or any(not 0.0 < b <= 1.0 for b in bins):
        raise InvalidParameterError(f"bins must be a non-empty sequence of fractions in (0, 1], got {bins}.")
    return bins


def _remove_tokens(input_ids, args: tuple, removed: torch.Tensor, removal: str, baseline_token_id: int):
    if removal == "replace":
        return input_ids.masked_fill(removed, baseline_token_id), args
    attention_mask = args[0].masked_fill(removed, 0)
    return input_ids, (attention_mask,) + args[1:]


# --------------------------------------------------------------------------- perturbations


def _droppable(inputs: torch.Tensor, protected_ids: Sequence[int],
               eligible: Optional[torch.Tensor]) -> torch.Tensor:
    protected = torch.as_tensor(list(protected_ids), dtype=inputs.dtype, device=inputs.device)
    droppable = ~torch.isin(inputs, protected)
    if eligible is not None:
        # Captum repeats every example n_perturb_samples times in a row (repeat_interleave).
        repeats, remainder = divmod(inputs.shape[0], eligible.shape[0])
        if remainder or eligible.shape[1:] != inputs.shape[1:]:
            raise InvalidInputError(
                f"eligible has shape {tuple(eligible.shape)} but the perturbed batch is "
                f"{tuple(inputs.shape)}; pass the (B, S) mask of the batch given to the metric.")
        droppable &= eligible.to(inputs.device).bool().repeat_interleave(repeats, dim=0)
    return droppable


def _random_subset(droppable: torch.Tensor, counts: torch.Tensor, generator) -> torch.Tensor:
    """Per row, a uniformly random subset of ``counts[b]`` droppable positions."""
    noise = torch.rand(droppable.shape, generator=generator).to(droppable.device)
    return top_k_mask(noise, droppable, counts)


def token_dropout_infidelity_perturb(baseline_token_id: int, *, drop_prob: float = 0.25,
                                     protected_ids: Sequence[int] = (),
                                     eligible: Optional[torch.Tensor] = None,
                                     generator: Optional[torch.Generator] = None) -> Callable:
    r"""Perturbation for :func:`captum.metrics.infidelity` on token-id inputs.

    Each droppable token is replaced by ``baseline_token_id`` independently with probability
    ``drop_prob``. A token is droppable when its id is not in ``protected_ids`` (PAD, CLS,
    SEP ...) and, if given, ``eligible`` (the ``(B, S)`` mask of the batch passed to
    ``infidelity``, e.g. from :func:`eligible_tokens`) marks it. The returned
    perturbation ``I`` is the 0/1 indicator of replaced tokens, so infidelity measures
    ``E[(Σ_{i dropped} a_i − (f(x) − f(x_dropped)))²]``: how well the summed attribution of a
    random token subset predicts the output change when the subset is blanked out.

    Why not Captum's Gaussian noise: token ids are discrete, ``id + ε`` is not an input, and
    attention-based methods take ids, not embeddings, so perturbing the embedding would
    exclude them. Dropping tokens works for every method and any model.

    Returns:
        ``perturb(inputs) -> (indicator (B, S) float, perturbed ids (B, S))``.

    Example:
        >>> import torch
        >>> perturb = token_dropout_infidelity_perturb(1, drop_prob=1.0, protected_ids=(101, 102))
        >>> indicator, perturbed = perturb(torch.tensor([[101, 7, 8, 102]]))
        >>> indicator.int().tolist(), perturbed.tolist()
        ([[0, 1, 1, 0]], [[101, 1, 1, 102]])
    """
    drop_prob = float(drop_prob)
    if not 0.0 < drop_prob <= 1.0:
        raise InvalidParameterError(f"drop_prob={drop_prob} must be in (0, 1].")

    def perturb(inputs: torch.Tensor):
        draws = torch.rand(inputs.shape, generator=generator).to(inputs.device)
        dropped = (draws < drop_prob) & _droppable(inputs, protected_ids, eligible)
        return dropped.float(), inputs.masked_fill(dropped, baseline_token_id)

    return perturb


def token_dropout_sensitivity_perturb(baseline_token_id: int, *, protected_ids: Sequence[int] = (),
                                      eligible: Optional[torch.Tensor] = None,
                                      generator: Optional[torch.Generator] = None) -> Callable:
    r"""Perturbation for :func:`captum.metrics.sensitivity_max` on token-id inputs.

    Captum's default adds noise in an L∞ ball of radius ``perturb_radius``, which is
    meaningless for ids. Here the radius is a *fraction of tokens*: exactly
    ``max(1, ceil(perturb_radius · n))`` of the ``n`` droppable tokens (as in
    :func:`token_dropout_infidelity_perturb`), drawn uniformly, are replaced by
    ``baseline_token_id``. At least one token always changes, so short
    sentences are never left unperturbed.

    Returns:
        ``perturb(inputs, perturb_radius) -> perturbed ids``.

    Example:
        >>> import torch
        >>> perturb = token_dropout_sensitivity_perturb(1, protected_ids=(101, 102),
        ...                                             generator=torch.Generator().manual_seed(0))
        >>> perturbed = perturb(torch.tensor([[101, 7, 8, 9, 102]]), 0.5)  # ceil(.5 · 3) = 2 tokens
        >>> int((perturbed == 1).sum())
        2
    """

    def perturb(inputs: torch.Tensor, perturb_radius: float):
        droppable = _droppable(inputs, protected_ids, eligible)
        counts = top_k_counts(droppable.sum(dim=1), perturb_radius)
        return inputs.masked_fill(_random_subset(droppable, counts, generator), baseline_token_id)

    return perturb
