"""mkdocs hook: pages that other work adds to docs/ join the navigation once they exist.

``mkdocs build --strict`` fails on a nav entry whose file is missing, so pages that are being
written elsewhere (and merged at different times) are listed here instead of in mkdocs.yml:
each is appended to its nav section when ``docs/<path>`` exists, and left out otherwise.
"""

import copy
from pathlib import Path
from typing import Any, List, Tuple

#: (nav section, title, path under docs/), in the order they appear within their section.
OPTIONAL_PAGES: List[Tuple[str, str, str]] = [
    ("Guides", "Target-aware explanations", "target_aware.md"),
    ("Guides", "Supported stacks", "stacks.md"),
    ("Guides", "Encoder–decoder models", "encoder_decoder.md"),
    ("Reproducing the paper", "Faithfulness results", "results/faithfulness.md"),
]


def with_optional_pages(nav: List[Any], docs_dir: Path) -> List[Any]:
    """``nav`` with every existing optional page appended to its section (a new copy)."""
    nav = copy.deepcopy(nav)
    listed = set(_paths(nav))
    for section, title, path in OPTIONAL_PAGES:
        if path in listed or not (docs_dir / path).is_file():
            continue
        entries = next((item[section] for item in nav if isinstance(item, dict) and section in item), None)
        if entries is None:
            entries = []
            nav.append({section: entries})
        entries.append({title: path})
        listed.add(path)
    return nav


def _paths(nav: Any):
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _paths(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _paths(value)


def on_config(config, **kwargs):
    """mkdocs entry point: extend ``nav`` before the pages are collected."""
    if config["nav"] is not None:
        config["nav"] = with_optional_pages(config["nav"], Path(config["docs_dir"]))
    return config
