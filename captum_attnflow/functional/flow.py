"""Attention flow (Abnar & Zuidema, 2020, Sec. 4): max-flow in the layered attention graph."""

from concurrent.futures import Executor
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from captum_attnflow._validation import (
    check_causal_transitions,
    check_flag,
    check_layer,
    check_positions,
)
from captum_attnflow.functional import _maxflow
from captum_attnflow.functional._cost import check_flow_budget, estimate_flow_cost
from captum_attnflow.functional.causal import normalize_by_receptive_field, receptive_field_transitions
from captum_attnflow.functional.fusion import transition_matrices


def flow_from_transitions(transitions: np.ndarray, sources: Sequence[int], *,
                          valid: Optional[np.ndarray] = None, normalize: bool = True,
                          backend: str = "auto") -> np.ndarray:
    """Flow to every input from each source node on the top layer of ``transitions``.

    Args:
        transitions: ``(l, S, S)`` float64 array, ``transitions[k] = Â_{k+1}``; the edge
            (k+1, i) -> (k, j) has capacity ``transitions[k, i, j]``.
        sources: positions ``p`` of the source nodes ``(l, p)``.
        valid: optional ``(S,)`` bool array of real (non-padding) tokens; padded inputs get 0.
        normalize: divide each flow vector by its sum over inputs (the paper's choice).
        backend: max-flow engine, see :data:`captum_attnflow.functional.FLOW_BACKENDS`.

    Returns:
        ``(len(sources), S)`` array of flow values.

    Example:
        >>> import numpy as np
        >>> transitions = np.array([[[0.5, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.5, 0.5]]])
        >>> flow_from_transitions(transitions, [0], normalize=False)
        array([[0.5, 0.5]])
    """
    return batched_flow_from_transitions(np.asarray(transitions)[None], [list(sources)],
                                         valid=None if valid is None else np.asarray(valid)[None],
                                         normalize=normalize, backend=backend)[0]


def batched_flow_from_transitions(transitions: np.ndarray, sources: Sequence[Sequence[int]], *,
                                  valid: Optional[np.ndarray] = None, normalize: bool = True,
                                  backend: str = "auto", executor: Optional[Executor] = None,
                                  chunk_size: Optional[int] = None) -> List[np.ndarray]:
    """:func:`flow_from_transitions` for a batch, solved in one call to the engine.

    Args:
        transitions: ``(B, l, S, S)`` float64 array of every example's ``Â_1 … Â_l``.
        sources: for each example, its explained positions (lists may differ in length).
        valid: optional ``(B, S)`` bool array of real tokens; padded inputs get 0.
        normalize, backend: as in :func:`flow_from_transitions`.
        executor: optional :class:`concurrent.futures.Executor` (a process pool, a Dask
            ``Client.get_executor()``, ...): chunks of examples are solved there, only their
            small ``(l, S, S)`` arrays travel. Without it the engine's own threads use the
            local cores.
        chunk_size: examples per submitted task (default: the batch split in 8).

    Returns:
        A list of B arrays, ``(len(sources[b]), S)`` each.
    """
    if executor is not None:
        return _flows_on_executor(transitions, sources, valid, normalize, backend, executor, chunk_size)
    examples = np.concatenate([np.full(len(p), b, dtype=np.int64) for b, p in enumerate(sources)])
    positions = np.concatenate([np.asarray(p, dtype=np.int64) for p in sources])
    flows = _maxflow.max_flows_for_tasks(transitions, examples, positions, valid=valid, backend=backend)
    if valid is not None:
        flows[~np.asarray(valid, dtype=bool)[examples]] = 0.0
    if normalize:
        totals = flows.sum(axis=1, keepdims=True)
        flows = np.divide(flows, totals, out=np.zeros_like(flows), where=totals > 0)
    return np.split(flows, np.cumsum([len(p) for p in sources])[:-1])


def _flows_on_executor(transitions, sources, valid, normalize, backend, executor, chunk_size):
    batch_size = len(sources)
    chunk_size = chunk_size or max(1, -(-batch_size // 8))
    futures = []
    for start in range(0, batch_size, chunk_size):
        stop = min(start + chunk_size, batch_size)
        futures.append(executor.submit(
            batched_flow_from_transitions, np.ascontiguousarray(transitions[start:stop]), sources[start:stop],
            valid=None if valid is None else np.asarray(valid)[start:stop], normalize=normalize,
            backend=backend))
    return [flows for future in futures for flows in future.result()]


def attention_flow(attentions, *, output_positions: Union[int, Sequence[int]] = 0, layer: int = -1,
                   head_fusion: str = "mean", residual_weight: float = 0.5, normalize: bool = True,
                   discard_ratio: float = 0.0, attention_mask: Optional[torch.Tensor] = None,
                   backend: str = "auto", causal_normalization: bool = False,
                   allow_large: bool = False) -> torch.Tensor:
    """Attention flow from output position(s) after ``layer`` to every input token.

    The graph has a node per (layer, position), layer 0 being the inputs, and an edge
    (l, i) -> (l−1, k) of capacity ``Â_l[i, k]``. The flow of input ``j`` is the max-flow
    from (layer, position) to (0, j), solved exactly and separately for every ``j``.

    Args:
        attentions: L tensors ``(B, H, S, S)`` or one ``(L, B, H, S, S)`` tensor.
        output_positions: an int (result ``(B, S)``) or a sequence of P ints (``(B, P, S)``).
        layer: which layer's output to explain, indexed like a Python list over the L layers
            (0 = after the first layer, −1 = after the last).
        head_fusion, residual_weight, discard_ratio, attention_mask: as in
            :func:`~captum_attnflow.functional.attention_rollout`.
        normalize: divide by the sum over inputs as the paper's code does; ``False`` returns
            raw max-flow values (each at most 1).
        backend: ``"auto"`` (fastest exact engine available), ``"numba"``, ``"scipy"`` or
            ``"networkx"`` (the authors' Edmonds–Karp, for reference).
        causal_normalization: for causal (decoder) attention, divide each flow by the flow the
            same source sends to that input under uniform causal attention (its receptive
            field) and rescale to the original sum; see :mod:`captum_attnflow.functional.causal`.
        allow_large: run problems whose estimated cost exceeds the budget of
            :func:`captum_attnflow.functional._cost.check_flow_budget`; otherwise they raise
            :class:`~captum_attnflow.exceptions.ProblemTooLargeError` with the estimate.

    Example:
        >>> import torch
        >>> from captum_attnflow.functional import attention_flow, attention_rollout
        >>> attentions = torch.softmax(torch.randn(3, 1, 2, 5, 5), -1)
        >>> flow = attention_flow(attentions, output_positions=0, layer=0, normalize=False)
        >>> torch.allclose(flow, attention_rollout(attentions)[0, :, 0], atol=1e-6)
        True
    """
    transitions = transition_matrices(attentions, head_fusion=head_fusion,
                                      residual_weight=residual_weight,
                                      discard_ratio=discard_ratio, attention_mask=attention_mask)
    num_layers, batch_size, seq_len, _ = transitions.shape
    layer_index = check_layer(layer, num_layers)
    positions, scalar = check_positions(output_positions, seq_len, "output_positions")
    _maxflow.check_backend(backend)
    check_flag("normalize", normalize)
    check_flag("causal_normalization", causal_normalization)
    check_flow_budget(estimate_flow_cost(layer_index + 1, seq_len, batch_size, len(positions), backend=backend,
                                         repeats=2 if causal_normalization else 1), allow_large)
    if causal_normalization:
        check_causal_transitions(transitions[: layer_index + 1])
    graph = transitions[: layer_index + 1].detach().to("cpu", torch.float64).numpy()
    valid_tokens = None if attention_mask is None else attention_mask.bool().cpu().numpy()
    flows = np.stack(batched_flow_from_transitions(graph.transpose(1, 0, 2, 3), [positions] * batch_size,
                                                   valid=valid_tokens, normalize=normalize, backend=backend))
    result = torch.from_numpy(flows).to(transitions.device, transitions.dtype)
    if causal_normalization:
        uniform = receptive_field_transitions(
            layer_index + 1, batch_size, seq_len, residual_weight=residual_weight, dtype=torch.float64,
            attention_mask=None if attention_mask is None else attention_mask.cpu())
        baseline = np.stack(batched_flow_from_transitions(
            uniform.numpy().transpose(1, 0, 2, 3), [positions] * batch_size, valid=valid_tokens,
            normalize=normalize, backend=backend))
        result = normalize_by_receptive_field(result, torch.from_numpy(baseline).to(result))
    return result[:, 0] if scalar else result
