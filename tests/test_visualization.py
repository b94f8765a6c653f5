"""Figures and HTML of captum_attnflow.visualization: real files, real content, right numbers."""

import html
import re

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from captum_attnflow import ProblemTooLargeError
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.functional import attention_flow, attention_rollout, transition_matrices
from captum_attnflow.visualization import (
    MAX_GRAPH_TOKENS,
    as_transitions,
    attention_graph,
    comparison_html,
    comparison_records,
    edge_contributions,
    image_overlay,
    layer_attribution_maps,
    plot_attention_graph,
    plot_layer_maps,
    plot_method_comparison,
)

TOKENS = ["[CLS]", "the", "keys", "are", "here", "[SEP]"]


@pytest.fixture()
def attentions():
    generator = torch.Generator().manual_seed(3)
    return [torch.softmax(2 * torch.randn(2, 3, 6, 6, generator=generator), dim=-1) for _ in range(4)]


def read_png(path):
    """Pixels of a written PNG, checked to be a non-blank RGB(A) image."""
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels[..., :3].var() > 1e-4, "the figure is blank"
    return pixels


# ----------------------------------------------------------------- edge contributions


@pytest.mark.parametrize("token_index", [0, 3])
def test_rollout_edges_deliver_the_rollout_row(attentions, token_index):
    transitions = as_transitions(attentions, example=1)
    mass = edge_contributions(transitions, token_index, method="rollout")
    expected = attention_rollout(attentions)[-1, 1, token_index].double().numpy()
    np.testing.assert_allclose(mass[0].sum(axis=0), expected, atol=1e-6)
    # Conservation: everything leaving a layer arrives at the next one down.
    np.testing.assert_allclose(mass.sum(axis=(1, 2)), np.ones(len(attentions)), atol=1e-6)


def test_flow_edges_deliver_the_normalized_attention_flow(attentions):
    transitions = as_transitions(attentions, example=0)
    mass = edge_contributions(transitions, 2, method="flow")
    expected = attention_flow(attentions, token_index=2)[0].double().numpy()
    np.testing.assert_allclose(mass[0].sum(axis=0), expected, atol=1e-6)
    assert mass.shape == transitions.shape
    assert np.all(mass >= 0)


def test_single_input_flow_is_a_feasible_max_flow(attentions):
    transitions = as_transitions(attentions, example=0)
    mass = edge_contributions(transitions, 0, method="flow", input_token=4)
    raw = attention_flow(attentions, token_index=0, normalize=False)[0, 4].item()
    assert mass[0].sum() == pytest.approx(raw, abs=1e-6)
    assert np.all(mass <= transitions + 1e-9), "flow exceeds an edge's capacity"
    assert np.all(mass[0][:, [0, 1, 2, 3, 5]] == 0), "flow ends in an input other than the chosen one"


def test_single_input_rollout_paths_sum_to_the_rollout_entry(attentions):
    transitions = as_transitions(attentions, example=0)
    for position in range(6):
        mass = edge_contributions(transitions, 1, method="rollout", input_token=position)
        expected = attention_rollout(attentions)[-1, 0, 1, position].item()
        np.testing.assert_allclose(mass.sum(axis=(1, 2)), expected, atol=1e-6)


def test_edge_contributions_rejects_unknown_method(attentions):
    with pytest.raises(InvalidParameterError, match="method"):
        edge_contributions(as_transitions(attentions), 0, method="gradient")


def test_as_transitions_accepts_every_form(attentions):
    expected = transition_matrices(attentions)[:, 1].double().numpy()
    stacked = torch.stack(attentions)
    np.testing.assert_allclose(as_transitions(attentions, example=1), expected)
    np.testing.assert_allclose(as_transitions(stacked, example=1), expected)
    np.testing.assert_allclose(as_transitions(transition_matrices(attentions), example=1), expected, atol=1e-7)
    np.testing.assert_allclose(as_transitions(torch.from_numpy(expected)), expected)
    with pytest.raises(InvalidInputError):
        as_transitions(torch.rand(3, 4, 5))
    with pytest.raises(InvalidParameterError):
        as_transitions(attentions, example=5)


def test_attention_graph_has_one_edge_per_positive_weight():
    transitions = np.array([[[1.0, 0.0], [0.5, 0.5]]] * 3)
    graph = attention_graph(transitions)
    assert graph.number_of_nodes() == 8 and graph.number_of_edges() == 9
    assert graph.edges[(3, 1), (2, 0)]["capacity"] == 0.5


# ----------------------------------------------------------------- figures


@pytest.mark.parametrize("highlight", ["flow", "rollout", None])
def test_attention_graph_png(attentions, tmp_path, highlight):
    path = tmp_path / f"graph_{highlight}.png"
    figure = plot_attention_graph(attentions, TOKENS, highlight=highlight, path=path)
    assert isinstance(figure, Figure)
    pixels = read_png(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == TOKENS
    assert len(ax.get_yticklabels()) == len(attentions) + 1
    assert len(figure.axes) == (1 if highlight is None else 2)  # color bar with a highlight


def test_attention_graph_highlight_changes_the_picture(attentions, tmp_path):
    plot_attention_graph(attentions, TOKENS, highlight="flow", path=tmp_path / "a.png")
    plot_attention_graph(attentions, TOKENS, highlight="rollout", path=tmp_path / "b.png")
    assert not np.array_equal(read_png(tmp_path / "a.png"), read_png(tmp_path / "b.png"))


def test_attention_graph_draws_into_given_axes_and_fewer_layers(attentions):
    figure = Figure()
    ax = figure.subplots()
    returned = plot_attention_graph(attentions, TOKENS, ax=ax, layer=1, colorbar=False)
    assert returned is figure
    assert len(ax.get_yticklabels()) == 3  # input + layers 1 and 2


def test_attention_graph_refuses_large_inputs():
    seq_len = MAX_GRAPH_TOKENS + 1
    big = torch.full((2, 1, seq_len, seq_len), 1.0 / seq_len)
    tokens = [f"t{i}" for i in range(seq_len)]
    with pytest.raises(ProblemTooLargeError, match="allow_large"):
        plot_attention_graph(big, tokens)
    assert isinstance(plot_attention_graph(big, tokens, highlight=None, allow_large=True), Figure)


def test_attention_graph_checks_token_count(attentions):
    with pytest.raises(InvalidInputError, match="tokens"):
        plot_attention_graph(attentions, TOKENS[:-1])
    with pytest.raises(InvalidParameterError, match="highlight"):
        plot_attention_graph(attentions, TOKENS, highlight="gradients")


def test_layer_attribution_maps_match_functional(attentions):
    maps = layer_attribution_maps(attentions, token_index=1, example=1)
    assert set(maps) == {"raw", "rollout", "flow"}
    np.testing.assert_allclose(maps["rollout"], attention_rollout(attentions)[:, 1, 1].numpy(), atol=1e-6)
    np.testing.assert_allclose(maps["raw"][2], torch.stack(attentions)[2, 1].mean(0)[1].numpy(), atol=1e-6)
    for layer in range(len(attentions)):
        expected = attention_flow(attentions, token_index=1, layer=layer)[1].numpy()
        np.testing.assert_allclose(maps["flow"][layer], expected, atol=1e-6)


def test_layer_maps_png_from_attentions(attentions, tmp_path):
    path = tmp_path / "maps.png"
    figure = plot_layer_maps(attentions, TOKENS, example=1, path=path)
    pixels = read_png(path)
    assert pixels.shape[1] > 2 * pixels.shape[0]  # three panels side by side
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["raw", "rollout", "flow"]


def test_layer_maps_from_batched_dict(tmp_path):
    maps = {"a": torch.rand(4, 2, 6), "b": torch.rand(4, 2, 6)}
    figure = plot_layer_maps(maps, TOKENS, example=1, path=tmp_path / "m.png")
    read_png(tmp_path / "m.png")
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(image), maps["a"][:, 1].numpy(), rtol=1e-6)
    with pytest.raises(InvalidInputError):
        plot_layer_maps({"a": torch.rand(4, 6), "b": torch.rand(3, 6)}, TOKENS)


def test_layer_maps_hide_positions(attentions):
    figure = plot_layer_maps(attentions, TOKENS, hide_positions=(0, -1))
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == TOKENS[1:-1]
    expected = layer_attribution_maps(attentions)["raw"][:, 1:-1]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected, rtol=1e-6)
    with pytest.raises(InvalidParameterError):
        plot_layer_maps(attentions, TOKENS, hide_positions=range(6))


def test_method_comparison_png(tmp_path):
    scores = {"rollout": torch.rand(6), "ig": torch.randn(2, 6)}
    figure = plot_method_comparison(scores, TOKENS, example=1, path=tmp_path / "bars.png")
    read_png(tmp_path / "bars.png")
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert len(heights) == 12
    assert max(abs(h) for h in heights[6:]) == pytest.approx(1.0)  # scaled by max |score|


def test_image_overlay_png_and_upsampling(tmp_path):
    image = torch.linspace(0, 1, 16)[:, None] * torch.ones(16)[None]
    attribution = torch.zeros(4, 4)
    attribution[0, 3] = 1.0  # top-right patch
    path = tmp_path / "overlay.png"
    figure = image_overlay(attribution, image[None], path=path, title="flow")
    read_png(path)
    assert len(figure.axes) == 3  # image, overlay, color bar
    assert figure.axes[2].get_ylabel() == "score / its 99th percentile"
    overlay = figure.axes[1].images[-1].get_array()
    assert overlay.shape[:2] == (16, 16)
    # The heat sits where the attribution is: the top-right corner, not the bottom-left.
    assert np.asarray(overlay)[1, 14] > np.asarray(overlay)[14, 1]


def test_image_overlay_rgb_channels_first_into_axes(tmp_path):
    figure = Figure()
    ax = figure.subplots()
    returned = image_overlay(torch.rand(3, 8, 8), torch.rand(3, 8, 8), ax=ax, path=tmp_path / "rgb.png")
    assert returned is figure and len(figure.axes) == 2  # the overlay and its color bar
    read_png(tmp_path / "rgb.png")
    bare = Figure()
    image_overlay(torch.rand(3, 8, 8), torch.rand(3, 8, 8), ax=bare.subplots(), colorbar=False)
    assert len(bare.axes) == 1
    with pytest.raises(InvalidInputError):
        image_overlay(torch.rand(2, 2, 8, 8), torch.rand(3, 8, 8))


# ----------------------------------------------------------------- HTML


def test_comparison_html_has_every_method_row_and_token(tmp_path):
    tokens_list = [["[CLS]", "a", "<b>", "cat", "[SEP]"], ["[CLS]", "R&D", "[SEP]"]]
    attributions = {"rollout": torch.rand(2, 5), "flow": torch.rand(2, 5), "ig": torch.randn(2, 5)}
    path = tmp_path / "page.html"
    page = comparison_html(tokens_list, attributions, true_labels=["x", "y"], pred_labels=["x", "z"], path=path)
    assert path.read_text(encoding="utf-8") == page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    body_rows = re.findall(r"<tr[^>]*>.*?</tr>", page, flags=re.S)
    assert len(body_rows) == 1 + 2 * 3  # header + a row per method per example
    for name in attributions:
        assert sum(f"<b>{name}</b>" in row for row in body_rows) == 2
    for tokens in tokens_list:
        for token in tokens:
            assert html.escape(token, quote=False) in page
    assert "&lt;b&gt;" in page  # the token "<b>" is shown, not interpreted as markup


def test_comparison_records_scale_rows_and_ignore_padding():
    scores = torch.tensor([[1.0, -4.0, 9.0], [2.0, 1.0, 0.5]])
    records = comparison_records([["a", "b"], ["c", "d", "e"]], {"m": scores})
    assert len(records) == 2
    np.testing.assert_allclose(records[0].word_attributions, [0.25, -1.0])  # padding score 9 ignored
    assert records[0].attr_score == pytest.approx(-3.0)
    with pytest.raises(InvalidInputError):
        comparison_records([["a", "b", "c", "d"]], {"m": torch.rand(1, 3)})


def test_rank_scale_colors_each_row_by_its_ordering():
    scores = np.array([[0.30, 0.02, 0.26, 0.25, 0.0, 0.17]])  # a nearly flat row with a zero
    unranked = [[True, False, False, False, False, False]]  # e.g. [CLS], left out of the ranking
    record = comparison_records([TOKENS], {"flow": scores}, scale="rank", unranked=unranked)[0]
    words = np.asarray(record.word_attributions)
    assert words[0] == 0.0 and words[4] == 0.0  # unranked and zero scores stay uncolored
    # Independent reference: the order of |score| over the ranked tokens, highest = full color.
    ranked = scores[0, 1:]
    order = np.argsort(np.argsort(np.abs(ranked))) + 1
    np.testing.assert_allclose(words[1:], np.where(ranked == 0, 0, order / ranked.size))
    assert np.argmax(words) == 2  # the largest ranked score gets the strongest color
    signed = comparison_records([["a", "b", "c"]], {"ig": [[-3.0, 1.0, 2.0]]}, scale="rank")[0]
    np.testing.assert_allclose(signed.word_attributions, [-1.0, 1 / 3, 2 / 3])  # sign kept, rank of |score|
    with pytest.raises(InvalidParameterError, match="scale"):
        comparison_records([TOKENS], {"flow": scores}, scale="minmax")
    with pytest.raises(InvalidInputError, match="unranked"):
        comparison_records([TOKENS], {"flow": scores}, unranked=[[True]])


def test_comparison_html_output_column_correlations_and_legend():
    tokens_list = [["[CLS]", "keys", "here", "[SEP]"], ["[CLS]", "hi", "[SEP]"]]
    attributions = {"flow": torch.rand(2, 4), "ablation": torch.randn(2, 4)}
    page = comparison_html(tokens_list, attributions, pred_labels=["0.50", "0.10"],
                           pred_header="cosine similarity to 'where?'", scale="rank",
                           unranked=[[True, False, False, True], [True, False, True]],
                           correlations={"flow": [0.25, float("nan")], "ablation": ["reference", "reference"]},
                           correlation_header="Spearman vs ablation")
    header = re.findall(r"<th>(.*?)</th>", page)
    assert header == ["example", "method", "cosine similarity to &#x27;where?&#x27;", "Spearman vs ablation",
                      "sum", "token importance"]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page, flags=re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S) for row in rows]
    assert [row[2] for row in cells] == ["0.50", "", "0.10", ""]  # the output once per example
    assert [row[3] for row in cells] == ["+0.25", "reference", "n/a", "reference"]
    assert page.count('class="unranked"') == 2 * 2 + 2 * 2  # [CLS] and [SEP] in each row
    assert "rank of |score| within the row" in page and "not ranked" in page
    assert re.search(r'title="score -?\d', page)  # every word carries its score on hover


@pytest.mark.parametrize("seq_len", [12, 100])
def test_long_texts_wrap_within_the_width_cap(tmp_path, seq_len):
    from captum_attnflow.visualization.maps import MAX_FIGURE_WIDTH

    generator = torch.Generator().manual_seed(0)
    tokens = [f"tok{i}" for i in range(seq_len)]
    scores = {name: torch.rand(seq_len, generator=generator) for name in ("a", "b", "c", "d", "e")}
    maps = {name: torch.rand(6, seq_len, generator=generator) for name in ("raw", "rollout", "flow")}
    bars = plot_method_comparison(scores, tokens, path=tmp_path / "bars.png")
    assert read_png(tmp_path / "bars.png").shape[1] <= MAX_FIGURE_WIDTH * 150 + 200  # 150 dpi; outer labels
    figure = plot_layer_maps(maps, tokens)
    assert bars.get_size_inches()[0] <= MAX_FIGURE_WIDTH and figure.get_size_inches()[0] <= MAX_FIGURE_WIDTH
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    if seq_len == 100:  # a row per method, each wrapped into three lines that keep every token
        assert titles[:3] == ["raw (tokens 1-34 of 100)", "raw (tokens 35-68 of 100)", "raw (tokens 69-100 of 100)"]
        raw_lines = [ax for ax in figure.axes if ax.get_title().startswith("raw")]
        assert [label.get_text() for ax in raw_lines for label in ax.get_xticklabels()] == tokens
        # One color scale per method across its lines, so the lines compare.
        assert len({ax.images[0].get_clim() for ax in raw_lines}) == 1
        bar_ticks = [label.get_text() for ax in bars.axes for label in ax.get_xticklabels()]
        assert bar_ticks == tokens and len(bars.axes) > 1
    else:
        assert titles == ["raw", "rollout", "flow"] and len(bars.axes) == 1


# ----------------------------------------------------------------- what the demo's figures explain


@pytest.mark.parametrize("method, reference", [("flow", attention_flow), ("rollout", attention_rollout)])
def test_graph_of_every_token_averaged_delivers_the_mean_attribution(attentions, method, reference):
    """token_index="mean" in the graph means what it means everywhere: every position's row, averaged."""
    transitions = as_transitions(attentions, example=1)
    mass = edge_contributions(transitions, "mean", method=method)
    expected = reference(attentions, token_index="mean")[1]
    np.testing.assert_allclose(mass[0].sum(axis=0), expected.double().numpy(), atol=1e-6)
    single = [edge_contributions(transitions, source, method=method) for source in range(len(TOKENS))]
    np.testing.assert_allclose(mass, np.mean(single, axis=0), atol=1e-12)
    last = edge_contributions(transitions, "last", method=method)
    np.testing.assert_allclose(last, single[-1], atol=1e-12)


def test_graph_title_rings_and_scores_name_the_explained_positions(attentions):
    figure = plot_attention_graph(attentions, TOKENS, token_index="mean", example=1)
    ax = figure.axes[0]
    assert ax.get_title() == "Attention flow from every token, averaged (layer 4)"
    scores = [float(text.get_text()) for text in ax.texts]
    expected = attention_flow(attentions, token_index="mean")[1]
    np.testing.assert_allclose(scores, expected.numpy(), atol=0.006)  # annotated with 2 decimals
    ringed = [nodes for nodes in ax.collections if hasattr(nodes, "get_sizes") and nodes.get_sizes().tolist() == [190]]
    assert len(ringed) == 1 and len(ringed[0].get_offsets()) == len(TOKENS)  # every top node is explained
    with pytest.raises(InvalidParameterError, match="token_index='all'"):
        plot_attention_graph(attentions, TOKENS, token_index="all")


def test_method_comparison_scales_without_hidden_positions(tmp_path):
    scores = {"flow": torch.tensor([0.5, 0.08, 0.06, 0.04, 0.07, 0.25]), "ig": torch.tensor([0.0, 2, -4, 1, 3, 0])}
    figure = plot_method_comparison(scores, TOKENS, hide_positions=(0, -1), path=tmp_path / "bars.png")
    read_png(tmp_path / "bars.png")
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == TOKENS[1:-1]
    heights = [patch.get_height() for patch in ax.patches]
    np.testing.assert_allclose(heights[:4], [1.0, 0.75, 0.5, 0.875])  # flow over the words only
    np.testing.assert_allclose(heights[4:], [0.5, -1.0, 0.25, 0.75])
    with pytest.raises(InvalidParameterError, match="hides every token"):
        plot_method_comparison(scores, TOKENS, hide_positions=range(6))
