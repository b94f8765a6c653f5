"""Metrics that remove tokens and watch the explained class's probability ``p(y|x)``: the
paper's blank-out reference (one token at a time) and ERASER's AOPC comprehensiveness and
sufficiency (the top-scored tokens, or all but them)."""

from numbers import Integral
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union, overload

import numpy as np
import torch
from captum.attr import Attribution, FeatureAblation

from captum_attnflow._args import format_forward_args
from captum_attnflow.evaluation.tokens import _as_token_scores, _check_ids, _check_same_shape
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

#: ERASER's default AOPC bins (fractions of the eligible tokens).
AOPC_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)
OUTPUT_TYPES = ("logits", "probs")
REMOVALS = ("replace", "mask")


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
        self.unk_token_id: int = int(unk_token_id)
        self.output_type = output_type
        self.unscored_token_ids: Tuple[int, ...] = tuple(int(i) for i in unscored_token_ids)

    @overload
    def attribute(self, inputs: torch.Tensor, target=None, additional_forward_args=None, *,
                  perturbations_per_eval: int = 1, show_progress: bool = False) -> torch.Tensor: ...

    @overload
    def attribute(self, inputs: Tuple[torch.Tensor], target=None, additional_forward_args=None, *,
                  perturbations_per_eval: int = 1, show_progress: bool = False) -> Tuple[torch.Tensor]: ...

    def attribute(self, inputs: Union[torch.Tensor, Tuple[torch.Tensor]], target=None, additional_forward_args=None,
                  *, perturbations_per_eval: int = 1,
                  show_progress: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor]]:
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
    comprehensiveness: List[torch.Tensor] = []
    sufficiency: List[torch.Tensor] = []
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
