"""The attention graph of Abnar & Zuidema (2020), Fig. 2, as a networkx graph.

The one builder of the package: the networkx max-flow reference (:mod:`._maxflow`), the
benchmark's networkx anchors and the figure of :mod:`captum_attnflow.visualization.graph` all
use it, so node labels mean the same everywhere.
"""

import numpy as np


def attention_graph(transitions: np.ndarray):
    """Directed graph with an edge ``(l, i) -> (l-1, k)`` of ``capacity`` ``transitions[l-1, i, k]``.

    Node ``(l, i)`` is token ``i`` after layer ``l`` (``l = 0``: the input embeddings), so the
    output node of position ``i`` is ``(L, i)`` and input ``j`` is ``(0, j)``. Zero-weight edges
    are left out (they carry nothing).

    Args:
        transitions: ``(L, S, S)`` head-fused attention with the residual added (``Â_1 … Â_L``),
            e.g. one example of :func:`~captum_attnflow.functional.transition_matrices`.

    Returns:
        A ``networkx.DiGraph`` with ``(L + 1) · S`` nodes.

    Example:
        >>> import numpy as np
        >>> from networkx import maximum_flow_value
        >>> graph = attention_graph(np.full((2, 3, 3), 1 / 3))
        >>> graph.number_of_nodes(), graph.number_of_edges()
        (9, 18)
        >>> # output 0 after layer 2 -> input 1: three paths of capacity 1/3 each (rollout gives 1/3)
        >>> round(maximum_flow_value(graph, (2, 0), (0, 1)), 6)
        1.0
    """
    import networkx as nx  # only the reference engine and the figures need it

    transitions = np.asarray(transitions)
    num_layers, seq_len, _ = transitions.shape
    graph = nx.DiGraph()
    graph.add_nodes_from((layer, position) for layer in range(num_layers + 1) for position in range(seq_len))
    for layer in range(1, num_layers + 1):
        rows, cols = np.nonzero(transitions[layer - 1] > 0)
        graph.add_edges_from(((layer, int(i)), (layer - 1, int(k)), {"capacity": float(transitions[layer - 1, i, k])})
                             for i, k in zip(rows, cols))
    return graph
