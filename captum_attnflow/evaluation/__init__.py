"""Evaluate token attributions: rank correlation with a reference (e.g. blank-out),
ERASER AOPC comprehensiveness/sufficiency, and Captum's infidelity / sensitivity.

Example:
    >>> import torch
    >>> from captum_attnflow.evaluation import per_example_spearman, summarize
    >>> scores = torch.tensor([[0.1, 0.5, 0.4], [0.2, 0.2, 0.6]])
    >>> blank = torch.tensor([[0.0, 0.9, 0.3], [0.1, 0.3, 0.9]])
    >>> summarize(per_example_spearman(scores, blank))[2]
    2
"""

from captum_attnflow.evaluation.harness import METRICS, AttributionEvaluator, evaluate_attributions
from captum_attnflow.evaluation.metrics import (
    AOPC_BINS,
    BlankOut,
    aopc_scores,
    blank_out_attribution,
    eligible_tokens,
    per_example_spearman,
    probability_forward,
    spearman_correlation,
    summarize,
    token_dropout_infidelity_perturb,
    token_dropout_sensitivity_perturb,
    top_k_counts,
    top_k_mask,
)
from captum_attnflow.evaluation.reporting import COLUMNS, EvaluationResult

__all__ = [
    "AOPC_BINS",
    "COLUMNS",
    "METRICS",
    "AttributionEvaluator",
    "BlankOut",
    "EvaluationResult",
    "aopc_scores",
    "blank_out_attribution",
    "eligible_tokens",
    "evaluate_attributions",
    "per_example_spearman",
    "probability_forward",
    "spearman_correlation",
    "summarize",
    "token_dropout_infidelity_perturb",
    "token_dropout_sensitivity_perturb",
    "top_k_counts",
    "top_k_mask",
]
