"""The reference max-flow engines of attention flow: scipy's Dinic and networkx's Edmonds–Karp.

Both build a graph per example and solve one (source, input) problem per call; the compiled
engine (:mod:`~captum_attnflow.functional._flow_kernels`) is checked against them.

Exactness of ``"scipy"``: capacities are rounded down to multiples of ``1 / scale`` with
``scale = 2**30 / max(1, largest row sum)``; the value found is a feasible flow of the rounded
graph, below the exact value by at most ``(edges of its minimum cut) / scale`` (S edges when
the cut is the sink's, ``S / 2**30`` = 5e-7 for 512 tokens; at most ``l·S²/scale``).
"""

import math
from typing import List, Optional, Tuple

import numpy as np

from captum_attnflow.functional.graph import attention_graph

SCIPY_SCALE = 2 ** 30


def networkx_max_flow(transitions: np.ndarray, sources: List[int],
                      valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Reference: one networkx Edmonds–Karp max-flow per (source, input), as the authors did."""
    from networkx.algorithms.flow import edmonds_karp, maximum_flow_value

    num_layers, seq_len, _ = transitions.shape
    graph = attention_graph(transitions)
    flows = np.zeros((len(sources), seq_len))
    for row, position in enumerate(sources):
        for j in range(seq_len):
            if valid is not None and not valid[j]:
                continue
            flows[row, j] = maximum_flow_value(graph, (num_layers, position), (0, j), flow_func=edmonds_karp)
    return flows


def scipy_graph(transitions: np.ndarray) -> Tuple[object, float]:
    """The layered graph of one example as scipy's integer CSR matrix, and its scale."""
    from scipy.sparse import csr_matrix

    num_layers, seq_len, _ = transitions.shape
    # Flow through any edge or node is at most the source's out-capacity: keep it in int32.
    scale = math.floor(SCIPY_SCALE / max(1.0, float(transitions.sum(axis=-1).max())))
    layer, rows, cols = np.nonzero(transitions)
    capacities = np.floor(transitions[layer, rows, cols] * scale).astype(np.int32)
    nodes = (num_layers + 1) * seq_len
    graph = csr_matrix((capacities, ((layer + 1) * seq_len + rows, layer * seq_len + cols)), shape=(nodes, nodes))
    graph.eliminate_zeros()
    return graph, scale


def scipy_max_flow(transitions: np.ndarray, sources: List[int], valid: Optional[np.ndarray] = None) -> np.ndarray:
    """One scipy Dinic max-flow per (source, input) on the integer-scaled graph of one example."""
    from scipy.sparse.csgraph import maximum_flow

    num_layers, seq_len, _ = transitions.shape
    graph, scale = scipy_graph(transitions)
    flows = np.zeros((len(sources), seq_len))
    for row, position in enumerate(sources):
        for j in range(seq_len):
            if valid is None or valid[j]:
                flows[row, j] = maximum_flow(graph, num_layers * seq_len + position, j,
                                             method="dinic").flow_value / scale
    return flows
