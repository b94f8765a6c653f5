"""griffe extension for the API reference: the package's docstrings, read as Markdown.

The docstrings are Google style with a few reStructuredText habits that Markdown renders
badly: ``Example:`` (singular) is not griffe's examples section, so its ``>>>`` lines became
nested block quotes; Sphinx roles (``:func:`~a.b`` ``) showed their role names; ``text::``
ended sentences with a double colon. Each docstring is rewritten before griffe parses it.
"""

import re

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", flags=re.M)
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(\S)::$", flags=re.M)


def markdown_docstring(text: str) -> str:
    """The docstring with the reStructuredText habits above turned into Markdown."""
    text = _EXAMPLE_HEADING.sub(r"\1Examples:", text)
    text = _ROLE.sub(r"`\1`", text)
    return _LITERAL_BLOCK.sub(r"\1:", text)


class MarkdownDocstrings(griffe.Extension):
    """Rewrite every object's docstring with :func:`markdown_docstring` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
