"""The code blocks of Markdown pages (README.md, docs/*.md), for the tests that run them.

A ```python block is a promise that it runs exactly as written, *alone*: each is executed in
a fresh namespace, so a block that leans on a name from an earlier block fails with a
NameError. Code meant only to be read goes in a ```py or ```text block.
"""

import re
from pathlib import Path
from typing import List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
#: Blocks that run Captum's gradient or perturbation methods on MiniLM, or the evaluation
#: harness, take tens of seconds on a loaded 2-core machine: they run in the slow tier.
HEAVY_MARKERS = ("LayerIntegratedGradients(", "FeatureAblation(", "AttributionEvaluator(")


class Block(NamedTuple):
    page: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def code_blocks(page: str, languages=("python",)) -> List[Block]:
    """The fenced blocks of ``page`` (relative to the repository root) in the given languages."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [Block(page, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2))
            for match in _FENCE.finditer(text) if match.group(1) in languages]


def as_params(blocks: List[Block]) -> list:
    """pytest parameters, one per block, named page:line; heavy blocks marked slow."""
    return [pytest.param(block, id=block.name,
                         marks=[pytest.mark.slow] if any(marker in block.code for marker in HEAVY_MARKERS) else [])
            for block in blocks]


def run_alone(block: Block) -> dict:
    """Execute ``block`` in a namespace of its own (run it from a temporary working directory)."""
    namespace = {"__name__": "__markdown__"}
    exec(compile(block.code, block.name, "exec"), namespace)
    return namespace
