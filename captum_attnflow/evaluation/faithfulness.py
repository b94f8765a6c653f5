r"""Faithfulness metrics for any input made of removable *units* (tokens, image patches).

:mod:`~captum_attnflow.evaluation.metrics` scores token-id classifiers through class
probabilities. The metrics here take two functions instead, so the same code scores a
classifier's ``p(y|x)``, a sentence-similarity model's cosine, or a vision transformer whose
units are pixel patches:

* ``score_fn(inputs) -> (B,)``: the explained scalar per example (e.g. ``p(target | x)``);
* ``remove_fn(inputs, removed) -> inputs``: the inputs with the ``(B, U)`` bool mask of units
  replaced by a baseline (:func:`replace_tokens` for token ids, :func:`zero_patches` for images).

Metrics (one value per example; higher is better unless said otherwise):

* :func:`aopc` — ERASER comprehensiveness and sufficiency (DeYoung et al., 2020,
  https://arxiv.org/abs/1911.03429, Sec. 4): the mean over bins ``q`` of the drop of the score
  when the top ``max(1, ceil(q·n))`` eligible units are removed (comprehensiveness, high = good)
  or when everything *but* them is removed (sufficiency, low = good);
* :func:`blank_out` + :func:`~captum_attnflow.evaluation.metrics.per_example_spearman` — Abnar &
  Zuidema (2020, Sec. 5): ``|Δscore|`` when one unit is replaced, ranked against the attribution;
* :func:`randomized_copy` / :func:`randomization_spearman` — the model-parameter randomisation
  test (Adebayo et al., 2018, "Sanity Checks for Saliency Maps", https://arxiv.org/abs/1810.03292,
  Sec. 3.1): re-draw the weights of chosen layers (cascading from the output down, or one at a
  time) and correlate the explanations of the trained and the randomised model. A method that
  barely changes does not explain what the model learned.

Example:
    >>> import torch
    >>> weights = torch.tensor([0.0, 3.0, 1.0, 2.0])  # score = Σ weights[id]; id 0 is the baseline
    >>> score = lambda ids: weights[ids].sum(1)
    >>> ids, eligible = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)
    >>> blank_out(score, replace_tokens(0), ids, eligible).tolist()
    [[3.0, 1.0, 2.0]]
    >>> result = aopc(score, replace_tokens(0), ids, torch.tensor([[3.0, 1.0, 2.0]]), eligible, bins=(0.34,))
    >>> [float(result[name][0]) for name in ("comprehensiveness", "sufficiency")]  # remove / keep 2 of 3
    [5.0, 1.0]
"""

import copy
from numbers import Integral
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from captum_attnflow.evaluation.metrics import AOPC_BINS, per_example_spearman, top_k_counts, top_k_mask
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
RemoveFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Adebayo et al.'s two randomisation orders.
RANDOMIZATIONS = ("cascading", "independent")


# --------------------------------------------------------------------------- removal


def replace_tokens(baseline_id: int) -> RemoveFn:
    """``remove_fn`` for ``(B, S)`` token ids: removed tokens become ``baseline_id`` (UNK, MASK, PAD).

    Example:
        >>> import torch
        >>> replace_tokens(9)(torch.tensor([[1, 2, 3]]), torch.tensor([[False, True, False]]))
        tensor([[1, 9, 3]])
    """
    if isinstance(baseline_id, bool) or not isinstance(baseline_id, Integral):
        raise InvalidParameterError(f"baseline_id must be an int token id, got {baseline_id!r}.")

    def remove(input_ids: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        return input_ids.masked_fill(_check_units(removed, input_ids.shape[0], input_ids.shape[1]), int(baseline_id))

    return remove


def zero_patches(patch_size: Tuple[int, int], value: float = 0.0) -> RemoveFn:
    """``remove_fn`` for ``(B, C, H, W)`` images whose units are the patches in row-major order.

    A removed patch is filled with ``value`` in every channel (0: the blank background of
    digits; use the data mean for natural images).

    Example:
        >>> import torch
        >>> images = torch.ones(1, 1, 4, 4)
        >>> zero_patches((2, 2))(images, torch.tensor([[False, True, False, False]]))[0, 0]
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.],
                [1., 1., 1., 1.],
                [1., 1., 1., 1.]])
    """
    patch_h, patch_w = int(patch_size[0]), int(patch_size[1])
    if patch_h < 1 or patch_w < 1:
        raise InvalidParameterError(f"patch_size must be two positive ints, got {patch_size!r}.")

    def remove(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-2] % patch_h or images.shape[-1] % patch_w:
            raise InvalidInputError(f"images must be (B, C, H, W) with H, W multiples of {(patch_h, patch_w)}, "
                                    f"got {tuple(images.shape)}.")
        grid_h, grid_w = images.shape[-2] // patch_h, images.shape[-1] // patch_w
        removed = _check_units(removed, images.shape[0], grid_h * grid_w).view(-1, 1, grid_h, grid_w)
        # One flag per patch, stretched over its pixels and channels.
        pixels = removed.repeat_interleave(patch_h, dim=2).repeat_interleave(patch_w, dim=3)
        return images.masked_fill(pixels.expand_as(images), value)

    return remove


def _check_units(mask: torch.Tensor, batch_size: int, num_units: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch_size, num_units):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInputError(f"the unit mask must be ({batch_size}, {num_units}) bool, got {shape}.")
    return mask.bool()


# --------------------------------------------------------------------------- removal metrics


def _scores(score_fn: ScoreFn, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        values = score_fn(inputs)
    if not isinstance(values, torch.Tensor) or values.shape != (inputs.shape[0],):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise InvalidInputError(f"score_fn must return one value per example, shape ({inputs.shape[0]},); "
                                f"got {shape}. Select the explained class inside score_fn.")
    return values.detach().double()


def _check_attributions(attributions: torch.Tensor, eligible: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(attributions, torch.Tensor) or attributions.ndim != 2:
        raise InvalidInputError("attributions must be a (B, U) tensor, one score per unit (token or patch).")
    if not isinstance(eligible, torch.Tensor) or eligible.shape != attributions.shape:
        raise InvalidInputError(f"eligible must be a bool tensor shaped like the attributions "
                                f"{tuple(attributions.shape)}.")
    if not torch.isfinite(attributions[eligible.bool()]).all():
        raise InvalidInputError("attributions contain NaN or inf on eligible units; rank only finite scores.")
    return attributions.detach(), eligible.bool()


def aopc(score_fn: ScoreFn, remove_fn: RemoveFn, inputs: torch.Tensor, attributions: torch.Tensor,
         eligible: torch.Tensor, bins: Sequence[float] = AOPC_BINS) -> Dict[str, np.ndarray]:
    r"""ERASER comprehensiveness and sufficiency as AOPC, per example.

    For each bin ``q`` the ``k_q = max(1, ceil(q·n))`` eligible units with the highest
    attribution form ``T_q`` (ties: earlier unit first; ``n`` = eligible units of the example)::

        comprehensiveness = 1/|bins| Σ_q [ s(x) − s(x without T_q) ]        (high = faithful)
        sufficiency       = 1/|bins| Σ_q [ s(x) − s(x without E \ T_q) ]    (low = faithful)

    Args:
        score_fn: ``inputs -> (B,)`` explained score (a probability, a similarity ...).
        remove_fn: ``(inputs, removed (B, U) bool) -> inputs`` with those units replaced.
        inputs: the batch ``score_fn`` takes.
        attributions: ``(B, U)`` unit scores (higher = more important).
        eligible: ``(B, U)`` bool, the units that may be removed (no special tokens, no padding).
        bins: fractions in ``(0, 1]``; ERASER's 1, 5, 10, 20, 50 % by default.

    Returns:
        ``{"comprehensiveness": (B,), "sufficiency": (B,)}``; ``nan`` for rows without eligible units.
    """
    attributions, eligible = _check_attributions(attributions, eligible)
    bins = tuple(float(b) for b in bins)
    if not bins or any(not 0.0 < b <= 1.0 for b in bins):
        raise InvalidParameterError(f"bins must be a non-empty sequence of fractions in (0, 1], got {bins}.")
    full = _scores(score_fn, inputs)
    num_eligible = eligible.sum(dim=1)
    drops: Dict[str, list] = {"comprehensiveness": [], "sufficiency": []}
    for fraction in bins:
        top = top_k_mask(attributions, eligible, top_k_counts(num_eligible, fraction))
        drops["comprehensiveness"].append(full - _scores(score_fn, remove_fn(inputs, top)))
        drops["sufficiency"].append(full - _scores(score_fn, remove_fn(inputs, eligible & ~top)))
    empty = (num_eligible == 0).cpu().numpy()
    return {name: np.where(empty, np.nan, torch.stack(values).mean(0).cpu().numpy())
            for name, values in drops.items()}


def blank_out(score_fn: ScoreFn, remove_fn: RemoveFn, inputs: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """``(B, U)`` float64 ``|s(x) − s(x with unit u removed)|`` for every eligible unit, ``nan`` elsewhere.

    One forward pass per unit position (the whole batch at once); the paper's reference with
    ``remove_fn = replace_tokens(unk_id)``. Rank it against an attribution with
    ``per_example_spearman(attributions, blank, mask=eligible)``.
    """
    if not isinstance(eligible, torch.Tensor) or eligible.ndim != 2:
        raise InvalidInputError("eligible must be a (B, U) bool tensor.")
    eligible = eligible.bool()
    full = _scores(score_fn, inputs)
    result = torch.full(eligible.shape, float("nan"), dtype=torch.float64)
    for unit in range(eligible.shape[1]):
        rows = eligible[:, unit]
        if not rows.any():
            continue
        removed = torch.zeros_like(eligible)
        removed[:, unit] = rows
        result[rows, unit] = (full - _scores(score_fn, remove_fn(inputs, removed)))[rows].abs()
    return result


def blank_out_spearman(attributions: torch.Tensor, blank: torch.Tensor, eligible: torch.Tensor) -> np.ndarray:
    """Per-example Spearman of ``attributions`` with :func:`blank_out`'s ``|Δs|`` over eligible units."""
    attributions, eligible = _check_attributions(attributions, eligible)
    return per_example_spearman(attributions, torch.nan_to_num(blank.to(attributions.device)), mask=eligible)


# --------------------------------------------------------------------------- parameter randomisation


def randomized_copy(model: nn.Module, module_names: Sequence[str], *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter under ``module_names`` re-drawn.

    Each parameter tensor is replaced by i.i.d. normal draws with that tensor's own mean and
    standard deviation, so the randomised layer keeps the trained scale (activations neither
    vanish nor explode, which would make any explanation trivially different). ``model`` itself
    is untouched. Pass all layers from the output down for Adebayo et al.'s cascading
    randomisation, one name for the independent one (see :func:`randomization_steps`).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
        >>> noisy = randomized_copy(net, ["1"], seed=0)
        >>> bool(torch.equal(noisy[0].weight, net[0].weight)), bool(torch.equal(noisy[1].weight, net[1].weight))
        (True, False)
    """
    modules = dict(model.named_modules())
    missing = [name for name in module_names if name not in modules]
    if missing or not module_names:
        raise InvalidParameterError(f"module_names must name submodules of the model (model.named_modules()); "
                                    f"unknown: {missing or 'none given'}.")
    copied = copy.deepcopy(model)
    copied_modules = dict(copied.named_modules())
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name in module_names:
            for parameter in copied_modules[name].parameters():
                values = parameter.detach().double()
                std = float(values.std()) if values.numel() > 1 else 0.0
                draws = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.copy_((values.mean() + std * draws).to(parameter.dtype))
    return copied


def randomization_steps(layer_names: Sequence[str], mode: str = "cascading") -> Tuple[Tuple[str, ...], ...]:
    """Which layers each step re-draws, ``layer_names`` ordered from the output down.

    ``"cascading"``: step ``k`` randomises the top ``k + 1`` layers; ``"independent"``: step ``k``
    only layer ``k``.

    Example:
        >>> randomization_steps(["head", "block2", "block1"])
        (('head',), ('head', 'block2'), ('head', 'block2', 'block1'))
        >>> randomization_steps(["head", "block2"], "independent")
        (('head',), ('block2',))
    """
    if mode not in RANDOMIZATIONS:
        raise InvalidParameterError(f"mode={mode!r} is not supported; use one of {RANDOMIZATIONS}.")
    names = tuple(layer_names)
    if mode == "cascading":
        return tuple(names[:k + 1] for k in range(len(names)))
    return tuple((name,) for name in names)


def randomization_spearman(trained: torch.Tensor, randomized: torch.Tensor, eligible: torch.Tensor, *,
                           absolute: bool = False) -> np.ndarray:
    """Per-example Spearman between the explanations of the trained and a randomised model.

    Near 1: the explanation ignores what the weights learned (Adebayo et al. fail such methods);
    low: it depends on them. ``absolute=True`` ranks ``|scores|`` (their second variant).
    """
    trained, eligible = _check_attributions(trained, eligible)
    randomized, _ = _check_attributions(randomized, eligible)
    if absolute:
        trained, randomized = trained.abs(), randomized.abs()
    return per_example_spearman(trained, randomized, mask=eligible)


def random_attributions(eligible: torch.Tensor, seed: Optional[int] = 0) -> torch.Tensor:
    """Uniform random unit scores: the floor every method should beat on AOPC and blank-out."""
    generator = torch.Generator().manual_seed(int(seed or 0))
    return torch.rand(eligible.shape, generator=generator).masked_fill(~eligible.bool().cpu(), 0.0)
