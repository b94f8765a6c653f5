"""`make demo` end to end on one short sentence: terminal table and HTML page."""

from captum_attnflow import demo

METHODS = ("raw attention", "rollout", "flow", "integrated gradients", "feature ablation")


def test_demo_prints_every_method_and_writes_the_page(tmp_path, capsys, minilm_path):
    assert demo.main(["The keys are on the table.", "--out", str(tmp_path), "--model", str(minilm_path)]) == 0
    printed = capsys.readouterr().out
    page = (tmp_path / "demo.html").read_text(encoding="utf-8")
    for name in METHODS:
        assert name in page
    assert "keys" in printed and "Spearman vs" in printed
    assert page.count("<tr") == 1 + len(METHODS)  # header + a row per method for one sentence
