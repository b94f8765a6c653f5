"""Per-example scores pooled into numbers to report: mean ± std (n), and two-way (training
seeds × examples) bootstrap confidence intervals, paired between tables."""

import functools
from numbers import Integral
from typing import Tuple

import numpy as np

from captum_attnflow._validation import check_choice
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

#: What an undefined correlation counts as in a mean: left out, or 0 (the authors' code).
UNDEFINED_POLICIES = ("exclude", "zero")


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
    check_choice("undefined", undefined, UNDEFINED_POLICIES)
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
