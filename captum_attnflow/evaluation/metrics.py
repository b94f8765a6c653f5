"""Metrics that score token attributions, gathered under one name: rank correlation, blank-out,
AOPC, Captum's infidelity / sensitivity with token-id perturbations, and the statistics that
pool them.

Every metric works on one batch of token ids ``(B, S)`` and returns one value per example, so
:mod:`captum_attnflow.evaluation.harness` only has to batch and aggregate. They live in:

* :mod:`~captum_attnflow.evaluation.tokens`: which tokens take part (:func:`eligible_tokens`);
* :mod:`~captum_attnflow.evaluation.correlation`: Spearman agreement with a reference;
* :mod:`~captum_attnflow.evaluation.removal`: blank-out and ERASER AOPC (remove tokens, watch ``p(y|x)``);
* :mod:`~captum_attnflow.evaluation.perturbations`: token dropout for Captum's infidelity / sensitivity;
* :mod:`~captum_attnflow.evaluation.statistics`: mean ± std (n) and bootstrap confidence intervals.
"""

from captum_attnflow.evaluation.correlation import (
    RANK_METHODS,
    SPEARMAN_FORMULAS,
    per_example_spearman,
    spearman_correlation,
    spearman_from_ranks,
)
from captum_attnflow.evaluation.perturbations import (
    token_dropout_infidelity_perturb,
    token_dropout_sensitivity_perturb,
)
from captum_attnflow.evaluation.removal import (
    AOPC_BINS,
    OUTPUT_TYPES,
    REMOVALS,
    BlankOut,
    aopc_scores,
    blank_out_attribution,
    probability_forward,
    top_k_counts,
    top_k_mask,
)
from captum_attnflow.evaluation.statistics import (
    UNDEFINED_POLICIES,
    bootstrap_difference_ci,
    bootstrap_mean_ci,
    bootstrap_mean_cis,
    bootstrap_means,
    summarize,
)
from captum_attnflow.evaluation.tokens import eligible_tokens

__all__ = [
    "AOPC_BINS",
    "OUTPUT_TYPES",
    "RANK_METHODS",
    "REMOVALS",
    "SPEARMAN_FORMULAS",
    "UNDEFINED_POLICIES",
    "BlankOut",
    "aopc_scores",
    "blank_out_attribution",
    "bootstrap_difference_ci",
    "bootstrap_mean_ci",
    "bootstrap_mean_cis",
    "bootstrap_means",
    "eligible_tokens",
    "per_example_spearman",
    "probability_forward",
    "spearman_correlation",
    "spearman_from_ranks",
    "summarize",
    "token_dropout_infidelity_perturb",
    "token_dropout_sensitivity_perturb",
    "top_k_counts",
    "top_k_mask",
]
