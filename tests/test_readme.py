"""The README: short, every code block runs alone as written, and what it claims holds.

Each ```python block runs in a fresh namespace (:func:`markdown_code.run_alone`), so a block
that needs a name from an earlier one fails here as it would for a reader who copies it.
Shell blocks are checked against the Makefile, setup.cfg and the command line's parser; the
headline numbers against the generated pages they summarise (docs/benchmarks.md,
docs/results/sva.md); the classes table against the package.
"""

import importlib
import re

import pytest
import torch
from markdown_code import (
    ROOT,
    SHELL_LANGUAGES,
    as_params,
    check_shell_commands,
    code_blocks,
    run_alone,
    setup_cfg,
)

README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
#: The lead adds a few short sections after merging other work; the README stays under this.
MAX_LINES = 200


def section(title: str) -> str:
    """The text of the README's ``## title`` section (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"the README has no section '## {title}'"
    return match.group(1)


def test_the_readme_is_short():
    assert len(README.splitlines()) <= MAX_LINES


def test_the_readme_has_a_quickstart_next_to_integrated_gradients():
    blocks = code_blocks("README.md")
    assert blocks and "IntegratedGradients(" in blocks[0].code and "AttentionFlow(" in blocks[0].code
    assert len(blocks[0].code.splitlines()) <= 25


@pytest.mark.parametrize("block", as_params(code_blocks("README.md")))
def test_python_block_runs_alone(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # files a block writes land in a temporary folder
    namespace = run_alone(block)
    printed = capsys.readouterr().out
    if "AttentionFlow(model)" in block.code:  # the quickstart: what its comments say it gives
        flow, ig, attention_mask = namespace["flow"], namespace["ig"], namespace["attention_mask"]
        assert tuple(flow.shape) == (2, 11) and printed.startswith("(2, 11)")
        torch.testing.assert_close(flow.sum(dim=1), torch.ones(2))
        assert torch.all(flow[attention_mask == 0] == 0) and torch.all(namespace["rollout"][attention_mask == 0] == 0)
        assert tuple(ig.sum(dim=-1).shape) == (2, 11) and printed.splitlines()[-1] == "(2, 11)"
        assert torch.all(ig.sum(dim=-1)[attention_mask == 0] == 0)  # padding reaches no output: no gradient
        assert namespace["model"].config._attn_implementation == "sdpa"  # as loaded, and restored


def test_shell_commands_exist():
    blocks = code_blocks("README.md", SHELL_LANGUAGES)
    assert blocks, "the README shows no shell commands"
    for block in blocks:
        check_shell_commands(block)
    for target in re.findall(r"`make ([a-z-]+)", README):
        assert re.search(rf"^{re.escape(target)}:", MAKEFILE, flags=re.M), f"README names `make {target}`"


def test_links_and_figures_point_to_files():
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [target.split("#")[0] for target in targets if not re.match(r"[a-z]+:", target)]
    assert any(target.endswith(".png") for target in local), "the README shows no figure"
    for target in local:
        assert (ROOT / target).is_file(), f"the README links to {target}, which does not exist"


def test_the_classes_table_names_what_the_package_has():
    rows = [line.split(" | ") for line in section("The classes at a glance").splitlines()
            if line.startswith("| `")]
    assert len(rows) >= 6
    for names, modules, _ in rows:
        names = re.findall(r"`([^`]+)`", names)
        if modules == "command line":
            assert all(name.split()[0] in _console_scripts() for name in names)
            continue
        modules = [module if module.startswith("captum_attnflow") else "captum_attnflow" + module
                   for module in re.findall(r"`([^`]+)`", modules)]
        for name in names:
            assert any(hasattr(importlib.import_module(module), name) for module in modules), (name, modules)


def _console_scripts() -> str:
    return setup_cfg()["options.entry_points"]["console_scripts"]


def test_the_models_table_summarises_the_models_page():
    page = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    families = re.findall(r"^\| ([^|`]+?) \| ", section("Supported models"), flags=re.M)
    families = [family for family in families if family not in ("family", "---")]
    assert len(families) >= 5
    for family in families:
        assert f"| {family} |" in page, f"docs/models.md has no row for {family!r}"


def test_performance_headlines_are_the_benchmark_pages_numbers():
    """Every bold number of the README's performance section is one docs/benchmarks.md reports."""
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    numbers = re.findall(r"\*\*([\d.,]+ ?(?:×|ms|s))\*\*", section("Performance"))
    assert len(numbers) >= 5
    for number in numbers:
        assert f"**{number}**" in benchmarks or f"| {number} |" in benchmarks, (
            f"the README quotes {number}, which docs/benchmarks.md no longer reports: update the headline")


def test_sva_headline_is_the_results_pages_summary():
    results = (ROOT / "docs" / "results" / "sva.md").read_text(encoding="utf-8")
    text = " ".join(section("Reproducing the paper").split())
    authors = re.search(r"authors' own protocol, \*\*(\d+) of 16\*\*", text).group(1)
    library = re.search(r"library's own protocol: (\d+) of 16", text).group(1)
    assert re.search(rf"\*\*authors protocol\*\*, rollout and flow at layers 3–6 \(16 cells\), `\[CLS\]` ranked: "
                     rf"{authors} of 16 within ±0.1", results)
    assert re.search(rf"\*\*library protocol\*\*, rollout and flow at layers 3–6 \(16 cells\), `\[CLS\]` ranked: "
                     rf"{library} of 16 within ±0.1", results)
    assert "2 epochs, not 8" in text and "**2 epochs**" in results


def test_the_docs_site_includes_sections_that_exist():
    """docs/index.md includes the quickstart and the token_index table from here (pymdownx.snippets)."""
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    included = re.findall(r'^--8<-- "README.md:(\w+)"$', index, flags=re.M)
    assert included
    for name in included:
        start, end = README.find(f"--8<-- [start:{name}]"), README.find(f"--8<-- [end:{name}]")
        assert 0 <= start < end, f"README.md has no section {name!r} for docs/index.md to include"


def test_the_flow_budget_is_the_codes():
    from captum_attnflow.functional import _cost

    stated = re.search(r"over \*\*(\d+) s\*\* or \*\*(\d+) GiB\*\*", " ".join(section("Errors and guarantees").split()))
    assert stated, "the README no longer states the flow budget"
    assert float(stated.group(1)) == _cost.FLOW_TIME_BUDGET_S
    assert int(stated.group(2)) * 1024 ** 3 == _cost.FLOW_MEMORY_BUDGET_BYTES
