"""Rank agreement of token attributions with a reference: Spearman's correlation per
example, the textbook statistic or the variant of Abnar & Zuidema's code."""

from typing import Optional

import numpy as np
import torch
from scipy.stats import rankdata

from captum_attnflow._validation import check_choice
from captum_attnflow.evaluation.tokens import _as_token_scores, _check_same_shape
from captum_attnflow.exceptions import InvalidInputError

#: How ties are ranked: ``"average"`` (scipy's default, the textbook Spearman) or ``"dense"``
#: (1, 2, 3 ... over the distinct values, pandas ``rank(method="dense")``, as in the authors' code).
RANK_METHODS = ("average", "dense")
#: ``"pearson"``: Pearson correlation of the ranks (exact with ties); ``"difference"``:
#: ``1 − 6Σd²/(n(n²−1))`` on the ranks, the shortcut that is exact only without ties (the authors').
SPEARMAN_FORMULAS = ("pearson", "difference")


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


def _row_spearman(x: np.ndarray, y: np.ndarray, ranks: str, formula: str) -> np.ndarray:
    """Spearman of each row pair of two ``(B, n)`` float64 arrays (same n for every row)."""
    check_choice("ranks", ranks, RANK_METHODS)
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
    check_choice("formula", formula, SPEARMAN_FORMULAS)
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
