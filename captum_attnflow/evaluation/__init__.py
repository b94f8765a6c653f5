"""Evaluate token attributions: rank correlation with a reference (e.g. blank-out),
ERASER AOPC comprehensiveness/sufficiency, and Captum's infidelity / sensitivity.

* :class:`AttributionEvaluator` / :func:`evaluate_attributions`: run a dict of methods over a
  dataset batch by batch and score them (per layer for layered methods);
* :class:`BlankOut`: the paper's reference (one token replaced by UNK, ``|Δp|``);
* :class:`EmbeddingAttribution`: Captum gradient methods (``Saliency``, ``InputXGradient`` ...)
  on the embedding layer, called with token ids; :class:`InputGradients` with the paper's
  gradient reducers (L2, |Σ|, gradient × input);
* :class:`OutputPositionsRelevance`: relevance as one output row, the mean or the max over
  output positions (the protocol choices of the paper's two experiments);
* :func:`bootstrap_mean_ci`: confidence intervals over examples and training seeds;
* :class:`EvaluationResult`: CSV, Markdown and per-layer correlation plots.

Example:
    >>> import torch
    >>> from captum_attnflow.evaluation import per_example_spearman, summarize
    >>> scores = torch.tensor([[0.1, 0.5, 0.4], [0.2, 0.2, 0.6]])
    >>> blank = torch.tensor([[0.0, 0.9, 0.3], [0.1, 0.3, 0.9]])
    >>> summarize(per_example_spearman(scores, blank))[2]
    2
"""

from captum_attnflow.evaluation.embeddings import GRADIENT_REDUCERS, EmbeddingAttribution, InputGradients
from captum_attnflow.evaluation.harness import METRICS, TARGET_CLASSES, AttributionEvaluator, evaluate_attributions
from captum_attnflow.evaluation.llm import LLM_METRICS, LLMAttributionEvaluator, LLMEvaluationResult
from captum_attnflow.evaluation.metrics import (
    AOPC_BINS,
    RANK_METHODS,
    SPEARMAN_FORMULAS,
    UNDEFINED_POLICIES,
    BlankOut,
    aopc_scores,
    blank_out_attribution,
    bootstrap_difference_ci,
    bootstrap_mean_ci,
    bootstrap_mean_cis,
    bootstrap_means,
    eligible_tokens,
    per_example_spearman,
    probability_forward,
    spearman_correlation,
    spearman_from_ranks,
    summarize,
    token_dropout_infidelity_perturb,
    token_dropout_sensitivity_perturb,
    top_k_counts,
    top_k_mask,
)
from captum_attnflow.evaluation.relevance import OUTPUT_REDUCTIONS, OutputPositionsRelevance, reduce_output_positions
from captum_attnflow.evaluation.reporting import COLUMNS, EvaluationResult

__all__ = [
    "AOPC_BINS",
    "COLUMNS",
    "GRADIENT_REDUCERS",
    "METRICS",
    "OUTPUT_REDUCTIONS",
    "RANK_METHODS",
    "SPEARMAN_FORMULAS",
    "TARGET_CLASSES",
    "UNDEFINED_POLICIES",
    "AttributionEvaluator",
    "BlankOut",
    "EmbeddingAttribution",
    "EvaluationResult",
    "InputGradients",
    "LLM_METRICS",
    "LLMAttributionEvaluator",
    "LLMEvaluationResult",
    "OutputPositionsRelevance",
    "aopc_scores",
    "blank_out_attribution",
    "bootstrap_difference_ci",
    "bootstrap_mean_ci",
    "bootstrap_mean_cis",
    "bootstrap_means",
    "eligible_tokens",
    "evaluate_attributions",
    "per_example_spearman",
    "probability_forward",
    "reduce_output_positions",
    "spearman_correlation",
    "spearman_from_ranks",
    "summarize",
    "token_dropout_infidelity_perturb",
    "token_dropout_sensitivity_perturb",
    "top_k_counts",
    "top_k_mask",
]
