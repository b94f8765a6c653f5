"""The attention graph of Abnar & Zuidema (2020), Fig. 2: nodes per layer and token.

Node ``(l, i)`` is token ``i`` after layer ``l`` (``l = 0``: the input embeddings); the edge
``(l, i) -> (l - 1, k)`` has weight ``Â_l[i, k]``, the head-fused attention with the residual
added. Rollout and flow are both ways of propagating through this graph, so the figure can
highlight *how* an output token reaches the inputs under either method.
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import networkx as nx
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure

from captum_attnflow._validation import check_layer, check_position
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError, ProblemTooLargeError
from captum_attnflow.functional.fusion import transition_matrices
from captum_attnflow.functional.graph import attention_graph
from captum_attnflow.visualization._common import (
    PathLike,
    check_tokens,
    figure_and_axes,
    save_figure,
    to_numpy,
)

#: Beyond these sizes the edges of the graph turn into an unreadable gray wash.
MAX_GRAPH_TOKENS = 16
MAX_GRAPH_LAYERS = 12
HIGHLIGHTS = ("flow", "rollout", None)
#: ``token_index`` values the attention graph draws: one position, or the library's "mean"/"last".
GraphTokenIndex = Union[int, str]

Edge = Tuple[Tuple[int, int], Tuple[int, int]]


def as_transitions(attentions, *, example: int = 0, head_fusion: str = "mean",
                   residual_weight: float = 0.5) -> np.ndarray:
    """The ``(L, S, S)`` matrices ``Â_l`` of one example, from attention in any usual form.

    Accepted forms: a list of L ``(B, H, S, S)`` tensors (Hugging Face ``outputs.attentions``)
    or one ``(L, B, H, S, S)`` tensor, both turned into ``Â`` with ``head_fusion`` and
    ``residual_weight``; a :class:`~captum_attnflow.capture.CapturedAttention`; or transition
    matrices that are already fused, ``(L, B, S, S)`` or ``(L, S, S)``, used as they are.

    Example:
        >>> import torch
        >>> attentions = [torch.softmax(torch.randn(1, 2, 4, 4), -1) for _ in range(3)]
        >>> as_transitions(attentions).shape
        (3, 4, 4)
    """
    if hasattr(attentions, "attentions") and hasattr(attentions, "head_fusion"):
        head_fusion = attentions.head_fusion or head_fusion
        attentions = attentions.attentions
    if isinstance(attentions, (list, tuple)) or getattr(attentions, "ndim", None) == 5:
        fused = transition_matrices(attentions, head_fusion=head_fusion, residual_weight=residual_weight)
        return to_numpy(fused, "attentions")[:, _check_example(example, fused.shape[1])]
    transitions = to_numpy(attentions, "transitions")
    if transitions.ndim == 4:
        transitions = transitions[:, _check_example(example, transitions.shape[1])]
    if transitions.ndim != 3 or transitions.shape[1] != transitions.shape[2]:
        raise InvalidInputError(
            f"Expected attentions (a list of (B, H, S, S) tensors or one (L, B, H, S, S) tensor) or "
            f"transition matrices (L, B, S, S) / (L, S, S); got shape {tuple(transitions.shape)}.")
    if np.any(transitions < 0):
        raise InvalidInputError("Transition matrices must be non-negative attention weights.")
    return transitions


def _check_example(example: int, batch_size: int) -> int:
    if not -batch_size <= example < batch_size:
        raise InvalidParameterError(f"example={example} is out of range for a batch of {batch_size}.")
    return example % batch_size


def edge_contributions(transitions: np.ndarray, token_index: GraphTokenIndex, *, method: str = "flow",
                       input_token: Optional[int] = None) -> np.ndarray:
    """How much of the explained token's attribution each edge of the graph carries.

    Returns an array ``E`` shaped like ``transitions``: ``E[l - 1, i, k]`` is the amount on the
    edge ``(l, i) -> (l - 1, k)``; the source is node ``(L, token_index)``. As everywhere in
    the library, ``token_index="mean"`` explains every position, averaged (the mean of the
    single-source amounts, so what reaches the inputs is ``token_index="mean"``'s attribution),
    and ``"last"`` the last position (the graph of one unpadded example).

    * ``"rollout"``: the summed weight of all paths through the edge (products of ``Â`` along
      each path). What reaches input ``j`` is exactly the rollout score of ``j``.
    * ``"flow"``: one maximum flow per input ``j`` (networkx's preflow-push, its fastest here),
      summed and divided by the total, so what reaches input ``j`` is the normalized attention
      flow of ``j``. Maximum flows are not unique; this shows one of them.

    With ``input_token`` only what ends in that input is kept (for flow: its raw max-flow).

    Example:
        >>> import numpy as np
        >>> transitions = np.array([[[0.5, 0.5], [0.2, 0.8]]] * 2)
        >>> mass = edge_contributions(transitions, 0, method="rollout")
        >>> mass[0].sum(axis=0).round(3)  # what reaches each input = rollout row 0
        array([0.35, 0.65])
    """
    transitions = np.asarray(transitions, dtype=np.float64)
    seq_len = transitions.shape[-1]
    sources = explained_sources(token_index, seq_len)
    if input_token is not None:
        input_token = check_position(input_token, seq_len, "input_token")
    if method not in ("flow", "rollout"):
        raise InvalidParameterError(f"method={method!r} is not supported; use 'flow' or 'rollout'.")
    inputs = range(seq_len) if input_token is None else [input_token]
    per_source = [_rollout_contributions(transitions, source, input_token) if method == "rollout" else
                  _flow_contributions(transitions, source, inputs, normalize=input_token is None)
                  for source in sources]
    return np.mean(per_source, axis=0)


def explained_sources(token_index: GraphTokenIndex, seq_len: int) -> List[int]:
    """The top-layer positions that ``token_index`` explains in a graph of ``seq_len`` real tokens.

    Example:
        >>> explained_sources("mean", 3), explained_sources("last", 3), explained_sources(-1, 3)
        ([0, 1, 2], [2], [2])
    """
    if isinstance(token_index, str):
        if token_index == "mean":
            return list(range(seq_len))
        if token_index == "last":
            return [seq_len - 1]
        raise InvalidParameterError(
            f"token_index={token_index!r} is not supported by the attention graph; use a position, "
            "'mean' (every token, averaged) or 'last'.")
    return [check_position(token_index, seq_len, "token_index")]


def _source_label(token_index: GraphTokenIndex, sources: Sequence[int], tokens: Sequence[str]) -> str:
    return "every token, averaged" if token_index == "mean" else f"'{tokens[sources[0]]}'"


def _rollout_contributions(transitions: np.ndarray, token_index: int,
                           input_token: Optional[int]) -> np.ndarray:
    num_layers, seq_len, _ = transitions.shape
    # reach[l][k]: share of node (l, k)'s rollout that ends in the selected input (all: 1).
    if input_token is None:
        reach = [np.ones(seq_len)] * num_layers
    else:
        reach = [np.eye(seq_len)[:, input_token]]
        for layer in range(num_layers - 1):
            reach.append(transitions[layer] @ reach[-1])
    mass = np.zeros_like(transitions)
    arriving = np.eye(seq_len)[token_index]  # total path weight arriving at each node
    for layer in range(num_layers - 1, -1, -1):
        mass[layer] = arriving[:, None] * transitions[layer] * reach[layer][None, :]
        arriving = arriving @ transitions[layer]
    return mass


def _flow_contributions(transitions: np.ndarray, token_index: int, inputs: Sequence[int],
                        normalize: bool) -> np.ndarray:
    num_layers = transitions.shape[0]
    graph = attention_graph(transitions)
    source = (num_layers, token_index)
    mass = np.zeros_like(transitions)
    total = 0.0
    for position in inputs:
        value, flow = nx.maximum_flow(graph, source, (0, position),
                                      flow_func=nx.algorithms.flow.preflow_push)
        total += value
        for (layer, i), targets in flow.items():
            for (_, k), amount in targets.items():
                mass[layer - 1, i, k] += amount
    if normalize and total > 0:
        mass /= total
    return mass


def plot_attention_graph(attentions, tokens: Sequence[str], *, token_index: GraphTokenIndex = 0, layer: int = -1,
                         highlight: Optional[str] = "flow", input_token: Optional[int] = None,
                         example: int = 0, head_fusion: str = "mean", residual_weight: float = 0.5,
                         ax: Optional[Axes] = None, cmap: str = "plasma_r", title: Optional[str] = None,
                         colorbar: bool = True, allow_large: bool = False,
                         path: Optional[PathLike] = None) -> Figure:
    """Draw the attention graph of one short input, optionally highlighting flow or rollout.

    Gray edges show ``Â`` (width and opacity grow with the weight). With ``highlight`` the
    edges that carry the explained token's attribution are drawn on top, colored and sized
    by the amount they carry (:func:`edge_contributions`), and the input nodes are filled
    with the resulting score, which is the method's attribution of the explained position(s).
    The explained nodes are ringed in red.

    Args:
        attentions: see :func:`as_transitions` (raw attention, captured attention, or ``Â``).
        tokens: one label per position.
        token_index: position of the explained token in the top layer drawn, or ``"mean"``
            (every token's, averaged: what mean-pooled models are explained by) or ``"last"``.
        layer: draw the graph up to this layer's output (Python indexing, ``-1`` = all).
        highlight: ``"flow"``, ``"rollout"`` or None (only the graph).
        input_token: highlight only the paths ending in this input.
        example: which example of a batch to draw.
        head_fusion, residual_weight: how raw attention becomes ``Â``.
        ax: axes to draw into; by default a new figure sized to the graph.
        cmap: colormap of the highlight.
        title: axes title; by default one naming the method and the explained token.
        colorbar: add a color bar for the highlighted amounts.
        allow_large: draw inputs longer than ``MAX_GRAPH_TOKENS`` or deeper than
            ``MAX_GRAPH_LAYERS`` (unreadable, and flow highlighting gets slow).
        path: also save the figure there (PNG, SVG, PDF ... from the suffix).

    Returns:
        The matplotlib figure.

    Example:
        >>> import torch
        >>> attentions = [torch.softmax(torch.randn(1, 2, 4, 4), -1) for _ in range(3)]
        >>> figure = plot_attention_graph(attentions, ["[CLS]", "a", "cat", "[SEP]"])
        >>> len(figure.axes) >= 1
        True
    """
    if highlight not in HIGHLIGHTS:
        raise InvalidParameterError(f"highlight={highlight!r} is not supported; use one of {HIGHLIGHTS}.")
    transitions = as_transitions(attentions, example=example, head_fusion=head_fusion,
                                 residual_weight=residual_weight)
    transitions = transitions[: check_layer(layer, transitions.shape[0]) + 1]
    num_layers, seq_len, _ = transitions.shape
    tokens = check_tokens(tokens, seq_len)
    _check_drawable(num_layers, seq_len, allow_large)
    sources = explained_sources(token_index, seq_len)
    source_label = _source_label(token_index, sources, tokens)

    figure, ax = figure_and_axes(ax, (max(6.0, 0.75 * seq_len + 2.0), max(3.5, 0.7 * num_layers + 2.0)))
    graph = attention_graph(transitions)
    positions = {node: (node[1], node[0]) for node in graph.nodes}
    _draw_weights(graph, positions, ax, faint=highlight is not None)
    scores, mappable = None, None
    if highlight is not None:
        mass = edge_contributions(transitions, token_index, method=highlight, input_token=input_token)
        scores = mass[0].sum(axis=0)
        mappable = _draw_highlight(graph, positions, mass, ax, colormaps[cmap])
        if colorbar:
            figure.colorbar(mappable, ax=ax, shrink=0.8, pad=0.01,
                            label=f"{highlight} carried from {source_label}")
    _draw_nodes(graph, positions, ax, scores, mappable, [(num_layers, source) for source in sources])
    _label_axes(ax, tokens, num_layers)
    if title is None:
        title = "Attention graph" if highlight is None else (
            f"Attention {highlight} from {source_label} (layer {num_layers})")
    ax.set_title(title)
    save_figure(figure, path)
    return figure


def _check_drawable(num_layers: int, seq_len: int, allow_large: bool) -> None:
    if allow_large or (seq_len <= MAX_GRAPH_TOKENS and num_layers <= MAX_GRAPH_LAYERS):
        return
    raise ProblemTooLargeError(
        f"An attention graph of {seq_len} tokens x {num_layers} layers has {num_layers * seq_len ** 2} "
        f"edges and cannot be drawn legibly (limits: {MAX_GRAPH_TOKENS} tokens, {MAX_GRAPH_LAYERS} layers). "
        "Shorten the input, pass layer= to draw fewer layers, or allow_large=True to draw it anyway.")


def _draw_weights(graph: nx.DiGraph, positions: Dict, ax: Axes, faint: bool) -> None:
    edges = sorted(graph.edges(data="capacity"), key=lambda edge: edge[2])
    weights = np.array([weight for _, _, weight in edges])
    opacity = (0.08 + 0.6 * weights) * (0.45 if faint else 1.0)
    nx.draw_networkx_edges(graph, positions, edgelist=[edge[:2] for edge in edges], ax=ax, arrows=False,
                           width=0.3 + 2.5 * weights,
                           edge_color=[to_rgba("dimgray", alpha) for alpha in opacity])


def _draw_highlight(graph: nx.DiGraph, positions: Dict, mass: np.ndarray, ax: Axes, cmap) -> ScalarMappable:
    peak = float(mass.max()) if mass.max() > 0 else 1.0
    carried = [(edge, mass[edge[0][0] - 1, edge[0][1], edge[1][1]]) for edge in graph.edges]
    # Drop negligible paths and draw the heaviest last so they stay visible on top.
    carried = sorted((item for item in carried if item[1] > 0.01 * peak), key=lambda item: item[1])
    norm = Normalize(0.0, peak)
    if carried:
        amounts = np.array([amount for _, amount in carried])
        nx.draw_networkx_edges(graph, positions, edgelist=[edge for edge, _ in carried], ax=ax, arrows=False,
                               width=0.8 + 5.0 * amounts / peak, edge_color=cmap(norm(amounts)))
    return ScalarMappable(norm=norm, cmap=cmap)


def _draw_nodes(graph: nx.DiGraph, positions: Dict, ax: Axes, scores: Optional[np.ndarray],
                mappable: Optional[ScalarMappable], explained_nodes: List[Tuple[int, int]]) -> None:
    nodes = list(graph.nodes)
    # Input nodes share the edges' color scale, so a node reads as "this much arrived here".
    colors = [mappable.to_rgba(scores[position]) if scores is not None and mappable is not None and layer == 0
              else "white" for layer, position in nodes]
    nx.draw_networkx_nodes(graph, positions, nodelist=nodes, ax=ax, node_size=110, node_color=colors,
                           edgecolors="#333333", linewidths=0.8)
    if scores is not None:
        for position, score in enumerate(scores):
            ax.annotate(f"{score:.2f}", (position, 0), xytext=(0, -11), textcoords="offset points",
                        ha="center", va="top", fontsize=7, color="#333333")
    nx.draw_networkx_nodes(graph, positions, nodelist=explained_nodes, ax=ax, node_size=190,
                           node_color="white", edgecolors="crimson", linewidths=2.5)


def _label_axes(ax: Axes, tokens: Sequence[str], num_layers: int) -> None:
    ax.set_xticks(range(len(tokens)), tokens, rotation=45, ha="right")
    ax.set_yticks(range(num_layers + 1), ["input"] + [f"layer {layer}" for layer in range(1, num_layers + 1)])
    # networkx hides tick labels when it draws; bring them back as the token/layer legend.
    ax.tick_params(length=0, labelbottom=True, labelleft=True, pad=14)
    ax.set_xlim(-0.6, len(tokens) - 0.4)
    ax.set_ylim(-0.45, num_layers + 0.35)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
