"""Captum's text inputs as the model reads them: where each value of a ``TextTemplateInput``
lands in the prompt text, and which token belongs to which value."""

import re
from typing import List, Sequence, Tuple

import torch
from captum.attr import TextTemplateInput

from captum_attnflow.exceptions import InvalidInputError

_MARKER = re.compile("\ue000(\\d+)\ue001")


def template_value_spans(inp: TextTemplateInput) -> Tuple[str, List[List[Tuple[int, int]]]]:
    """The prompt text of ``inp`` and, per value, the character spans where it appears.

    The template is filled with markers to find where each value goes (string templates and
    template functions alike); a template function that changes its values (e.g. upper-cases
    them) cannot be mapped and is refused.

    Example:
        >>> from captum.attr import TextTemplateInput
        >>> template_value_spans(TextTemplateInput("{} feels {} now", values=["He", "sad"]))
        ('He feels sad now', [[(0, 2)], [(9, 12)]])
    """
    markers = [f"\ue000{index}\ue001" for index in range(len(inp.values))]
    skeleton = inp.format_fn(**dict(zip(inp.dict_keys, markers))) if inp.dict_keys else inp.format_fn(*markers)
    pieces: List[str] = []
    spans: List[List[Tuple[int, int]]] = [[] for _ in inp.values]
    cursor, length = 0, 0
    for match in _MARKER.finditer(skeleton):
        literal = skeleton[cursor:match.start()]
        value = inp.values[int(match.group(1))]
        pieces += [literal, value]
        length += len(literal)
        spans[int(match.group(1))].append((length, length + len(value)))
        length += len(value)
        cursor = match.end()
    pieces.append(skeleton[cursor:])
    text = "".join(pieces)
    if text != inp.to_model_input():
        raise InvalidInputError(
            "The TextTemplateInput's template does not insert its values verbatim, so their tokens cannot be "
            "found; use a template that places each value unchanged, or a TextTokenInput.")
    return text, spans


def tokens_to_values(offsets: Sequence[Tuple[int, int]], spans: List[List[Tuple[int, int]]]) -> torch.Tensor:
    """Index of the value each token belongs to (most overlapping characters), -1 for none.

    Example:
        >>> tokens_to_values([(0, 0), (0, 2), (3, 8), (9, 12)], [[(0, 2)], [(9, 12)]]).tolist()
        [-1, 0, -1, 1]
    """
    owners = []
    for start, end in offsets:
        overlaps = [max(min(end, s_end) - max(start, s_start), 0) if end > start else 0
                    for value_spans in spans for s_start, s_end in value_spans]
        owner_of_span = [value for value, value_spans in enumerate(spans) for _ in value_spans]
        best = max(range(len(overlaps)), key=overlaps.__getitem__) if overlaps else None
        owners.append(owner_of_span[best] if best is not None and overlaps[best] > 0 else -1)
    return torch.tensor(owners, dtype=torch.long)
