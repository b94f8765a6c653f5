"""The harness's LLM mode: explanations of generated text, scored per generated token.

Every method explains the same target tokens of each prompt (given, or generated once by
greedy decoding). Per generated token ``t`` and method:

* ``spearman``: Spearman correlation of the method's ``token_attr[t]`` with the reference's
  (by default ``LLMAttribution(FeatureAblation)``), over the prompt's interpretable features;
* ``logprob_drop``: ``log p(y_t | x) − log p(y_t | x without the method's top feature for t)``;
* ``aopc``: ERASER comprehensiveness (DeYoung et al., 2020) on log-probabilities, the mean
  over bins ``q`` of the drop when the method's top ``max(1, ceil(q·F))`` features are removed.

A feature is removed the way Captum's LLM classes perturb it (``inp.to_model_input`` with the
feature marked absent: the baseline token of a ``TextTokenInput``, the baseline value of a
``TextTemplateInput``); probabilities are teacher-forced (prompt + target in one pass).
Values are pooled over tokens and prompts into mean ± std (n), as a table and a plot.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from captum.attr import TextTemplateInput
from tqdm.auto import tqdm

from captum_attnflow.capture.llm import (
    end_of_text_ids,
    generate_targets,
    pad_token_id,
    prompt_token_ids,
    target_log_probs,
)
from captum_attnflow.evaluation.metrics import AOPC_BINS, spearman_correlation, top_k_counts
from captum_attnflow.evaluation.reporting import EvaluationResult
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

LLM_METRICS = ("spearman", "logprob_drop", "aopc")
#: Name of the seeded random-ranking baseline added with ``random_baseline=True``.
RANDOM = "random"
_LABELS = {"spearman": "Spearman vs {reference}", "logprob_drop": "log-prob drop (top-1 removed)",
           "aopc": "AOPC (log-prob, comprehensiveness)"}


class LLMAttributionEvaluator:
    r"""Score LLM attribution methods per generated token against a reference and by removal.

    Construction only stores the settings (scikit-learn style); :meth:`evaluate` does the work.

    Args:
        model: the Hugging Face causal language model the methods explain.
        tokenizer: its tokenizer.
        methods: ``{name: method}``, each with Captum's LLM interface
            ``attribute(inp, target=...) -> LLMAttributionResult`` with ``token_attr``:
            :class:`~captum_attnflow.LLMAttentionAttribution`, ``captum.attr.LLMAttribution``
            (``FeatureAblation``, ``ShapleyValueSampling`` ...) or ``LLMGradientAttribution``.
        reference: the name in ``methods`` that Spearman correlations are taken against.
        metrics: subset of ``("spearman", "logprob_drop", "aopc")``.
        method_kwargs: ``{name: dict}`` extra ``attribute`` keyword arguments per method.
        aopc_bins: fractions ``q`` of the prompt's features removed for AOPC (ERASER's bins).
        random_baseline: add a ``"random"`` method (seeded random scores): the floor to beat.
        progress: show a tqdm progress bar over prompts.
        seed: seed of the random baseline.

    Example:
        >>> import torch
        >>> from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from captum_attnflow import AttentionRollout, LLMAttentionAttribution
        >>> from captum_attnflow.toy import word_level_tokenizer
        >>> tokenizer = word_level_tokenizer("the keys to cabinet are is".split())
        >>> _ = torch.manual_seed(0)
        >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2,
        ...                                    n_positions=32)).eval()
        >>> evaluator = LLMAttributionEvaluator(model, tokenizer, {
        ...     "ablation": LLMAttribution(FeatureAblation(model), tokenizer),
        ...     "rollout": LLMAttentionAttribution(AttentionRollout(model), tokenizer)}, progress=False)
        >>> result = evaluator.evaluate([TextTokenInput("the keys to the cabinet", tokenizer, skip_tokens=["<s>"])],
        ...                             targets=["are is"])
        >>> [(row["metric"], row["method"], row["n"]) for row in result.rows]  # doctest: +NORMALIZE_WHITESPACE
        [('spearman', 'rollout', 2), ('spearman', 'random', 2), ('logprob_drop', 'ablation', 2),
         ('logprob_drop', 'rollout', 2), ('logprob_drop', 'random', 2), ('aopc', 'ablation', 2),
         ('aopc', 'rollout', 2), ('aopc', 'random', 2)]
    """

    def __init__(self, model, tokenizer, methods: Mapping[str, Any], *, reference: str = "ablation",
                 metrics: Sequence[str] = LLM_METRICS, method_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 aopc_bins: Sequence[float] = AOPC_BINS, random_baseline: bool = True, progress: bool = True,
                 seed: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.methods = methods
        self.reference = reference
        self.metrics = metrics
        self.method_kwargs = method_kwargs
        self.aopc_bins = aopc_bins
        self.random_baseline = random_baseline
        self.progress = progress
        self.seed = seed

    def evaluate(self, inps: Sequence[Any], targets: Optional[Sequence[Any]] = None,
                 gen_args: Optional[Dict[str, Any]] = None) -> "LLMEvaluationResult":
        """Explain every prompt with every method and score each generated token.

        Args:
            inps: ``TextTokenInput`` / ``TextTemplateInput`` prompts.
            targets: one target per prompt (string or 1-D token ids), or None to generate each
                once with ``gen_args`` (greedy by default) and explain that text with every method.
            gen_args: generation arguments when ``targets`` is None.

        Returns:
            :class:`LLMEvaluationResult`.
        """
        self._check_settings(inps, targets)
        generator = torch.Generator().manual_seed(self.seed)
        values: Dict[Tuple, List[float]] = {key: [] for key in self._keys()}
        per_token: List[Dict[str, Any]] = []
        iterator = tqdm(range(len(inps)), desc="LLM evaluation", disable=not self.progress)
        for index in iterator:
            inp = inps[index]
            target = self._target(inp, None if targets is None else targets[index], gen_args)
            scores = self._scores(inp, target, generator)
            for key, token_values in self._prompt_metrics(inp, target, scores).items():
                values[key].extend(token_values)
                per_token.extend(dict(prompt=index, token=t, metric=key[0], method=key[2], value=value)
                                 for t, value in enumerate(token_values))
        return LLMEvaluationResult.from_values({key: np.asarray(v) for key, v in values.items()}, per_token,
                                               methods=self._names())

    # ------------------------------------------------------------------ steps

    def _names(self) -> List[str]:
        return list(self.methods) + ([RANDOM] if self.random_baseline else [])

    def _keys(self) -> List[Tuple]:
        names = self._names()
        keys: List[Tuple] = []
        for metric in self.metrics:
            if metric == "spearman":
                keys += [("spearman", self.reference, name, None) for name in names if name != self.reference]
            else:
                keys += [(metric, None, name, None) for name in names]
        return keys

    def _target(self, inp, target, gen_args) -> torch.Tensor:
        if target is None:
            return generate_targets(self.model, [prompt_token_ids(inp, self.tokenizer)], gen_args,
                                    pad_id=pad_token_id(self.tokenizer),
                                    end_ids=end_of_text_ids(self.model, self.tokenizer))[0]
        if isinstance(target, str):
            return torch.tensor(self.tokenizer.encode(target, add_special_tokens=False), dtype=torch.long)
        return torch.as_tensor(target).reshape(-1).long()

    def _scores(self, inp, target: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """``{name: (T, n_itp_features)}`` scores of every method for this prompt."""
        scores = {}
        for name, method in self.methods.items():
            kwargs = dict((self.method_kwargs or {}).get(name, {}))
            result = method.attribute(inp, target=target, **kwargs)
            scores[name] = interpretable_scores(inp, result.token_attr, len(target), name)
        if self.random_baseline:
            scores[RANDOM] = torch.rand(len(target), inp.n_itp_features, generator=generator)
        return scores

    def _prompt_metrics(self, inp, target: torch.Tensor, scores: Dict[str, torch.Tensor]) -> Dict[Tuple, List[float]]:
        values: Dict[Tuple, List[float]] = {}
        if "spearman" in self.metrics:
            reference = scores[self.reference]
            for name, method_scores in scores.items():
                if name != self.reference:
                    values[("spearman", self.reference, name, None)] = [
                        spearman_correlation(method_scores[t].numpy(), reference[t].numpy())
                        for t in range(len(target))]
        removal = [metric for metric in ("logprob_drop", "aopc") if metric in self.metrics]
        if removal:
            drops = removal_drops(self.model, self.tokenizer, inp, target, scores, self._removal_counts(inp))
            for name, per_count in drops.items():
                if "logprob_drop" in removal:
                    values[("logprob_drop", None, name, None)] = per_count[0].tolist()
                if "aopc" in removal:
                    values[("aopc", None, name, None)] = per_count[1:].mean(0).tolist()
        return values

    def _removal_counts(self, inp) -> List[int]:
        """Features removed: 1 for ``logprob_drop``, then one count per AOPC bin."""
        n = torch.tensor([inp.n_itp_features])
        return [1] + [int(top_k_counts(n, q)) for q in self.aopc_bins]

    def _check_settings(self, inps, targets) -> None:
        unknown = sorted(set(self.metrics) - set(LLM_METRICS))
        if unknown or not self.metrics:
            raise InvalidParameterError(f"metrics {unknown or '()'} not supported; use a subset of {LLM_METRICS}.")
        if "spearman" in self.metrics and self.reference not in self.methods:
            raise InvalidParameterError(
                f"reference={self.reference!r} is not one of the methods {sorted(self.methods)}; name the method "
                "to correlate against, e.g. {'ablation': LLMAttribution(FeatureAblation(model), tokenizer)}.")
        if self.random_baseline and RANDOM in self.methods:
            raise InvalidParameterError(f"{RANDOM!r} names the random baseline; rename that method.")
        if any(not 0.0 < q <= 1.0 for q in self.aopc_bins) or not len(self.aopc_bins):
            raise InvalidParameterError(f"aopc_bins must be fractions in (0, 1], got {tuple(self.aopc_bins)}.")
        if not len(inps):
            raise InvalidInputError("inps is empty; pass at least one prompt.")
        if targets is not None and len(targets) != len(inps):
            raise InvalidParameterError(f"targets has {len(targets)} entries for {len(inps)} prompts; pass one each.")


def interpretable_scores(inp, token_attr: Optional[torch.Tensor], num_targets: int, name: str) -> torch.Tensor:
    """``(T, n_itp_features)`` scores: one column per feature Captum perturbs.

    A ``TextTemplateInput`` with a ``mask`` reports one column per value (a group's values share
    its score); the group's score is read from its first value.
    """
    if token_attr is None:
        raise InvalidInputError(f"method {name!r} returned no token_attr (Lime / KernelShap give only seq_attr); "
                                "evaluate methods with per-token attributions.")
    token_attr = token_attr.detach().float().cpu()
    expected_columns = inp.n_features if isinstance(inp, TextTemplateInput) else inp.n_itp_features
    if tuple(token_attr.shape) != (num_targets, expected_columns):
        raise InvalidInputError(
            f"method {name!r} returned token_attr of shape {tuple(token_attr.shape)}, expected "
            f"({num_targets}, {expected_columns}): one row per target token, one column per prompt feature "
            "(use include_generated=False).")
    if isinstance(inp, TextTemplateInput) and inp.mask is not None:
        first_value = [inp.formatted_mask.index(group) for group in range(inp.n_itp_features)]
        token_attr = token_attr[:, first_value]
    return token_attr


def removal_drops(model, tokenizer, inp, target: torch.Tensor, scores: Dict[str, torch.Tensor],
                  counts: Sequence[int]) -> Dict[str, np.ndarray]:
    """``{name: (len(counts), T)}`` log-prob drops when each token's top-``k`` features are removed.

    Every distinct set of removed features is run once (teacher-forced, all sets in one
    left-padded pass), and its log-probabilities serve every target token that removes it.
    Ties in the scores are broken by position (earlier first), so results are deterministic.
    """
    removal_sets: Dict[Tuple[int, ...], int] = {}
    plan: Dict[str, List[List[int]]] = {}
    for name, method_scores in scores.items():
        order = torch.sort(method_scores, dim=1, descending=True, stable=True).indices
        plan[name] = [[removal_sets.setdefault(tuple(sorted(order[t, :k].tolist())), len(removal_sets))
                       for t in range(len(target))] for k in counts]
    prompts = [_without_features(inp, tokenizer, removed) for removed in [()] + list(removal_sets)]
    log_probs = target_log_probs(model, prompts, target, pad_id=pad_token_id(tokenizer))
    full, perturbed = log_probs[0], log_probs[1:]
    tokens = torch.arange(len(target))
    return {name: np.stack([(full - perturbed[sets, tokens]).double().numpy() for sets in map(torch.tensor, rows)])
            for name, rows in plan.items()}


def _without_features(inp, tokenizer, removed: Sequence[int]) -> torch.Tensor:
    present = torch.ones(1, inp.n_itp_features)
    present[0, list(removed)] = 0
    model_input = inp.to_model_input(present if removed else None)
    if isinstance(model_input, str):
        return torch.tensor(tokenizer.encode(model_input), dtype=torch.long)
    return model_input.reshape(-1)


class LLMEvaluationResult(EvaluationResult):
    """:class:`~captum_attnflow.evaluation.EvaluationResult` of the LLM mode, pooled over tokens.

    Attributes:
        rows, per_example: as in :class:`EvaluationResult`; ``per_example`` arrays hold one value
            per generated token (all prompts concatenated).
        per_token: list of dicts ``prompt, token, metric, method, value`` (one per token).
        methods: the method names in display order (the evaluator's order, ``"random"`` last).

    Example:
        >>> import numpy as np
        >>> result = LLMEvaluationResult.from_values({("aopc", None, "flow", None): np.array([0.5, 1.0])}, [])
        >>> print(result.summary_markdown())
        | method | AOPC (log-prob, comprehensiveness) |
        |---|---|
        | flow | 0.750 ± 0.354 (n=2) |
    """

    def __init__(self, rows, per_example=None, per_token: Optional[List[Dict[str, Any]]] = None,
                 methods: Optional[List[str]] = None) -> None:
        super().__init__(rows, per_example)
        self.per_token = per_token if per_token is not None else []
        self.methods = methods if methods is not None else list(dict.fromkeys(row["method"] for row in rows))

    @classmethod
    def from_values(cls, per_example: Dict[tuple, np.ndarray], per_token: Optional[List[Dict[str, Any]]] = None,
                    methods: Optional[List[str]] = None, *, undefined: str = "exclude") -> "LLMEvaluationResult":
        summary = EvaluationResult.from_values(per_example, undefined=undefined)
        return cls(summary.rows, summary.per_example, per_token, methods)

    def _columns(self) -> List[Tuple[str, Optional[str]]]:
        return list(dict.fromkeys((row["metric"], row["reference"]) for row in self.rows))

    def summary_markdown(self, digits: int = 3) -> str:
        """A table with one row per method and one ``mean ± std (n)`` column per metric."""
        columns = self._columns()
        header = [_LABELS[metric].format(reference=reference) for metric, reference in columns]
        lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(columns)]
        for method in self.methods:
            cells = []
            for metric, reference in columns:
                found = self.select(metric=metric, reference=reference, method=method)
                cells.append(_mean_std(found[0], digits) if found else "(reference)" if method == reference else "—")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path, *, dpi: int = 100) -> None:
        """Save one bar panel per metric (mean, ± std error bars) to an image file.

        Uses Matplotlib's Agg canvas directly: no display and no global ``pyplot`` state.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        columns = self._columns()
        figure = Figure(figsize=(4.2 * len(columns), 3.4))
        FigureCanvasAgg(figure)
        positions = range(len(self.methods))
        for index, (metric, reference) in enumerate(columns):
            axes = figure.add_subplot(1, len(columns), index + 1)
            for position, method in enumerate(self.methods):  # same place and color in every panel
                found = self.select(metric=metric, reference=reference, method=method)
                if found:
                    axes.bar(position, found[0]["mean"], yerr=np.nan_to_num(found[0]["std"]), capsize=4,
                             color=f"C{position % 10}")
            axes.set_xticks(positions, [f"{m} (reference)" if m == reference else m for m in self.methods],
                            rotation=20, ha="right")
            axes.axhline(0.0, color="black", linewidth=0.8)
            axes.set_title(_LABELS[metric].format(reference=reference), fontsize="medium")
            axes.set_ylabel("mean ± std over generated tokens")
        figure.tight_layout()
        figure.savefig(path, dpi=dpi)

    def __repr__(self) -> str:
        return f"LLMEvaluationResult({len(self.rows)} rows, {len(self.per_token)} token values)"


def _mean_std(row: Dict[str, Any], digits: int) -> str:
    return f"{row['mean']:.{digits}f} ± {row['std']:.{digits}f} (n={row['n']})"
