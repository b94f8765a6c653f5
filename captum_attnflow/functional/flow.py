"""Attention flow (Abnar & Zuidema, 2020, Sec. 4): max-flow in the layered attention graph.

Two levels: :func:`attention_flow` takes attention weights and the same options as
:class:`~captum_attnflow.AttentionFlow` (which calls it); :func:`flow_from_transitions` and
:func:`batched_flow_from_transitions` take fused float64 transition matrices and, per example,
the list of explained ``positions`` (a resolved ``token_index``), for users who fuse
attention themselves.
"""

import itertools
from concurrent.futures import Executor
from numbers import Integral
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from captum_attnflow._validation import check_flag
from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.functional import _cost, _maxflow
from captum_attnflow.functional._cost import check_flow_budget, estimate_flow_cost
from captum_attnflow.functional._problem import propagation_problem
from captum_attnflow.functional.causal import normalize_by_receptive_field
from captum_attnflow.functional.positions import (
    ExplainedPositions,
    TokenIndex,
    assemble,
)


def flow_from_transitions(transitions: np.ndarray, positions: Sequence[int], *,
                          valid: Optional[np.ndarray] = None, normalize: bool = True,
                          backend: str = "auto") -> np.ndarray:
    """Flow to every input from each explained position on the top layer of ``transitions``.

    Args:
        transitions: ``(l, S, S)`` float64 array, ``transitions[k] = Â_{k+1}``; the edge
            (k+1, i) -> (k, j) has capacity ``transitions[k, i, j]``.
        positions: the explained positions ``p`` (source nodes ``(l, p)``) as plain indices into
            the sequence; unlike the public ``token_index`` they take no ``"mean"``/``"last"``/``"all"``.
        valid: optional ``(S,)`` bool array of real (non-padding) tokens; padded inputs get 0.
        normalize: divide each flow vector by its sum over inputs (the paper's choice).
        backend: max-flow engine, see :data:`captum_attnflow.functional.FLOW_BACKENDS`.

    Returns:
        ``(len(positions), S)`` array of flow values.

    Example:
        >>> import numpy as np
        >>> transitions = np.array([[[0.5, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.5, 0.5]]])
        >>> flow_from_transitions(transitions, [0], normalize=False)
        array([[0.5, 0.5]])
    """
    return batched_flow_from_transitions(np.asarray(transitions)[None], [list(positions)],
                                         valid=None if valid is None else np.asarray(valid)[None],
                                         normalize=normalize, backend=backend)[0]


def batched_flow_from_transitions(transitions: np.ndarray, positions: Sequence[Sequence[int]], *,
                                  valid: Optional[np.ndarray] = None, normalize: bool = True,
                                  backend: str = "auto", executor: Optional[Executor] = None,
                                  chunk_size: Optional[int] = None,
                                  show_progress: Optional[bool] = None) -> List[np.ndarray]:
    """:func:`flow_from_transitions` for a batch, solved in one call to the engine.

    Args:
        transitions: ``(B, l, S, S)`` float64 array of every example's ``Â_1 … Â_l``.
        positions: for each example, its explained positions (lists may differ in length).
        valid: optional ``(B, S)`` bool array of real tokens; padded inputs get 0.
        normalize, backend: as in :func:`flow_from_transitions`.
        executor: optional :class:`concurrent.futures.Executor` (a process pool, a Dask
            ``Client.get_executor()``, ...): chunks of examples are solved there, only their
            small ``(l, S, S)`` arrays travel. Without it the engine's own threads use the
            local cores.
        chunk_size: examples per submitted task (default: the batch split in 8).
        show_progress: a progress bar over the problems: ``None`` shows one once the call has
            run for 2 s, ``True``/``False`` force it (local engine only).

    Returns:
        A list of B arrays, ``(len(positions[b]), S)`` each.
    """
    if executor is not None:
        return _flows_on_executor(transitions, positions, valid, normalize, backend, executor, chunk_size)
    examples, flat_positions = _flattened(positions)
    flows = _maxflow.max_flows_for_tasks(transitions, examples, flat_positions, valid=valid, backend=backend,
                                         show_progress=show_progress)
    if valid is not None:
        flows[~np.asarray(valid, dtype=bool)[examples]] = 0.0
    if normalize:
        totals = flows.sum(axis=1, keepdims=True)
        flows = np.divide(flows, totals, out=np.zeros_like(flows), where=totals > 0)
    stops = np.cumsum([len(p) for p in positions]).tolist()
    return [flows[start:stop] for start, stop in zip([0] + stops[:-1], stops)]


def _flows_on_executor(transitions, positions, valid, normalize, backend, executor, chunk_size):
    batch_size = len(positions)
    chunk_size = chunk_size or max(1, -(-batch_size // 8))
    futures = []
    for start in range(0, batch_size, chunk_size):
        stop = min(start + chunk_size, batch_size)
        futures.append(executor.submit(
            batched_flow_from_transitions, np.ascontiguousarray(transitions[start:stop]), positions[start:stop],
            valid=None if valid is None else np.asarray(valid)[start:stop], normalize=normalize,
            backend=backend))
    return [flows for future in futures for flows in future.result()]


def check_executor(executor) -> Executor:
    """Refuse what cannot run the flow engine, before any work is sent.

    Anything with a ``submit`` method works: thread and process pools (forked or spawned
    workers: the engine runs on threads of its own, not on an OpenMP pool that a fork would
    break), a Dask ``Client.get_executor()``, a Ray pool.

    Example:
        >>> check_executor("processes")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        captum_attnflow.exceptions.InvalidParameterError: executor must be a concurrent.futures.Executor ...
    """
    if not callable(getattr(executor, "submit", None)):
        raise InvalidParameterError(
            f"executor must be a concurrent.futures.Executor (anything with .submit), got "
            f"{type(executor).__name__}; e.g. captum_attnflow.parallel.local_process_pool() or a Dask "
            "Client(...).get_executor().")
    return executor


def check_chunk_size(chunk_size) -> Optional[int]:
    """``chunk_size`` (examples per task submitted to an executor) must be a positive int or None."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral) or chunk_size < 1:
        raise InvalidParameterError(f"chunk_size must be a positive int (examples per task), got {chunk_size!r}.")
    return int(chunk_size)


def flow_attribution(transitions: torch.Tensor, explained: ExplainedPositions, layers: List[int], *,
                     normalize: bool = True, backend: str = "auto", allow_large: bool = False,
                     causal_baseline: Optional[torch.Tensor] = None, executor: Optional[Executor] = None,
                     chunk_size: Optional[int] = None, valid: Optional[torch.Tensor] = None,
                     residual_weight: Optional[float] = None,
                     show_progress: Optional[bool] = None) -> torch.Tensor:
    """Flow rows of the explained positions, assembled: ``(len(layers), B, ...)`` float64.

    ``transitions`` are the checked ``(L, B, S, S)`` matrices ``Â_l``; ``valid`` the ``(B, S)`` bool
    mask of real tokens; ``causal_baseline`` the uninformative causal model's matrices when each
    row is divided by its receptive field; ``residual_weight`` (if known) sharpens the cost
    estimate. Every call is estimated first and refused above the budget unless ``allow_large``.
    """
    positions = explained.per_example()
    valid_np = None if valid is None else valid.cpu().numpy()
    graphs = _engine_graphs(transitions, layers)
    baseline_graphs = None if causal_baseline is None else _engine_graphs(causal_baseline, layers)
    _check_budget(graphs, positions, layers, valid_np, backend=backend, allow_large=allow_large,
                  repeats=1 if baseline_graphs is None else 2, residual_weight=residual_weight)
    options = dict(valid=valid_np, normalize=normalize, backend=backend, executor=executor, chunk_size=chunk_size,
                   show_progress=show_progress)
    rows = _flow_rows(graphs, positions, layers, **options)
    if baseline_graphs is not None:
        rows = normalize_by_receptive_field(rows, _flow_rows(baseline_graphs, positions, layers, **options))
    return assemble(rows, explained)


def _engine_graphs(transitions: torch.Tensor, layers: List[int]) -> np.ndarray:
    """The explained layers as the engine takes them: ``(B, l, S, S)`` float64 on the CPU."""
    return transitions[: max(layers) + 1].detach().to("cpu", torch.float64).numpy().transpose(1, 0, 2, 3)


def _check_budget(graphs: np.ndarray, positions: List[List[int]], layers: List[int], valid, *, backend: str,
                  allow_large: bool, repeats: int, residual_weight: Optional[float]) -> None:
    """Refuse a call over the budget; a size-only estimate over it is refined on a sample first.

    The size-only bound covers the slowest attention graphs and errs high by 5–30× on typical
    ones, so before refusing, the work of 16 of the call's own problems is measured (well
    under 1 % of any call that large) and the estimate redone from it.
    """
    batch_size, _, seq_len, _ = graphs.shape
    depths = [layer + 1 for layer in layers]
    counts = [len(p) for p in positions]
    if _maxflow.resolve_backend(backend) == "numba" and _cost.clearly_within_budget(
            sum(counts) * seq_len * repeats * len(depths), max(depths), seq_len, batch_size):
        check_flag("allow_large", allow_large)
        return  # the estimate would admit it too (small calls skip its ~15 µs)
    estimate: Dict[str, Any] = dict(backend=backend, repeats=repeats, residual_weight=residual_weight)
    cost = estimate_flow_cost(depths, seq_len, batch_size, counts, **estimate)
    if not allow_large and cost.seconds > _cost.FLOW_TIME_BUDGET_S and _maxflow.resolve_backend(backend) == "numba":
        examples, flat_positions = _flattened(positions)
        steps = _maxflow.sample_steps_per_problem(graphs, examples, flat_positions, valid=valid)
        cost = estimate_flow_cost(depths, seq_len, batch_size, counts, steps_per_problem=steps, **estimate)
    check_flow_budget(cost, allow_large)


def _flattened(positions: Sequence[Sequence[int]]):
    """``(examples, positions)`` arrays, one entry per explained position, for the engine."""
    counts = [len(p) for p in positions]
    examples = np.repeat(np.arange(len(positions), dtype=np.int64), counts)
    return examples, np.fromiter(itertools.chain.from_iterable(positions), dtype=np.int64, count=sum(counts))


def _flow_rows(graphs: np.ndarray, positions: List[List[int]], layers: List[int], **options) -> torch.Tensor:
    """``(len(layers), B, P, S)`` float64 flows, zero at unused slots."""
    batch_size, _, seq_len, _ = graphs.shape
    rows = np.zeros((len(layers), batch_size, max(len(p) for p in positions), seq_len))
    for out, layer in enumerate(layers):
        # Every example's problems go to the engine in one call (parallel over cores).
        flows = batched_flow_from_transitions(graphs[:, : layer + 1], positions, **options)
        for b, example_flows in enumerate(flows):
            rows[out, b, : len(example_flows)] = example_flows
    return torch.from_numpy(rows)


def attention_flow(attentions, *, token_index: TokenIndex = 0, layer: Optional[int] = None,
                   return_all_layers: bool = False, head_fusion: str = "mean", residual_weight: float = 0.5,
                   discard_ratio: float = 0.0, normalize: bool = True,
                   attention_mask: Optional[torch.Tensor] = None, backend: str = "auto",
                   causal_normalization: bool = False, allow_large: bool = False,
                   executor: Optional[Executor] = None, chunk_size: Optional[int] = None,
                   show_progress: Optional[bool] = None, edge_weights: str = "attention",
                   attention_grads=None, start_layer: int = 0, discard_mode: str = "row") -> torch.Tensor:
    """Attention flow from the explained position(s) after ``layer`` to every input token.

    The graph has a node per (layer, position), layer 0 being the inputs, and an edge
    (l, i) -> (l−1, k) of capacity ``Â_l[i, k]``. The flow of input ``j`` is the max-flow
    from (layer, position) to (0, j), solved exactly and separately for every ``j``.
    :class:`~captum_attnflow.AttentionFlow` calls this function on the weights it captures.

    Args:
        attentions: L tensors ``(B, H, S, S)``, one ``(L, B, H, S, S)`` tensor, or
            :class:`~captum_attnflow.functional.AttentionWeights` (what
            :func:`captum_attnflow.capture_attention` returns).
        token_index: the explained position(s), see :mod:`captum_attnflow.functional.positions`:
            an int (result ``(B, S)``), a ``(B,)`` tensor, a ``(B, P)`` tensor (``(B, P, S)``),
            ``"mean"``, ``"last"`` or ``"all"`` (the ``(B, S, S)`` flow matrix: row ``i`` is the
            flow from position ``i``; the authors' BERT code takes its max over rows).
        layer: which layer's output to explain, indexed like a Python list over the L layers
            (0 = after the first layer; default: the last).
        return_all_layers: a leading axis over every layer (one flow problem per layer).
        head_fusion, residual_weight, discard_ratio, attention_mask: as in
            :func:`~captum_attnflow.functional.attention_rollout`.
        normalize: divide each flow vector by its sum over inputs as the paper's code does;
            ``False`` returns raw max-flow values (each at most 1).
        backend: max-flow engine, one of :data:`~captum_attnflow.functional.FLOW_BACKENDS`
            (``"auto"``: the fastest exact one; ``"networkx"``: the authors' Edmonds–Karp).
        causal_normalization: for causal (decoder) attention, divide each flow by the flow the
            same position sends to that input under uniform causal attention (its receptive
            field) and rescale to the original sum; see :mod:`captum_attnflow.functional.causal`.
        allow_large: run problems whose estimated cost exceeds the budget
            (:mod:`captum_attnflow.functional._cost`); otherwise they raise
            :class:`~captum_attnflow.exceptions.ProblemTooLargeError` with the estimate.
        executor: a :class:`concurrent.futures.Executor` to solve on (see
            :mod:`captum_attnflow.parallel`).
        chunk_size: with ``executor``, examples per submitted task (default: the batch in 8 tasks).
        show_progress: a progress bar over the max-flow problems: ``None`` (default) shows one
            once a call has run for 2 s; ``True``/``False`` force it on or off.
        edge_weights: ``"attention"`` (default: capacities ``Â_l``, heads fused, residual added,
            rows renormalised), ``"gradient"`` (Chefer et al. 2021: capacities
            ``I + Ā_l``, ``Ā_l = E_h[(∇A_l ⊙ A_l)^+]``, *not* renormalised, the matrices whose
            product is Chefer's relevance, so one layer's raw flow is the gradient rollout) or
            ``"grad_rollout"`` (vit-explain's renormalised rows); see
            :func:`~captum_attnflow.functional.transition_matrices`. Over several layers flow
            differs from the product as it does for attention (a bottleneck, not a sum over paths).
        attention_grads: for the gradient weightings, ``∂y/∂A`` shaped like ``attentions``;
            taken from ``attentions`` when they carry it.
        start_layer: layers before it (Python-list index) are skipped (identity capacities).
        discard_mode: ``"row"`` or ``"matrix"`` (vit-explain), see
            :func:`~captum_attnflow.functional.discard_lowest`.

    Returns:
        ``[L,] B`` followed by ``S``, ``P, S`` or ``S, S`` (see ``token_index``), in the
        attentions' floating dtype; padded inputs (and rows of padded positions) are 0.

    Example:
        >>> import torch
        >>> from captum_attnflow.functional import attention_flow, attention_rollout
        >>> attentions = torch.softmax(torch.randn(3, 1, 2, 5, 5), -1)
        >>> flow = attention_flow(attentions, token_index=0, layer=0, normalize=False)
        >>> torch.allclose(flow, attention_rollout(attentions)[0, :, 0], atol=1e-6)
        True
        >>> grads = torch.randn(3, 1, 2, 5, 5)
        >>> options = dict(edge_weights="gradient", attention_grads=grads, token_index=0, layer=0)
        >>> flow = attention_flow(attentions, normalize=False, **options)  # one layer: the capacities
        >>> torch.allclose(flow, attention_rollout(attentions, **options), atol=1e-6)
        True
    """
    check_flag("normalize", normalize)
    check_flag("causal_normalization", causal_normalization)
    _maxflow.check_backend(backend)
    if executor is not None:
        check_executor(executor)
    check_chunk_size(chunk_size)
    if show_progress is not None:
        check_flag("show_progress", show_progress)
    problem = propagation_problem(attentions, token_index=token_index, layer=layer,
                                  return_all_layers=return_all_layers, head_fusion=head_fusion,
                                  residual_weight=residual_weight, discard_ratio=discard_ratio,
                                  attention_mask=attention_mask, causal_normalization=causal_normalization,
                                  baseline_dtype=torch.float64, baseline_device=torch.device("cpu"),
                                  edge_weights=edge_weights, attention_grads=attention_grads,
                                  start_layer=start_layer, discard_mode=discard_mode)
    # The cost model's residual bound holds for renormalised rows only (not Chefer's I + Ā).
    scores = flow_attribution(problem.transitions, problem.explained, problem.layers, normalize=normalize,
                              backend=backend, allow_large=allow_large, causal_baseline=problem.causal_baseline,
                              executor=executor, chunk_size=chunk_size, valid=problem.valid,
                              residual_weight=None if edge_weights == "gradient" else residual_weight,
                              show_progress=show_progress)
    scores = scores.to(device=problem.device, dtype=problem.dtype)
    return scores if return_all_layers else scores[0]

