"""Figures and HTML pages for attention-based (and any other) attributions.

Every function draws with Matplotlib's object-oriented API on the Agg renderer (no
pyplot state, no windows), returns the figure (or the HTML string) and saves it when given
a ``path``, so it behaves the same in scripts, the ``captum-attnflow`` CLI and Jupyter.

* :func:`plot_attention_graph`: the paper's layered attention graph, with the rollout or
  flow paths from one output token highlighted.
* :func:`plot_layer_maps`: raw attention, rollout and flow after every layer (heat maps).
* :func:`plot_method_comparison`: per-token bars of several methods side by side.
* :func:`comparison_html`: one standalone HTML page, a Captum text row per method and example.
* :func:`image_overlay`: an attribution blended over its image (Captum's ``visualize_image_attr``).
"""

from captum_attnflow.visualization.graph import (
    MAX_GRAPH_LAYERS,
    MAX_GRAPH_TOKENS,
    as_transitions,
    attention_graph,
    edge_contributions,
    plot_attention_graph,
)
from captum_attnflow.visualization.image import image_overlay
from captum_attnflow.visualization.maps import layer_attribution_maps, plot_layer_maps, plot_method_comparison
from captum_attnflow.visualization.text import comparison_html, comparison_records

__all__ = [
    "MAX_GRAPH_LAYERS",
    "MAX_GRAPH_TOKENS",
    "as_transitions",
    "attention_graph",
    "comparison_html",
    "comparison_records",
    "edge_contributions",
    "image_overlay",
    "layer_attribution_maps",
    "plot_attention_graph",
    "plot_layer_maps",
    "plot_method_comparison",
]
