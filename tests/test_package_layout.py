"""The package's layout keeps its promises: no import cycles, pure math imports no model
code, model plumbing does no graph math, and each module imports alone.

The import graph is read from the source (every ``import`` statement, inside functions too),
so a cycle hidden behind a lazy import is found as well.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "captum_attnflow"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set:
    """Package modules imported anywhere in ``path`` (``from pkg import submodule`` -> the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name in MODULES}


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def is_package_init_edge(source: str, target: str) -> bool:
    """A package's ``__init__`` importing its own submodules is how packages work, not a cycle."""
    return target.startswith(source + ".")


def test_the_import_graph_has_no_cycles():
    graph = {name: {t for t in targets if not is_package_init_edge(name, t)} for name, targets in GRAPH.items()}
    assert cycles(graph) == []


def test_cycle_detection_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def reachable(start: str) -> set:
    seen, pending = set(), [start]
    while pending:
        for target in GRAPH[pending.pop()]:
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("captum_attnflow.functional")])
def test_pure_math_imports_no_model_code(module):
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    assert "import transformers" not in text and "from transformers" not in text
    forbidden = {"captum_attnflow.capture", "captum_attnflow.attr", "captum_attnflow.evaluation"}
    assert not {m for m in reachable(module) if any(m.startswith(f) for f in forbidden)}


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(("captum_attnflow.capture",
                                                                        "captum_attnflow.attr"))])
def test_model_plumbing_does_no_graph_math(module):
    assert "captum_attnflow.functional._maxflow" not in GRAPH[module]
    if module.startswith("captum_attnflow.capture"):
        graph_math = {"captum_attnflow.functional.flow", "captum_attnflow.functional.rollout",
                      "captum_attnflow.functional._maxflow"}
        assert not graph_math & GRAPH[module]


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    # One interpreter per module would cost a torch import each; instead every module is imported
    # first in its own fresh sys.modules state within one subprocess.
    script = (
        "import importlib, sys\n"
        "names = sys.argv[1:]\n"
        "base = set(sys.modules)\n"
        "import torch, numpy\n"
        "keep = set(sys.modules)\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('captum_attnflow')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    modules = [m for m in MODULES if not m.endswith("__main__")]
    result = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr[-3000:]


def test_one_networkx_attention_graph_builder():
    """Every networkx graph of the attention graph comes from functional.graph.attention_graph."""
    builders = [name for name, path in MODULES.items() if "DiGraph(" in path.read_text(encoding="utf-8")]
    assert builders == ["captum_attnflow.functional.graph"]
    from captum_attnflow.functional import _maxflow
    from captum_attnflow.functional.graph import attention_graph
    from captum_attnflow.visualization import graph as figure_module

    assert figure_module.attention_graph is attention_graph is _maxflow.attention_graph


#: Private internals of transformers and Captum the package relies on (and transformers' switch whose effect on
#: them capture undoes); captum_attnflow/_compat.py wraps each, tests/test_compat.py watches them.
THIRD_PARTY_INTERNALS = {"_attn_implementation", "_attn_implementation_internal", "_can_record_outputs",
                         "_convert_ids_to_pretty_tokens", "set_attn_implementation", "_is_initialized"}


def private_uses(path: Path) -> set:
    """Third-party internals used in ``path``: attributes, names given as strings, private imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in THIRD_PARTY_INTERNALS:
            found.add(node.attr)
        elif isinstance(node, ast.Constant) and node.value in THIRD_PARTY_INTERNALS:
            found.add(node.value)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] in ("transformers", "captum") and any(p.startswith("_") for p in parts):
                found.add(node.module)
    return found


def test_private_third_party_internals_are_used_only_in_the_compat_module():
    users = {name: uses for name, path in MODULES.items() if (uses := private_uses(path))}
    assert set(users) == {"captum_attnflow._compat"}, users


def test_private_use_detection_finds_each_kind(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from captum.attr._core.llm_attr import x\n"
                       "config._attn_implementation_internal = None\n"
                       "getattr(model, '_can_record_outputs', None)\n")
    assert private_uses(planted) == {"captum.attr._core.llm_attr", "_attn_implementation_internal",
                                     "_can_record_outputs"}
