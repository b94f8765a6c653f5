"""Attention flow over a choice of edge weights: the attention itself, or attention weighted by
the gradient of a target output.

:func:`attention_flow` is the functional API's flow: with the default options it *is*
:func:`captum_attnflow.functional.flow.attention_flow` (the call is handed over unchanged). With
``edge_weights="gradient"`` / ``"grad_rollout"``, ``start_layer`` or ``discard_mode="matrix"``
the layer matrices are built by :func:`~captum_attnflow.functional.transition_matrices` and
passed to the same exact engine (:func:`~captum_attnflow.functional.flow.flow_attribution`).

Capacities with ``edge_weights="gradient"`` are Chefer et al.'s layer matrices ``I + Ā_l``
(``Ā_l = E_h[(∇A_l ⊙ A_l)^+]``), *not* renormalised: the same matrices whose product is
Chefer's relevance ``R``, so after one layer the raw flow (``normalize=False``) from ``i`` to
``j`` is the capacity ``(I + Ā_1)[i, j]`` = ``R[i, j]``, the gradient rollout. Over several
layers flow differs from the product as it does for attention (a bottleneck instead of a sum
over paths). With ``"grad_rollout"`` capacities are vit-explain's renormalised rows.
"""

from concurrent.futures import Executor
from typing import Optional

import torch

from captum_attnflow._validation import check_flag
from captum_attnflow.functional import _maxflow
from captum_attnflow.functional import flow as _flow
from captum_attnflow.functional._problem import propagation_problem
from captum_attnflow.functional.positions import TokenIndex


def attention_flow(attentions, *, token_index: TokenIndex = 0, layer: Optional[int] = None,
                   return_all_layers: bool = False, head_fusion: str = "mean", residual_weight: float = 0.5,
                   discard_ratio: float = 0.0, normalize: bool = True,
                   attention_mask: Optional[torch.Tensor] = None, backend: str = "auto",
                   causal_normalization: bool = False, allow_large: bool = False,
                   executor: Optional[Executor] = None, chunk_size: Optional[int] = None,
                   show_progress: Optional[bool] = None, edge_weights: str = "attention",
                   attention_grads=None, start_layer: int = 0, discard_mode: str = "row") -> torch.Tensor:
    """Attention flow from the explained position(s) after ``layer`` to every input token.

    Every option but the last four is that of
    :func:`captum_attnflow.functional.flow.attention_flow` (see there); the call goes there
    unchanged when those four are at their defaults.

    Args:
        edge_weights: ``"attention"`` (default: capacities ``Â_l``, heads fused, residual added,
            rows renormalised), ``"gradient"`` (capacities ``I + E_h[(∇A_l ⊙ A_l)^+]``, Chefer
            et al. 2021, not renormalised) or ``"grad_rollout"`` (vit-explain's renormalised rows);
            see :func:`~captum_attnflow.functional.transition_matrices`.
        attention_grads: for the gradient weightings, ``∂y/∂A`` shaped like ``attentions``;
            taken from ``attentions`` when they carry it.
        start_layer: layers before it (Python-list index) are skipped (identity capacities).
        discard_mode: ``"row"`` or ``"matrix"`` (vit-explain), see
            :func:`~captum_attnflow.functional.discard_lowest`.

    Example:
        >>> import torch
        >>> from captum_attnflow.functional import attention_flow, attention_rollout
        >>> attentions = torch.softmax(torch.randn(3, 1, 2, 5, 5), -1)
        >>> grads = torch.randn(3, 1, 2, 5, 5)
        >>> options = dict(edge_weights="gradient", attention_grads=grads, token_index=0, layer=0)
        >>> flow = attention_flow(attentions, normalize=False, **options)  # one layer: the capacities
        >>> torch.allclose(flow, attention_rollout(attentions, **options), atol=1e-6)
        True
    """
    if edge_weights == "attention" and attention_grads is None and start_layer == 0 and discard_mode == "row":
        return _flow.attention_flow(
            attentions, token_index=token_index, layer=layer, return_all_layers=return_all_layers,
            head_fusion=head_fusion, residual_weight=residual_weight, discard_ratio=discard_ratio,
            normalize=normalize, attention_mask=attention_mask, backend=backend,
            causal_normalization=causal_normalization, allow_large=allow_large, executor=executor,
            chunk_size=chunk_size, show_progress=show_progress)
    check_flag("normalize", normalize)
    check_flag("causal_normalization", causal_normalization)
    _maxflow.check_backend(backend)
    if executor is not None:
        _flow.check_executor(executor)
    _flow.check_chunk_size(chunk_size)
    if show_progress is not None:
        check_flag("show_progress", show_progress)
    problem = propagation_problem(attentions, token_index=token_index, layer=layer,
                                  return_all_layers=return_all_layers, head_fusion=head_fusion,
                                  residual_weight=residual_weight, discard_ratio=discard_ratio,
                                  attention_mask=attention_mask, causal_normalization=causal_normalization,
                                  baseline_dtype=torch.float64, baseline_device=torch.device("cpu"),
                                  edge_weights=edge_weights, attention_grads=attention_grads,
                                  start_layer=start_layer, discard_mode=discard_mode)
    scores = _flow.flow_attribution(problem.transitions, problem.explained, problem.layers, normalize=normalize,
                                    backend=backend, allow_large=allow_large,
                                    causal_baseline=problem.causal_baseline, executor=executor,
                                    chunk_size=chunk_size, valid=problem.valid,
                                    residual_weight=None if edge_weights == "gradient" else residual_weight,
                                    show_progress=show_progress)
    scores = scores.to(device=problem.device, dtype=problem.dtype)
    return scores if return_all_layers else scores[0]
