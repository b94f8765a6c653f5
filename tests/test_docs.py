"""The documentation site: its guides' code runs alone, its claims hold, its navigation is whole.

* every ```python block of the guides (docs/*.md) runs alone, as README's do;
* the statements that quote numbers or list exceptions are checked against the code;
* mkdocs.yml's navigation names only existing pages, and pages other work adds join it
  (tools/mkdocs_hooks.py);
* the site builds with ``mkdocs build --strict`` (slow tier; ``make docs`` in CI).
"""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from markdown_code import ROOT, SHELL_LANGUAGES, as_params, check_shell_commands, code_blocks, run_alone

DOCS = ROOT / "docs"
GUIDES = sorted(path.name for path in DOCS.glob("*.md"))


def page(name: str) -> str:
    return " ".join((DOCS / name).read_text(encoding="utf-8").split())


@pytest.mark.parametrize("block", as_params([block for name in GUIDES for block in code_blocks(f"docs/{name}")]))
def test_python_block_runs_alone(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files a block writes land in a temporary folder
    namespace = run_alone(block)
    if "capture_attention(" in block.code and "attention_flow(" in block.code:  # the functional API
        from captum_attnflow import AttentionFlow

        model, input_ids, mask = namespace["model"], namespace["input_ids"], namespace["attention_mask"]
        assert model.config._attn_implementation == "sdpa"  # as loaded, and restored
        expected = AttentionFlow(model).attribute(input_ids, additional_forward_args=(mask,), token_index="mean")
        torch.testing.assert_close(namespace["flow"], expected)
    if "evaluator = AttributionEvaluator(" in block.code:
        assert Path("results.csv").read_text().startswith("metric,reference,method,layer")
        assert Path("layers.png").read_bytes()[1:4] == b"PNG"


@pytest.mark.parametrize("block", [block for name in GUIDES for block in code_blocks(f"docs/{name}", SHELL_LANGUAGES)],
                         ids=lambda block: block.name)
def test_shell_commands_exist(block):
    check_shell_commands(block)


# ---------------------------------------------------------------------------- claims


def test_flow_from_cls_saturates_as_the_method_page_explains(minilm, minilm_tokenizer):
    """Raw flow into each word = a common C_l + the first layer's edge [CLS] -> word."""
    from captum_attnflow import capture_attention
    from captum_attnflow.functional import attention_flow, transition_matrices

    encoded = minilm_tokenizer(["the keys to the cabinet are on the table"], return_tensors="pt")
    attentions = capture_attention(minilm, encoded["input_ids"], (encoded["attention_mask"],),
                                   head_fusion=None).attentions
    raw = attention_flow(attentions, token_index=0, return_all_layers=True, normalize=False)[:, 0].double()
    first_edge = transition_matrices(attentions)[0, 0, 0].double()
    words = slice(1, -1)
    common = raw[:, words] - first_edge[words]  # (L, words): the same C_l for every word
    torch.testing.assert_close(common, common[:, :1].expand_as(common), atol=1e-6, rtol=0)  # float32 attention
    levels = common[:, 0]
    assert levels[0].abs() < 1e-6 and torch.all(levels[1:] > levels[:-1])  # C_1 = 0, growing with depth
    stated = re.search(r"`C_l` is ([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+) and ([\d.]+) at layers 2–6", page("method.md"))
    assert stated, "docs/method.md no longer quotes C_l"
    assert [float(value) for value in stated.groups()] == pytest.approx(levels[1:].tolist(), abs=0.006)
    ranks = raw[:, words].argsort(dim=1)
    assert torch.equal(ranks, ranks[:1].expand_as(ranks))  # the same ranking after every layer


def test_the_flow_budget_section_quotes_the_cost_model():
    from captum_attnflow.functional import estimate_flow_cost

    stated = re.search(r"one token of a 12-layer, 128-token input is estimated at ([\d.]+) s and every token "
                       r"of a 12-layer, 512-token input at ([\d,]+) s", page("guarantees.md"))
    assert stated, "docs/guarantees.md no longer quotes the size-only estimates"
    one_token = estimate_flow_cost(12, 128, 1, 1, residual_weight=0.5).seconds
    every_token = estimate_flow_cost(12, 512, 1, 512, residual_weight=0.5).seconds
    assert float(stated.group(1)) == pytest.approx(one_token, abs=0.05)
    assert float(stated.group(2).replace(",", "")) == pytest.approx(every_token, rel=0.01)


def _builtin_of(error_class) -> str:
    return next(base.__name__ for base in error_class.__mro__[1:] if base.__module__ == "builtins")


def test_the_one_exception_table_matches_the_classes():
    """exceptions.py's docstring table (rendered on the site) names every class with its built-in."""
    from captum_attnflow import exceptions

    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| ", exceptions.__doc__, flags=re.M)
    classes = [name for name in exceptions.__all__ if name != "AttnFlowError"]
    assert [name for name, _ in rows] == classes
    for name, builtin in rows:
        error_class = getattr(exceptions, name)
        assert issubclass(error_class, exceptions.AttnFlowError) and _builtin_of(error_class) == builtin, name


def test_the_guarantees_page_names_each_exceptions_builtin():
    from captum_attnflow import exceptions

    text = page("guarantees.md")
    for builtin in ("ValueError", "TypeError", "RuntimeError"):
        stated = re.search(rf"((?:`\w+Error`(?:,| and) )*`\w+Error`) are `{builtin}`s", text)
        assert stated, f"docs/guarantees.md no longer says which exceptions are {builtin}s"
        named = set(re.findall(r"`(\w+)`", stated.group(1)))
        expected = {name for name in exceptions.__all__[1:] if _builtin_of(getattr(exceptions, name)) == builtin}
        assert named == expected, builtin


#: Where the package raises something other than an AttnFlowError on purpose, as
#: docs/guarantees.md lists it ("Not AttnFlowErrors, by design"); abstract methods excluded.
PLAIN_ERRORS_ALLOWED = {
    "captum_attnflow/evaluation/reporting.py": {"ValueError"},  # EvaluationResult.select / plot_correlations
    "captum_attnflow/experiments/sva/": {"ValueError", "FileNotFoundError"},
    "captum_attnflow/cli.py": {"CommandLineError", "ArgumentTypeError"},  # printed as one line, status 2
    "captum_attnflow/evaluation/embeddings.py": {"_StopForward"},  # control flow, caught where raised
}


def _raised_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = raised.id if isinstance(raised, ast.Name) else getattr(raised, "attr", None)
            if name and (name[0].isupper() or name.startswith("_")):  # a class, not a caught `error` variable
                yield node.lineno, name


def test_every_error_raised_on_purpose_is_an_attnflow_error_or_listed():
    from captum_attnflow import exceptions

    ours = set(exceptions.__all__)
    found, used = [], set()
    for path in sorted((ROOT / "captum_attnflow").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        allowed = {(prefix, name) for prefix, names in PLAIN_ERRORS_ALLOWED.items() for name in names
                   if relative.startswith(prefix)}
        for line, name in _raised_names(path):
            listed = {entry for entry in allowed if entry[1] == name}
            used |= listed
            if name not in ours and name != "NotImplementedError" and not listed:
                found.append(f"{relative}:{line} raises {name}")
    assert not found, "raise an exception from captum_attnflow.exceptions (or list it in docs/guarantees.md):\n" + \
        "\n".join(found)
    stale = {(prefix, name) for prefix, names in PLAIN_ERRORS_ALLOWED.items() for name in names} - used
    assert not stale, f"listed as raised but no longer raised: {sorted(stale)}; update the list and docs/guarantees.md"
    assert "Not `AttnFlowError`s, by design" in page("guarantees.md")


# ---------------------------------------------------------------------------- the site


def _nav_paths(nav):
    if isinstance(nav, str):
        yield nav
    for item in nav if isinstance(nav, list) else nav.values() if isinstance(nav, dict) else ():
        yield from _nav_paths(item)


def _hooks():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        return importlib.import_module("mkdocs_hooks")
    finally:
        sys.path.remove(str(ROOT / "tools"))


def _config() -> dict:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def test_the_nav_names_existing_pages_and_every_guide():
    hooks = _hooks()
    listed = list(_nav_paths(_config()["nav"]))
    assert listed and all((DOCS / path).is_file() for path in listed), [p for p in listed if not (DOCS / p).is_file()]
    optional = {path for _, _, path in hooks.OPTIONAL_PAGES}
    assert not optional & set(listed), "a page is both in mkdocs.yml and optional"
    assert set(GUIDES) <= set(listed) | optional, set(GUIDES) - set(listed) - optional
    api_pages = {path for path in listed if path.startswith("api/")}
    for module in ("attr", "functional", "capture", "evaluation", "visualization", "exceptions"):
        assert f"api/{module}.md" in api_pages


def test_optional_pages_join_the_nav_when_they_exist(tmp_path):
    hooks = _hooks()
    nav = _config()["nav"]
    section, title, path = hooks.OPTIONAL_PAGES[0]
    assert path not in _nav_paths(hooks.with_optional_pages(nav, tmp_path))  # absent: left out, strict passes
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text("# page\n")
    extended = hooks.with_optional_pages(nav, tmp_path)
    entries = next(item[section] for item in extended if isinstance(item, dict) and section in item)
    assert {title: path} in entries
    assert path not in list(_nav_paths(nav))  # the configured nav itself is left unchanged


def test_docstrings_are_rewritten_as_markdown():
    pytest.importorskip("griffe", reason="the docs extra is not installed (pip install -e '.[docs]')")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        griffe_docstrings = importlib.import_module("griffe_docstrings")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = "Uses :func:`~captum_attnflow.functional.attention_flow`.\n\n    Example::\n\n    Example:\n        >>> 1\n"
    converted = griffe_docstrings.markdown_docstring(text)
    assert "`captum_attnflow.functional.attention_flow`" in converted and ":func:" not in converted
    assert "    Examples:\n        >>> 1" in converted and "Example:" in converted and "::" not in converted


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed (pip install -e '.[docs]')")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    exceptions_page = (tmp_path / "api" / "exceptions.html").read_text(encoding="utf-8")
    assert "<table>" in exceptions_page and "InvalidParameterError" in exceptions_page
    assert "Examples:" in (tmp_path / "api" / "attr.html").read_text(encoding="utf-8")


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def test_the_sva_guide_quotes_the_generated_tables():
    """Each "ours / paper" cell of docs/sva.md is the authors-protocol, [CLS]-ranked cell of results/sva.md."""
    guide = (DOCS / "sva.md").read_text(encoding="utf-8")
    results = (DOCS / "results" / "sva.md").read_text(encoding="utf-8")
    authors = results[results.index("## Results: authors protocol"):]
    generated = {}
    titles = {"blank-out": "### Table 1: vs blank-out", "input gradients": "### Table 2: vs input gradients"}
    for table, title in titles.items():
        body = authors[authors.index(title):].split("\n\n")[1]
        for method, ranked, *cells in (line.strip("|").split(" | ") for line in body.splitlines()[2:]):
            generated[table, method.strip(), ranked.strip()] = [_number(cell.split(" [")[0]) for cell in cells]
    quoted = re.findall(r"^\| vs (blank-out|input gradients) \| L1 .*?\n\|---.*?\n((?:\| .*\n)+)", guide, flags=re.M)
    assert len(quoted) == 2
    for table, rows in quoted:
        for row in rows.splitlines():
            method, *cells = row.strip("| ").split(" | ")
            ours = [_number(cell.split(" / ")[0]) for cell in cells]
            paper = [_number(cell.split(" / ")[1]) for cell in cells]
            assert ours == pytest.approx(generated[table, method, "`[CLS]` ranked"], abs=0.005), (table, method)
            assert paper == pytest.approx(generated[table, method, "paper"], abs=0.005), (table, method)
