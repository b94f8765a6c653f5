"""Token-id perturbations for Captum's :func:`~captum.metrics.infidelity` and
:func:`~captum.metrics.sensitivity_max`: tokens dropped (replaced by a baseline id) instead of
Gaussian noise, which means nothing for discrete ids."""

from typing import Callable, Optional, Sequence

import torch

from captum_attnflow.evaluation.removal import top_k_counts, top_k_mask
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError


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
