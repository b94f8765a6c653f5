"""One HTML page comparing several attribution methods on the same texts.

The rows follow Captum's text visualization (``VisualizationDataRecord``, a highlighted
word per token, green for positive and red for negative scores), but the page is built as a
string: no IPython needed, and it can be written to a standalone file. Two color scales:

* ``scale="max"``: each row divided by its largest |score| (Captum's convention): colors
  show magnitudes, but a row whose scores are all alike (attention flow often is) looks
  uniform, and a row with one dominant token (``[CLS]`` in rollout) looks blank.
* ``scale="rank"``: each token colored by the rank of its |score| within its row (the
  largest gets full color, the smallest the palest), so every row shows its *ordering*,
  the thing rank correlations compare. The hover text of every word gives its score.
"""

import html
import math
import os
from typing import List, Mapping, Optional, Sequence, Union

import numpy as np
from captum.attr import visualization as captum_visualization
from scipy.stats import rankdata

from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.visualization._common import PathLike, to_numpy

SCALES = ("max", "rank")

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em; color: #222;
       max-width: 80em; }
table { border-collapse: collapse; }
th, td { padding: 4px 8px; text-align: left; vertical-align: middle; }
td.words { line-height: 2.1; }
tr.first-of-example td { border-top: 2px solid #888; }
th { border-bottom: 2px solid #444; }
mark { padding: 1px 2px; border-radius: 3px; color: black; }
mark.unranked { background: none; color: #999; border: 1px dotted #bbb; }
p.legend mark { margin-right: 0.3em; }
"""


def comparison_records(tokens_list: Sequence[Sequence[str]], attributions: Mapping[str, object], *,
                       true_labels: Optional[Sequence] = None, pred_labels: Optional[Sequence] = None,
                       pred_probs: Optional[Sequence[float]] = None, scale: str = "max",
                       unranked: Optional[Sequence[Sequence[bool]]] = None,
                       ) -> List[captum_visualization.VisualizationDataRecord]:
    """Captum records, one per method per example, with scores scaled to ``[-1, 1]``.

    ``attr_score`` keeps the unscaled sum. Ready for
    ``captum.attr.visualization.visualize_text`` in Jupyter.

    Args:
        tokens_list: the tokens of each example (padding removed).
        attributions: ``{method name: (B, S) scores}``; only the first ``len(tokens)``
            positions of each example are used, so right-padded batches work as they are.
        true_labels, pred_labels, pred_probs: optional per-example values shown in the table.
        scale: ``"max"`` (each row divided by its largest |score|) or ``"rank"`` (each token's
            rank by |score| within its row, over ``n`` ranked tokens: ``rank / n``, sign kept;
            zero scores stay 0), see the module docstring.
        unranked: per example, True for tokens left out of the scaling (shown uncolored),
            e.g. special tokens that some methods never score.

    Example:
        >>> records = comparison_records([["a", "b"]], {"flow": [[0.2, 0.8]]})
        >>> [round(float(v), 2) for v in records[0].word_attributions]
        [0.25, 1.0]
        >>> records = comparison_records([["a", "b", "c"]], {"flow": [[0.5, 0.3, 0.2]]}, scale="rank")
        >>> [round(float(v), 2) for v in records[0].word_attributions]
        [1.0, 0.67, 0.33]
    """
    if scale not in SCALES:
        raise InvalidParameterError(f"scale={scale!r} is not supported; use one of {SCALES}.")
    scores = {name: _batch_scores(values, name, len(tokens_list)) for name, values in attributions.items()}
    if not scores:
        raise InvalidInputError("attributions is empty; pass at least one method.")
    records = []
    for index, tokens in enumerate(tokens_list):
        ranked = _ranked_positions(unranked, index, len(tokens))
        for name, batch in scores.items():
            row = batch[index]
            if len(tokens) > len(row):
                raise InvalidInputError(
                    f"Example {index} has {len(tokens)} tokens but '{name}' scores only {len(row)} positions.")
            row = row[: len(tokens)]
            records.append(captum_visualization.VisualizationDataRecord(
                word_attributions=scaled_row(row, ranked, scale),
                pred_prob=_item(pred_probs, index, float("nan")),
                pred_class=_item(pred_labels, index, ""),
                true_class=_item(true_labels, index, ""),
                attr_class=name,
                attr_score=float(row.sum()),
                raw_input_ids=[str(token) for token in tokens],
                convergence_score=None,
            ))
    return records


def scaled_row(row: np.ndarray, ranked: np.ndarray, scale: str = "max") -> np.ndarray:
    """One row's color intensities in ``[-1, 1]``; positions not ``ranked`` get 0.

    Example:
        >>> scaled_row(np.array([9.0, -2.0, 1.0, 0.0]), np.array([False, True, True, True]), "rank").round(2)
        array([ 0.  , -1.  ,  0.67,  0.  ])
    """
    intensity = np.zeros_like(row, dtype=np.float64)
    values = row[ranked]
    if values.size == 0:
        return intensity
    if scale == "max":
        peak = np.abs(values).max()
        intensity[ranked] = values / peak if peak > 0 else values
    else:
        # Ties share their average rank; exact zeros stay blank (they carry no ranking).
        ranks = rankdata(np.abs(values)) / values.size
        intensity[ranked] = np.where(values == 0, 0.0, np.sign(values) * ranks)
    return intensity


def _ranked_positions(unranked: Optional[Sequence[Sequence[bool]]], index: int, length: int) -> np.ndarray:
    if unranked is None:
        return np.ones(length, dtype=bool)
    flags = np.asarray(unranked[index], dtype=bool)
    if flags.shape != (length,):
        raise InvalidInputError(f"unranked[{index}] has {flags.size} entries for {length} tokens; pass one per token.")
    return ~flags


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
                    pred_probs: Optional[Sequence[float]] = None, pred_header: str = "predicted",
                    scale: str = "max", unranked: Optional[Sequence[Sequence[bool]]] = None,
                    correlations: Optional[Mapping[str, Sequence[Union[float, str, None]]]] = None,
                    correlation_header: str = "correlation", title: str = "Attribution comparison",
                    description: Optional[str] = None, path: Optional[PathLike] = None) -> str:
    """A standalone HTML page with a row per method per example, methods side by side.

    Colors follow Captum's ``visualize_text`` (green positive, red negative), scaled per
    row as ``scale`` says (see :func:`comparison_records`); the legend under the title
    states which. Hovering a word shows its score. The "sum" column is the unscaled total.

    Args:
        tokens_list: tokens of each example.
        attributions: ``{method name: (B, S) scores}`` (see :func:`comparison_records`).
        true_labels, pred_labels, pred_probs: optional per-example columns; ``pred_probs``
            is shown in brackets after the predicted label.
        pred_header: heading of the ``pred_labels`` column (e.g. the name of the explained output).
        scale, unranked: color scale per row and tokens left uncolored (:func:`comparison_records`).
        correlations: optional ``{method name: per-example values}`` shown in a column headed
            ``correlation_header`` (e.g. each method's Spearman correlation with a reference);
            a string value is shown as it is (e.g. ``"reference"``), NaN as "n/a".
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
    records = comparison_records(tokens_list, attributions, true_labels=true_labels, pred_labels=pred_labels,
                                 pred_probs=pred_probs, scale=scale, unranked=unranked)
    scores = {name: _batch_scores(values, name, len(tokens_list)) for name, values in attributions.items()}
    header = ["example", "method"] + (["true label"] if true_labels is not None else []) + (
        [pred_header] if pred_labels is not None else []) + (
        [correlation_header] if correlations is not None else []) + ["sum", "token importance"]
    rows = ["<tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in header) + "</tr>"]
    methods_per_example = len(attributions)
    for index, record in enumerate(records):
        example, position = divmod(index, methods_per_example)
        cells = [str(example) if position == 0 else "", f"<b>{html.escape(str(record.attr_class))}</b>"]
        if true_labels is not None:
            cells.append(html.escape(str(record.true_class)))
        if pred_labels is not None:  # once per example: every method explains the same output
            predicted = html.escape(str(record.pred_class))
            predicted += f" ({record.pred_prob:.2f})" if pred_probs is not None else ""
            cells.append(predicted if position == 0 else "")
        if correlations is not None:
            cells.append(_format_correlation(correlations[record.attr_class][example]))
        cells.append(f"{record.attr_score:.2f}")
        row_scores = scores[record.attr_class][example]
        ranked = _ranked_positions(unranked, example, len(record.raw_input_ids))
        words = "".join(_word_html(word, float(intensity), float(score), bool(is_ranked))
                        for word, intensity, score, is_ranked in zip(
                            record.raw_input_ids, record.word_attributions, row_scores, ranked))
        css_class = ' class="first-of-example"' if position == 0 else ""
        rows.append(f"<tr{css_class}>" + "".join(f"<td>{cell}</td>" for cell in cells)
                    + f'<td class="words">{words}</td></tr>')
    page = _page(title, description, _legend(scale, unranked is not None), "\n".join(rows))
    if path is not None:
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
    return page


def _format_correlation(value) -> str:
    if isinstance(value, str):  # e.g. "reference" for the method the others are compared with
        return html.escape(value)
    return "n/a" if value is None or math.isnan(value) else f"{value:+.2f}"


def _color(intensity: float) -> str:
    """Captum's convention: green for positive, red for negative, paler towards 0."""
    hue = 120 if intensity >= 0 else 0
    lightness = 100 - int(50 * min(1.0, abs(intensity)))
    return f"hsl({hue}, 75%, {lightness}%)"


def _word_html(word: str, intensity: float, score: float, ranked: bool) -> str:
    # Words are escaped so that tokens such as "<s>" or "&" survive.
    text = html.escape(word, quote=False)
    if not ranked:
        return f'<mark class="unranked" title="score {score:.4g} (not ranked)">{text}</mark> '
    return f'<mark style="background-color: {_color(intensity)}" title="score {score:.4g}">{text}</mark> '


def _legend(scale: str, has_unranked: bool) -> str:
    samples = "".join(_word_html(label, value, value, True)
                      for label, value in (("negative", -1.0), ("weak", 0.1), ("positive", 1.0)))
    if scale == "rank":
        text = ("color = rank of |score| within the row: the top token of each row has full color, "
                "the lowest the palest (ties share a rank; zero scores stay white). Hover a word for its score.")
    else:
        text = "color = score divided by the row's largest |score|. Hover a word for its score."
    if has_unranked:
        text += " Gray dotted tokens are not ranked (special tokens)."
    return f'<p class="legend"><b>Legend:</b> {samples} &mdash; {html.escape(text)}</p>'


def _page(title: str, description: Optional[str], legend: str, rows: str) -> str:
    intro = f"<p>{html.escape(description)}</p>" if description else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{intro}\n{legend}\n"
            f"<table>\n{rows}\n</table>\n</body>\n</html>\n")
