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
