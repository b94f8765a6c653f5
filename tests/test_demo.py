"""`make demo`: a thin call of `captum-attnflow explain` with example sentences and a query."""

import pytest

from captum_attnflow import cli, demo


def test_demo_defaults_are_the_examples_and_the_query():
    args = demo.build_parser().parse_args([])
    assert args.texts == demo.DEFAULT_SENTENCES and args.query == demo.DEFAULT_QUERY
    assert args.out == "demo_output" and args.pooling == "mean"  # MiniLM mean-pools its tokens
    # Every option of the command line works in the demo too.
    explain = cli.build_parser().parse_args(["explain", "x"])
    assert set(vars(explain)) - {"command"} == set(vars(args))


@pytest.mark.slow
def test_demo_prints_every_method_and_writes_the_page(tmp_path, capsys, minilm_path):
    status = demo.main(["The keys are on the table.", "--out", str(tmp_path), "--model", minilm_path,
                        "--ig-steps", "4"])
    assert status == 0
    printed = capsys.readouterr().out
    page = (tmp_path / "comparison.html").read_text(encoding="utf-8")
    for name in cli.METHODS:
        assert f"<b>{cli.METHOD_TITLES[name]}</b>" in page and cli.METHOD_TITLES[name] in printed
    assert page.count("<tr") == 1 + len(cli.METHODS)  # header + a row per method for one sentence
    query = "cosine similarity to &#x27;Where did I leave my keys?&#x27;"
    assert query in page and "every token, averaged" in page  # the query and what is explained
    assert "Spearman vs feature ablation" in page and "rank of |score| within the row" in page
    assert "keys" in printed and "each column divided by its largest |score|" in printed


def test_demo_figures_explain_what_the_demo_explains(minilm, minilm_tokenizer, tmp_path, monkeypatch):
    """The graph shows flow from the positions the demo explains (every token, averaged, for MiniLM's
    mean pooling), so its input scores are the flow column; bars and maps leave [CLS]/[SEP] out of
    their scale, and every figure says so."""
    import numpy as np

    from captum_attnflow import visualization as viz

    drawn = {}

    def record(name):
        draw = getattr(viz, name)

        def recording(*args, **kwargs):
            drawn[name] = kwargs, draw(*args, **kwargs)
            return drawn[name][1]

        monkeypatch.setattr(viz, name, recording)

    for name in ("plot_attention_graph", "plot_method_comparison", "plot_layer_maps"):
        record(name)
    options = demo.build_parser().parse_args([])
    explanation = cli.explain(["The keys are on the table."], minilm, minilm_tokenizer, methods=["rollout", "flow"],
                              query=options.query, pooling=options.pooling, progress=False)
    cli.write_outputs(explanation, minilm, minilm_tokenizer, str(tmp_path), progress=False)
    assert explanation.token_index == "mean"  # what the demo explains: MiniLM pools every token

    graph_options, graph = drawn["plot_attention_graph"]
    assert graph_options["token_index"] == explanation.token_index
    assert graph.axes[0].get_title() == "Attention flow from every token, averaged (layer 6)"
    graph_scores = [float(text.get_text()) for text in graph.axes[0].texts]
    np.testing.assert_allclose(graph_scores, explanation.attributions["flow"][0].numpy(), atol=0.006)

    special = [position for position, is_special in enumerate(explanation.special[0]) if is_special]
    assert special == [0, len(explanation.tokens[0]) - 1]  # [CLS] ... [SEP]
    for name in ("plot_method_comparison", "plot_layer_maps"):
        figure_options, figure = drawn[name]
        assert list(figure_options["hide_positions"]) == special, name
        assert "[CLS], [SEP] not shown" in figure._suptitle.get_text(), name
    assert "explaining every token, averaged" in drawn["plot_layer_maps"][1]._suptitle.get_text()
