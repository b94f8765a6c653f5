"""Exact max-flow engines for the layered attention graph.

Node ids: ``(layer, position) -> layer * S + position``; layer 0 holds the inputs.
``transitions[k]`` (shape ``(S, S)``) is ``Â_{k+1}``: the edge from node (k+1, i) to
node (k, j) has capacity ``transitions[k, i, j]``.
"""

from typing import List, Optional

import numpy as np

from captum_attnflow.exceptions import InvalidParameterError

FLOW_BACKENDS = ("auto", "networkx")


def check_backend(backend: str) -> str:
    if backend not in FLOW_BACKENDS:
        raise InvalidParameterError(f"backend={backend!r} is not available; use one of {FLOW_BACKENDS}.")
    return backend


def _networkx_graph(transitions: np.ndarray):
    import networkx as nx

    num_layers, seq_len, _ = transitions.shape
    graph = nx.DiGraph()
    graph.add_nodes_from(range((num_layers + 1) * seq_len))
    for k in range(num_layers):
        rows, cols = np.nonzero(transitions[k])
        for i, j in zip(rows.tolist(), cols.tolist()):
            graph.add_edge((k + 1) * seq_len + i, k * seq_len + j, capacity=float(transitions[k, i, j]))
    return graph


def networkx_max_flow(transitions: np.ndarray, sources: List[int],
                      valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Reference: one networkx Edmonds–Karp max-flow per (source, input), as the authors did."""
    from networkx.algorithms.flow import edmonds_karp, maximum_flow_value

    num_layers, seq_len, _ = transitions.shape
    graph = _networkx_graph(transitions)
    flows = np.zeros((len(sources), seq_len))
    for row, position in enumerate(sources):
        source_node = num_layers * seq_len + position
        for j in range(seq_len):
            if valid is not None and not valid[j]:
                continue
            flows[row, j] = maximum_flow_value(graph, source_node, j, flow_func=edmonds_karp)
    return flows


def max_flow_to_inputs(transitions: np.ndarray, sources: List[int], *,
                       valid: Optional[np.ndarray] = None, backend: str = "auto") -> np.ndarray:
    """``(len(sources), S)`` exact max-flow values from each top-layer source to each input."""
    check_backend(backend)
    return networkx_max_flow(np.ascontiguousarray(transitions, dtype=np.float64), sources, valid)
