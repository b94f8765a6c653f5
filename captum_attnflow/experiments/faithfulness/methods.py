"""The compared explanations: raw attention, rollout and flow under each edge weighting, and two references.

Rollout and flow take the edge weighting as ``edge_weights=`` (``"attention"``: the raw
attention graph; ``"gradient"``: Chefer et al.'s gradient-weighted attention; ``"grad_rollout"``:
vit-explain's), passed straight to the Captum classes. With ``"attention"`` nothing is passed,
so the harness also runs on library versions without the option.
"""

import inspect
from typing import List, Sequence, Tuple

import torch
from torch import nn

from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention
from captum_attnflow.evaluation.faithfulness import random_attributions
from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.experiments.faithfulness.tasks import Task

EDGE_WEIGHTS = ("attention", "gradient", "grad_rollout")
GRAPH_METHODS = {"rollout": AttentionRollout, "flow": AttentionFlow}
REFERENCES = ("raw_attention", "grad_x_input", "random")


def supported_edge_weights() -> Tuple[str, ...]:
    """The edge weightings this version of the library offers (``"attention"`` always)."""
    parameters = inspect.signature(AttentionRollout.attribute).parameters
    return EDGE_WEIGHTS if "edge_weights" in parameters else ("attention",)


def method_names(edge_weights: Sequence[str]) -> List[str]:
    """``raw_attention``, ``rollout/<edge weights>``, ``flow/<edge weights>``, ``grad_x_input``, ``random``."""
    unknown = [name for name in edge_weights if name not in EDGE_WEIGHTS]
    if unknown:
        raise InvalidParameterError(f"edge weights {unknown} are not known; use some of {EDGE_WEIGHTS}.")
    graphs = [f"{method}/{weights}" for method in GRAPH_METHODS for weights in edge_weights]
    return ["raw_attention", *graphs, "grad_x_input", "random"]


def attribute(task: Task, net: nn.Module, method: str) -> torch.Tensor:
    """``(B, U)`` scores of ``method`` for ``task``'s examples on ``net`` (the trained model or a randomised copy)."""
    if method == "random":
        # Independent of the model by construction: the sanity check must flag it.
        return random_attributions(task.eligible, seed=task.seed)
    if method == "grad_x_input":
        return task.grad_x_input(net).float()
    forward = task.forward_of(net)
    options = dict(task.attribute_options, token_index=task.token_index)
    if method == "raw_attention":
        explainer = RawAttention(forward, **task.attribution_options(net))
        return task.to_units(explainer.attribute(task.inputs, **options))
    name, _, weights = method.partition("/")
    if name not in GRAPH_METHODS or weights not in EDGE_WEIGHTS:
        raise InvalidParameterError(f"method {method!r} is not known; see method_names().")
    if weights != "attention":
        options.update(edge_weights=weights, start_layer=0)
    if name == "flow":
        options.update(allow_large=True, show_progress=False)
    explainer = GRAPH_METHODS[name](forward, **task.attribution_options(net))
    return task.to_units(explainer.attribute(task.inputs, target=task.target, **options))
