"""Evaluate many attribution methods on a dataset of token ids, batch by batch.

:class:`AttributionEvaluator` runs every method once per batch, then scores the
attributions with the metrics of :mod:`captum_attnflow.evaluation.metrics`; methods that
return every layer (``return_all_layers=True``) are scored layer by layer.
"""

import inspect
from collections import defaultdict
from numbers import Integral
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.attr import Attribution
from captum.metrics import infidelity, sensitivity_max
from tqdm.auto import tqdm

from captum_attnflow._args import format_forward_args
from captum_attnflow.attr import AttentionFlow
from captum_attnflow.evaluation.metrics import (
    AOPC_BINS,
    OUTPUT_TYPES,
    RANK_METHODS,
    REMOVALS,
    SPEARMAN_FORMULAS,
    UNDEFINED_POLICIES,
    aopc_scores,
    eligible_tokens,
    per_example_spearman,
    probability_forward,
    token_dropout_infidelity_perturb,
    token_dropout_sensitivity_perturb,
)
from captum_attnflow.evaluation.removal import _resolve_target
from captum_attnflow.evaluation.reporting import EvaluationResult
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.parallel import flow_map

METRICS = ("spearman", "aopc", "infidelity", "sensitivity")
#: Which class is explained: the ``targets`` given to :meth:`AttributionEvaluator.evaluate`
#: (the gold labels; the predicted class where none are given), or always the predicted one.
TARGET_CLASSES = ("given", "predicted")
Method = Union[Attribution, Callable[..., torch.Tensor]]


class AttributionEvaluator:
    r"""Score attribution methods against a reference and with faithfulness metrics.

    Construction only stores the settings (scikit-learn style); :meth:`evaluate` does
    the work and may be called on several datasets.

    Args:
        forward_func: model or function of ``(input_ids, *additional_forward_args)`` returning
            ``(B, C)`` logits (or probabilities with ``output_type="probs"``); Hugging Face
            outputs with ``.logits`` are accepted.
        methods: ``{name: method}``; a method is any Captum
            :class:`~captum.attr.Attribution` (its ``attribute`` is called) or a callable
            ``f(input_ids, target=..., additional_forward_args=..., **kwargs)``. Outputs of shape
            ``(B, S, ...)`` (e.g. ``LayerIntegratedGradients`` on the embeddings) are summed over
            the trailing dimensions into token scores. Gradient methods that need float inputs
            (``Saliency``, ``InputXGradient`` ...) run on the embeddings through
            :class:`~captum_attnflow.evaluation.EmbeddingAttribution`.
        method_kwargs: ``{name: dict}`` extra ``attribute`` keyword arguments per method. With
            ``{"return_all_layers": True}`` the method must return ``(L, B, S)`` and is scored
            per layer.
        reference: name (or names) in ``methods`` that Spearman correlations are taken against,
            e.g. a :class:`~captum_attnflow.evaluation.BlankOut`; a layered reference uses its
            last layer. None skips correlations.
        metrics: subset of ``("spearman", "aopc", "infidelity", "sensitivity")``. Layered
            methods get Spearman, AOPC and infidelity per layer; sensitivity (which re-runs the
            method on perturbed inputs) for the last layer only.
        rank_method, spearman_formula: how Spearman ranks ties and which formula it uses
            (:data:`~captum_attnflow.evaluation.metrics.RANK_METHODS`,
            :data:`~captum_attnflow.evaluation.metrics.SPEARMAN_FORMULAS`); the defaults are
            the textbook statistic, ``"dense"`` + ``"difference"`` the authors' code.
        undefined: ``"exclude"`` leaves undefined correlations out of the means, ``"zero"``
            counts them as 0 (the authors' code).
        target_class: ``"given"`` explains the ``targets`` passed to :meth:`evaluate`, ``"predicted"``
            the model's prediction even when gold targets are given (see :data:`TARGET_CLASSES`).
        output_type: ``"logits"`` or ``"probs"``; all probability metrics use ``softmax`` of logits.
        exclude_positions: positions never compared or removed, e.g. ``(0,)`` for ``[CLS]``.
        special_token_ids: ids never compared or removed (CLS, SEP ...); also protected from
            the infidelity/sensitivity perturbations. Padding (``attention_mask == 0``) is
            always excluded.
        baseline_token_id: id written over removed tokens in AOPC and the perturbations
            (UNK or PAD).
        aopc_bins, removal: see :func:`~captum_attnflow.evaluation.aopc_scores`.
        n_perturb_samples: perturbations per example for infidelity and sensitivity.
        infidelity_drop_prob: token drop probability of the infidelity perturbation.
        infidelity_normalize: Captum's ``normalize``: rescale attributions by the best scalar
            first; on by default because attention scores sum to 1 while Δp does not.
        sensitivity_radius: fraction of tokens replaced per sensitivity perturbation.
        batch_size: examples per batch.
        internal_batch_size: default ``internal_batch_size`` for methods whose ``attribute``
            takes one (``IntegratedGradients``, ``LayerIntegratedGradients``,
            ``LayerConductance`` ...) and that ``method_kwargs`` leaves unset: rows
            (example × step) per forward pass. Captum's own default runs every step of every
            example at once (50 × batch rows; gigabytes for a sentence encoder); None keeps it.
        executor: a :class:`concurrent.futures.Executor` (process pool, Dask
            ``Client.get_executor()`` ...) on which :class:`~captum_attnflow.AttentionFlow`
            methods solve their max-flow problems, via :func:`captum_attnflow.parallel.flow_map`;
            other methods run in-process.
        progress: show a tqdm progress bar over batches.
        seed: seed of the random perturbations, so runs are repeatable.

    Example:
        >>> import torch
        >>> from captum.attr import FeatureAblation
        >>> from captum_attnflow.evaluation import BlankOut
        >>> weights = torch.tensor([0.0, 1.0, -1.0, 2.0])
        >>> def toy(ids):
        ...     return torch.stack([torch.zeros(len(ids)), weights[ids].sum(1)], 1)
        >>> evaluator = AttributionEvaluator(
        ...     toy, {"ablation": FeatureAblation(toy), "blank": BlankOut(toy, 0)},
        ...     reference="blank", metrics=("spearman", "aopc"), progress=False)
        >>> result = evaluator.evaluate(torch.tensor([[1, 2, 3], [3, 3, 1]]), targets=torch.tensor([1, 1]))
        >>> [(row["metric"], row["method"], row["n"]) for row in result.rows]  # doctest: +NORMALIZE_WHITESPACE
        [('spearman', 'ablation', 2), ('comprehensiveness', 'ablation', 2),
         ('sufficiency', 'ablation', 2), ('comprehensiveness', 'blank', 2),
         ('sufficiency', 'blank', 2)]
    """

    def __init__(self, forward_func: Callable, methods: Mapping[str, Method], *,
                 method_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 reference: Union[None, str, Sequence[str]] = None,
                 metrics: Sequence[str] = ("spearman", "aopc"), rank_method: str = "average",
                 spearman_formula: str = "pearson", undefined: str = "exclude",
                 target_class: str = "given", output_type: str = "logits",
                 exclude_positions: Sequence[int] = (), special_token_ids: Sequence[int] = (),
                 baseline_token_id: int = 0, aopc_bins: Sequence[float] = AOPC_BINS,
                 removal: str = "replace", n_perturb_samples: int = 10,
                 infidelity_drop_prob: float = 0.25, infidelity_normalize: bool = True,
                 sensitivity_radius: float = 0.1, batch_size: int = 16,
                 internal_batch_size: Optional[int] = 64, executor=None,
                 progress: bool = True, seed: int = 0) -> None:
        self.forward_func = forward_func
        self.methods = methods
        self.method_kwargs = method_kwargs
        self.reference = reference
        self.metrics = metrics
        self.rank_method = rank_method
        self.spearman_formula = spearman_formula
        self.undefined = undefined
        self.target_class = target_class
        self.output_type = output_type
        self.exclude_positions = exclude_positions
        self.special_token_ids = special_token_ids
        self.baseline_token_id = baseline_token_id
        self.aopc_bins = aopc_bins
        self.removal = removal
        self.n_perturb_samples = n_perturb_samples
        self.infidelity_drop_prob = infidelity_drop_prob
        self.infidelity_normalize = infidelity_normalize
        self.sensitivity_radius = sensitivity_radius
        self.batch_size = batch_size
        self.internal_batch_size = internal_batch_size
        self.executor = executor
        self.progress = progress
        self.seed = seed

    # ------------------------------------------------------------------ public

    def evaluate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 targets=None, *, special_tokens_mask: Optional[torch.Tensor] = None) -> EvaluationResult:
        """Run every method on ``input_ids`` and score it.

        Args:
            input_ids: ``(N, S)`` token ids (padded).
            attention_mask: ``(N, S)`` 0/1; passed to the model as its first extra argument.
            targets: ``(N,)`` correct classes; None explains the predicted class.
            special_tokens_mask: ``(N, S)`` 0/1 marking special tokens to exclude.

        Returns:
            :class:`~captum_attnflow.evaluation.EvaluationResult`.
        """
        self._check_settings()
        input_ids, attention_mask, targets, special_tokens_mask = self._check_data(
            input_ids, attention_mask, targets, special_tokens_mask)
        generator = torch.Generator().manual_seed(self.seed)
        values: Dict[tuple, list] = defaultdict(list)
        starts = range(0, input_ids.shape[0], self.batch_size)
        for start in tqdm(starts, desc="evaluating attributions", disable=not self.progress):
            batch = slice(start, start + self.batch_size)
            self._evaluate_batch(
                input_ids[batch], None if attention_mask is None else attention_mask[batch],
                None if targets is None else targets[batch],
                None if special_tokens_mask is None else special_tokens_mask[batch], generator, values)
        return EvaluationResult.from_values({key: np.concatenate(parts) for key, parts in values.items()},
                                            undefined=self.undefined)

    # ------------------------------------------------------------------ one batch

    def _evaluate_batch(self, input_ids, attention_mask, targets, special_tokens_mask, generator, values):
        args = () if attention_mask is None else (attention_mask,)
        prob_forward = probability_forward(self.forward_func, self.output_type)
        target = _resolve_target(prob_forward, input_ids, args,
                                 None if self.target_class == "predicted" else targets)
        special = self._special_mask(input_ids, special_tokens_mask)
        eligible = eligible_tokens(input_ids, attention_mask, exclude_positions=self.exclude_positions,
                                   special_tokens_mask=special)
        scores = {name: self._token_scores(name, input_ids, target, args) for name in self.methods}
        for key, batch_values in self._batch_metrics(scores, input_ids, target, args, eligible,
                                                     prob_forward, generator):
            values[key].append(np.asarray(batch_values, dtype=np.float64))

    def _batch_metrics(self, scores, input_ids, target, args, eligible, prob_forward, generator):
        """Yield ``((metric, reference, method, layer), per-example values)`` for one batch."""
        for reference in self._references():
            reference_scores = scores[reference][1][-1]
            for name, (layers, method_scores) in scores.items():
                if name == reference:
                    continue
                for layer, layer_scores in zip(layers, method_scores):
                    yield ("spearman", reference, name, layer), per_example_spearman(
                        layer_scores, reference_scores, eligible, ranks=self.rank_method,
                        formula=self.spearman_formula)
        for name, (layers, method_scores) in scores.items():
            for layer, layer_scores in zip(layers, method_scores):
                if "aopc" in self.metrics:
                    aopc = aopc_scores(self.forward_func, input_ids, layer_scores, target, args,
                                       baseline_token_id=self.baseline_token_id, removal=self.removal,
                                       bins=self.aopc_bins, output_type=self.output_type, eligible=eligible)
                    for metric, metric_values in aopc.items():
                        yield (metric, None, name, layer), metric_values
                if "infidelity" in self.metrics:
                    yield ("infidelity", None, name, layer), self._infidelity(
                        prob_forward, input_ids, layer_scores, target, args, eligible, generator)
            if "sensitivity" in self.metrics:
                yield ("sensitivity", None, name, layers[-1]), self._sensitivity(
                    name, input_ids, target, args, eligible, generator)

    def _references(self) -> Tuple[str, ...]:
        if "spearman" not in self.metrics or self.reference is None:
            return ()
        return (self.reference,) if isinstance(self.reference, str) else tuple(self.reference)

    # ------------------------------------------------------------------ running methods

    def _token_scores(self, name: str, input_ids, target, args):
        """``(layers, (n_layers, B, S) scores)``; ``layers == [None]`` for single-output methods."""
        kwargs = self._kwargs_of(name)
        output = self._run_method(name, input_ids, target, args, kwargs)
        if kwargs.get("return_all_layers", False):
            if output.ndim != 3 or tuple(output.shape[1:]) != tuple(input_ids.shape):
                raise InvalidInputError(
                    f"method {name!r} was asked for return_all_layers=True and must return (L, B, S) "
                    f"= (L, {input_ids.shape[0]}, {input_ids.shape[1]}), got {tuple(output.shape)}.")
            # Layers are numbered from 1 (after the first layer), as in the paper and every figure.
            return list(range(1, output.shape[0] + 1)), output.detach().float()
        return [None], _reduce_to_tokens(output, input_ids, name).unsqueeze(0)

    def _run_method(self, name: str, input_ids, target, args, kwargs):
        method = self.methods[name]
        if self.executor is not None and isinstance(method, AttentionFlow):
            return flow_map(method, input_ids, additional_forward_args=args or None, executor=self.executor,
                            **kwargs)
        attribute = method.attribute if isinstance(method, Attribution) else method
        if kwargs.get("internal_batch_size") is not None:
            # Captum needs at least one row per example (it warns and takes that anyway);
            # sensitivity_max stacks its perturbed copies into one larger batch.
            kwargs = dict(kwargs, internal_batch_size=max(kwargs["internal_batch_size"], len(input_ids)))
        output = attribute(input_ids, target=target, additional_forward_args=args or None, **kwargs)
        if isinstance(output, tuple):  # Captum returns a tuple when inputs were a tuple
            output = output[0]
        return output

    def _kwargs_of(self, name: str) -> Dict[str, Any]:
        kwargs = dict((self.method_kwargs or {}).get(name, {}))
        if self.internal_batch_size is not None and "internal_batch_size" not in kwargs \
                and _takes_internal_batch_size(self.methods[name]):
            kwargs["internal_batch_size"] = self.internal_batch_size
        return kwargs

    # ------------------------------------------------------------------ Captum metrics

    def _infidelity(self, prob_forward, input_ids, token_scores, target, args, eligible, generator):
        perturb = token_dropout_infidelity_perturb(
            self.baseline_token_id, drop_prob=self.infidelity_drop_prob,
            protected_ids=self.special_token_ids, eligible=eligible, generator=generator)
        return infidelity(prob_forward, perturb, input_ids, token_scores.to(torch.float32),
                          additional_forward_args=args or None, target=target,
                          n_perturb_samples=self.n_perturb_samples,
                          normalize=self.infidelity_normalize).detach().cpu().numpy()

    def _sensitivity(self, name, input_ids, target, args, eligible, generator):
        kwargs = self._kwargs_of(name)
        kwargs.pop("return_all_layers", None)  # sensitivity is taken on the last layer only

        def explain(perturbed_ids, target=None, additional_forward_args=None):
            # sensitivity_max passes the original inputs as a 1-tuple (perturbed ones as a
            # tensor) and expects a tuple back, as Captum's attribute() gives for tuple inputs.
            if isinstance(perturbed_ids, tuple):
                (perturbed_ids,) = perturbed_ids
            perturbed_args = format_forward_args(additional_forward_args)
            output = self._run_method(name, perturbed_ids, target, perturbed_args, kwargs)
            return (_reduce_to_tokens(output, perturbed_ids, name),)

        perturb = token_dropout_sensitivity_perturb(self.baseline_token_id,
                                                    protected_ids=self.special_token_ids,
                                                    eligible=eligible, generator=generator)
        return sensitivity_max(explain, input_ids, perturb, perturb_radius=self.sensitivity_radius,
                               n_perturb_samples=self.n_perturb_samples, target=target,
                               additional_forward_args=args or None).detach().cpu().numpy()

    def _special_mask(self, input_ids, special_tokens_mask):
        by_id = torch.isin(input_ids, torch.as_tensor(list(self.special_token_ids), dtype=input_ids.dtype))
        return by_id if special_tokens_mask is None else by_id | special_tokens_mask.bool()

    # ------------------------------------------------------------------ validation

    def _check_settings(self) -> None:
        if not isinstance(self.methods, Mapping) or not self.methods:
            raise InvalidParameterError("methods must be a non-empty dict {name: Attribution or callable}.")
        for name, method in self.methods.items():
            if not (isinstance(method, Attribution) or callable(method)):
                raise InvalidParameterError(f"method {name!r} is neither a Captum Attribution nor callable.")
        unknown = set(self.method_kwargs or {}) - set(self.methods)
        if unknown:
            raise InvalidParameterError(f"method_kwargs names unknown methods {sorted(unknown)}.")
        bad = set(self.metrics) - set(METRICS)
        if bad or not self.metrics:
            raise InvalidParameterError(f"metrics={tuple(self.metrics)!r}; choose from {METRICS}.")
        references = (self.reference,) if isinstance(self.reference, str) else tuple(self.reference or ())
        for reference in references:
            if reference not in self.methods:
                raise InvalidParameterError(
                    f"reference={reference!r} is not a key of methods {sorted(self.methods)}.")
        if "spearman" in self.metrics and self.reference is None:
            raise InvalidParameterError("metrics include 'spearman' but reference is None; name a method.")
        for name, choices in (("output_type", OUTPUT_TYPES), ("rank_method", RANK_METHODS),
                              ("spearman_formula", SPEARMAN_FORMULAS), ("undefined", UNDEFINED_POLICIES),
                              ("target_class", TARGET_CLASSES)):
            if getattr(self, name) not in choices:
                raise InvalidParameterError(f"{name}={getattr(self, name)!r}; use one of {choices}.")
        if self.removal not in REMOVALS:
            raise InvalidParameterError(f"removal={self.removal!r}; use one of {REMOVALS}.")
        for name in ("batch_size", "n_perturb_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive int, got {value!r}.")
        value = self.internal_batch_size
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
            raise InvalidParameterError(f"internal_batch_size must be a positive int or None, got {value!r}.")

    @staticmethod
    def _check_data(input_ids, attention_mask, targets, special_tokens_mask):
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
            raise InvalidInputError("input_ids must be an integer tensor of shape (N, S).")
        for name, tensor in (("attention_mask", attention_mask), ("special_tokens_mask", special_tokens_mask)):
            if tensor is not None and (not isinstance(tensor, torch.Tensor) or tensor.shape != input_ids.shape):
                raise InvalidInputError(f"{name} must be a tensor of shape {tuple(input_ids.shape)}.")
        if targets is not None:
            targets = torch.as_tensor(targets).long().view(-1)
            if targets.numel() != input_ids.shape[0]:
                raise InvalidInputError(
                    f"targets has {targets.numel()} entries for {input_ids.shape[0]} examples.")
        return input_ids, attention_mask, targets, special_tokens_mask


def evaluate_attributions(forward_func: Callable, methods: Mapping[str, Method], input_ids: torch.Tensor,
                          attention_mask: Optional[torch.Tensor] = None, targets=None,
                          **settings) -> EvaluationResult:
    """One-call form: ``AttributionEvaluator(forward_func, methods, **settings).evaluate(...)``.

    Example:
        >>> import torch
        >>> from captum_attnflow.evaluation import BlankOut
        >>> probs = lambda ids: torch.stack([1 - ids.sum(1) / 10, ids.sum(1) / 10], 1)
        >>> gradient_free = lambda ids, **kwargs: ids.float()  # score = the id: exactly |Δp| · 10
        >>> result = evaluate_attributions(probs, {"blank": BlankOut(probs, 0, output_type="probs"),
        ...                                        "ids": gradient_free}, torch.tensor([[1, 3, 2]]),
        ...                                targets=torch.tensor([1]), reference="blank", output_type="probs",
        ...                                metrics=("spearman",), progress=False)
        >>> result.rows[0]["method"], result.rows[0]["mean"]
        ('ids', 1.0)
    """
    special_tokens_mask = settings.pop("special_tokens_mask", None)
    return AttributionEvaluator(forward_func, methods, **settings).evaluate(
        input_ids, attention_mask, targets, special_tokens_mask=special_tokens_mask)


def _reduce_to_tokens(output, input_ids, name: str) -> torch.Tensor:
    """``(B, S, ...)`` attributions -> ``(B, S)`` token scores by summing trailing dimensions."""
    if not isinstance(output, torch.Tensor) or tuple(output.shape[:2]) != tuple(input_ids.shape):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise InvalidInputError(
            f"method {name!r} must return (B, S) or (B, S, ...) attributions for inputs of shape "
            f"{tuple(input_ids.shape)}, got {shape}.")
    # Summing over the embedding dimension is Captum's usual token-level reduction.
    return output.detach().float().reshape(*input_ids.shape, -1).sum(-1)


def _takes_internal_batch_size(method) -> bool:
    """Whether the method's ``attribute`` accepts ``internal_batch_size`` (Captum's IG family)."""
    attribute = method.attribute if isinstance(method, Attribution) else method
    try:
        return "internal_batch_size" in inspect.signature(attribute).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False
