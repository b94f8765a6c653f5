"""Independent references shared by the tests (plain networkx, no code of the package)."""

import networkx as nx
import numpy as np


def networkx_flow(capacities: np.ndarray, source: int) -> np.ndarray:
    """Max-flow from (l, source) to every input of the layered graph, built from scratch.

    ``capacities[k, i, j]`` is the edge (k+1, i) -> (k, j); solved with networkx's default
    algorithm (preflow-push), not the Edmonds–Karp the package's reference backend uses.
    """
    num_layers, seq_len, _ = capacities.shape
    graph = nx.DiGraph()
    for layer in range(1, num_layers + 1):
        for i in range(seq_len):
            for k in range(seq_len):
                if capacities[layer - 1, i, k] > 0:
                    graph.add_edge((layer, i), (layer - 1, k), capacity=float(capacities[layer - 1, i, k]))
    values = np.zeros(seq_len)
    for j in range(seq_len):
        if (num_layers, source) in graph and (0, j) in graph:
            values[j] = nx.maximum_flow_value(graph, (num_layers, source), (0, j))
    return values
