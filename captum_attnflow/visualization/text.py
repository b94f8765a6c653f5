"""One HTML page comparing several attribution methods on the same texts.

The rows use Captum's own text-visualisation markup (``VisualizationDataRecord`` and
``format_word_importances``), so the page looks like ``visualize_text`` output, but it is
built as a string: no IPython needed, and it can be written to a standalone file.
"""

import html
import os
from typing import List, Mapping, Optional, Sequence

import numpy as np
from captum.attr import visualization as captum_visualization

from captum_attnflow.exceptions import InvalidInputError
from captum_attnflow.visualization._common import PathLike, to_numpy

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { padding: 4px 8px; text-align: left; vertical-align: middle; }
tr.first-of-example td { border-top: 2px solid #888; }
th { border-bottom: 2px solid #444; }
"""


def comparison_records(tokens_list: Sequence[Sequence[str]], attributions: Mapping[str, object], *,
                       true_labels: Optional[Sequence] = None, pred_labels: Optional[Sequence] = None,
                       pred_probs: Optional[Sequence[float]] = None,
                       ) -> List[captum_visualization.VisualizationDataRecord]:
    """Captum records, one per method per example, with scores scaled to ``[-1, 1]``.

    Each row is divided by its largest magnitude so every method uses Captum's full colour
    range; ``attr_score`` keeps the unscaled sum. Ready for
    ``captum.attr.visualization.visualize_text`` in Jupyter.

    Args:
        tokens_list: the tokens of each example (padding removed).
        attributions: ``{method name: (B, S) scores}``; only the first ``len(tokens)``
            positions of each example are used, so right-padded batches work as they are.
        true_labels, pred_labels, pred_probs: optional per-example values shown in the table.

    Example:
        >>> records = comparison_records([["a", "b"]], {"flow": [[0.2, 0.8]]})
        >>> [round(float(v), 2) for v in records[0].word_attributions]
        [0.25, 1.0]
    """
    scores = {name: _batch_scores(values, name, len(tokens_list)) for name, values in attributions.items()}
    if not scores:
        raise InvalidInputError("attributions is empty; pass at least one method.")
    records = []
    for index, tokens in enumerate(tokens_list):
        for name, batch in scores.items():
            row = batch[index]
            if len(tokens) > len(row):
                raise InvalidInputError(
                    f"Example {index} has {len(tokens)} tokens but '{name}' scores only {len(row)} positions.")
            row = row[: len(tokens)]
            peak = np.abs(row).max()
            records.append(captum_visualization.VisualizationDataRecord(
                word_attributions=row / peak if peak > 0 else row,
                pred_prob=_item(pred_probs, index, float("nan")),
                pred_class=_item(pred_labels, index, ""),
                true_class=_item(true_labels, index, ""),
                attr_class=name,
                attr_score=float(row.sum()),
                raw_input_ids=[str(token) for token in tokens],
                convergence_score=None,
            ))
    return records


def _batch_scores(values, name: str, batch_size: int) -> np.ndarray:
    array = to_numpy(values, name)
    if array.ndim == 1 and batch_size == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] != batch_size:
        raise InvalidInputError(
            f"Scores of '{name}' must have shape (B, S) with B = {batch_size} examples; got {array.shape}.")
    return array


def _item(values: Optional[Sequence], index: int, default):
    return default if values is None else values[index]


def comparison_html(tokens_list: Sequence[Sequence[str]], attributions: Mapping[str, object], *,
                    true_labels: Optional[Sequence] = None, pred_labels: Optional[Sequence] = None,
                    pred_probs: Optional[Sequence[float]] = None, title: str = "Attribution comparison",
                    description: Optional[str] = None, path: Optional[PathLike] = None) -> str:
    """A standalone HTML page with a row per method per example, methods side by side.

    Colours follow Captum's ``visualize_text`` (green positive, red negative), each row
    scaled by its largest magnitude; the "sum" column is the unscaled total.

    Args:
        tokens_list: tokens of each example.
        attributions: ``{method name: (B, S) scores}`` (see :func:`comparison_records`).
        true_labels, pred_labels, pred_probs: optional per-example columns.
        title: page title and heading.
        description: optional paragraph under the heading (plain text, escaped).
        path: also write the page there (UTF-8).

    Returns:
        The HTML document as a string (wrap it in ``IPython.display.HTML`` to show it inline).

    Example:
        >>> page = comparison_html([["[CLS]", "hi"]], {"rollout": [[0.7, 0.3]], "flow": [[0.6, 0.4]]})
        >>> page.count("<tr"), "rollout" in page and "flow" in page
        (3, True)
    """
    records = comparison_records(tokens_list, attributions, true_labels=true_labels,
                                 pred_labels=pred_labels, pred_probs=pred_probs)
    show_true, show_pred = true_labels is not None, pred_labels is not None
    header = ["example", "method"] + (["true label"] if show_true else []) + (
        ["predicted"] if show_pred else []) + ["sum", "token importance"]
    rows = ["<tr>" + "".join(f"<th>{name}</th>" for name in header) + "</tr>"]
    methods_per_example = len(attributions)
    for index, record in enumerate(records):
        example, first = divmod(index, methods_per_example)
        cells = [captum_visualization.format_classname(example if first == 0 else ""),
                 captum_visualization.format_classname(html.escape(str(record.attr_class)))]
        if show_true:
            cells.append(captum_visualization.format_classname(html.escape(str(record.true_class))))
        if show_pred:
            predicted = html.escape(str(record.pred_class))
            if pred_probs is not None:
                predicted += f" ({record.pred_prob:.2f})"
            cells.append(captum_visualization.format_classname(predicted))
        cells.append(captum_visualization.format_classname(f"{record.attr_score:.2f}"))
        # Captum inserts words verbatim; escape them so tokens such as "<s>" or "&" survive.
        words = [html.escape(word, quote=False) for word in record.raw_input_ids]
        cells.append(captum_visualization.format_word_importances(words, record.word_attributions))
        css_class = ' class="first-of-example"' if first == 0 else ""
        rows.append(f"<tr{css_class}>" + "".join(cells) + "</tr>")
    page = _page(title, description, "\n".join(rows))
    if path is not None:
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
    return page


def _page(title: str, description: Optional[str], rows: str) -> str:
    # The legend reuses Captum's colouring so it can never disagree with the rows.
    legend = captum_visualization.format_word_importances(["negative", "neutral", "positive"], [-1.0, 0.0, 1.0])
    legend = legend.replace("<td>", "").replace("</td>", "")
    intro = f"<p>{html.escape(description)}</p>" if description else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{intro}\n"
            f'<p class="legend"><b>Legend:</b> {legend} &mdash; each row scaled by its largest |score|.</p>\n'
            f"<table>\n{rows}\n</table>\n</body>\n</html>\n")
