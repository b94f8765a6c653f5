"""The code blocks of Markdown pages (README.md, docs/*.md), for the tests that run them.

A ```python block is a promise that it runs exactly as written, *alone*: each is executed in
a fresh namespace, so a block that leans on a name from an earlier block fails with a
NameError. Code meant only to be read goes in a ```py or ```text block.
"""

import re
import shlex
from configparser import ConfigParser
from pathlib import Path
from typing import List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
#: Blocks that run Captum's gradient or perturbation methods on MiniLM, or the evaluation
#: harness, take tens of seconds on a loaded 2-core machine: they run in the slow tier.
HEAVY_MARKERS = ("LayerIntegratedGradients(", "FeatureAblation(", "AttributionEvaluator(")
SHELL_LANGUAGES = ("bash", "sh", "console")


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


def setup_cfg() -> ConfigParser:
    config = ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def check_shell_commands(block: Block) -> None:
    """Each command of a shell block names what exists: make targets, the CLI's options, pip extras."""
    from captum_attnflow import cli

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pin = re.search(r"^TORCH_VERSION \?= (\S+)", makefile, flags=re.M)
    assert pin, "the Makefile no longer pins TORCH_VERSION"
    torch_pin = pin.group(1)
    extras = set(setup_cfg()["options.extras_require"])
    commands = [line.split("#")[0].strip() for line in block.code.splitlines()]
    for command in filter(None, commands):
        words = shlex.split(command)
        if words[0] == "make":
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{block.name}: no make {target}"
        elif words[0] == "captum-attnflow":
            cli.build_parser().parse_args(words[1:])  # exits with status 2 on an unknown option
        elif words[:4] == ["python", "-m", "pip", "install"]:
            for word in words[4:]:
                if word.startswith("torch=="):  # the version every make target installs
                    assert word == f"torch=={torch_pin}", block.name
                named = re.fullmatch(r"\.\[([\w,-]+)\]", word)
                if named:
                    assert set(named.group(1).split(",")) <= extras, f"{block.name}: unknown extra in {word}"
            if "-c" in words:
                assert (ROOT / words[words.index("-c") + 1]).is_file(), block.name
        else:
            pytest.fail(f"{block.name}: a shell command this test does not know how to check: {command}")
