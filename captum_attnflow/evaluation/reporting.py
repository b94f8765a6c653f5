"""Plain-Python result tables: CSV, Markdown and per-layer correlation plots (no pandas)."""

import csv
import math
from typing import Any, Dict, List, Optional

import numpy as np

#: Column order of :attr:`EvaluationResult.rows`, the CSV and the Markdown table.
COLUMNS = ("metric", "reference", "method", "layer", "mean", "std", "n")


class EvaluationResult:
    """Aggregated scores of an evaluation run.

    Attributes:
        rows: list of dicts with keys :data:`COLUMNS`. ``metric`` is ``"spearman"``,
            ``"comprehensiveness"``, ``"sufficiency"``, ``"infidelity"`` or ``"sensitivity"``;
            ``reference`` names the reference method for ``"spearman"`` (else None);
            ``layer`` numbers the layers from 1 (after the first layer) to L, as in the paper
            and every figure, for methods that returned every layer (else None);
            ``mean``/``std``/``n`` summarise the finite per-example values
            (see :func:`~captum_attnflow.evaluation.metrics.summarize`).
        per_example: ``{(metric, reference, method, layer): 1-D float array}`` with every
            example's value (``nan`` where undefined), for custom statistics.

    Example:
        >>> import numpy as np
        >>> result = EvaluationResult.from_values({("spearman", "blank", "flow", 1): np.array([0.5, 1.0])})
        >>> result.rows[0]["mean"], result.rows[0]["n"]
        (0.75, 2)
        >>> print(result.to_markdown())
        | metric | reference | method | layer | mean | std | n |
        |---|---|---|---|---|---|---|
        | spearman | blank | flow | 1 | 0.7500 | 0.3536 | 2 |
    """

    def __init__(self, rows: List[Dict[str, Any]],
                 per_example: Optional[Dict[tuple, np.ndarray]] = None) -> None:
        self.rows = rows
        self.per_example = per_example if per_example is not None else {}

    @classmethod
    def from_values(cls, per_example: Dict[tuple, np.ndarray], *, undefined: str = "exclude") -> "EvaluationResult":
        """Summarise ``{(metric, reference, method, layer): values}`` into rows, keeping key order.

        ``undefined``: how ``nan`` Spearman values count (see
        :func:`~captum_attnflow.evaluation.metrics.summarize`); other metrics always leave ``nan`` out.
        """
        from captum_attnflow.evaluation.metrics import summarize

        rows = []
        for (metric, reference, method, layer), values in per_example.items():
            mean, std, n = summarize(values, undefined=undefined if metric == "spearman" else "exclude")
            rows.append(dict(zip(COLUMNS, (metric, reference, method, layer, mean, std, n))))
        return cls(rows, {key: np.asarray(v, dtype=np.float64) for key, v in per_example.items()})

    def select(self, **criteria) -> List[Dict[str, Any]]:
        """Rows whose columns equal every ``criteria`` value, e.g. ``select(metric="spearman")``."""
        unknown = set(criteria) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}; use {COLUMNS}.")
        return [row for row in self.rows if all(row[key] == value for key, value in criteria.items())]

    def to_csv(self, path) -> None:
        """Write :attr:`rows` as CSV with a header (:data:`COLUMNS`); None is written as an empty field.

        Example:
            >>> import os, tempfile
            >>> import numpy as np
            >>> path = os.path.join(tempfile.mkdtemp(), "results.csv")
            >>> EvaluationResult.from_values({("sufficiency", None, "flow", None): np.array([0.5])}).to_csv(path)
            >>> print(open(path).read().strip())
            metric,reference,method,layer,mean,std,n
            sufficiency,,flow,,0.5,nan,1
        """
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({key: "" if row[key] is None else row[key] for key in COLUMNS})

    def to_markdown(self, digits: int = 4) -> str:
        """A GitHub Markdown table of :attr:`rows`; None shows as ``-``, floats with ``digits`` decimals."""
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in self.rows:
            lines.append("| " + " | ".join(_format_cell(row[key], digits) for key in COLUMNS) + " |")
        return "\n".join(lines)

    def plot_correlations(self, path, *, reference: Optional[str] = None, dpi: int = 100) -> None:
        """Save per-layer Spearman curves to an image file, one panel per reference.

        Methods that returned every layer are drawn as curves of the mean over layers 1 to L,
        with a shaded band of ± one standard deviation over examples (labeled in the legend);
        single-output methods as horizontal dashed lines. Each panel with its legend, which sits
        to the right of the data, is 7 × 3.5 inches (``700 × 350`` pixels at the default ``dpi=100``).
        Uses Matplotlib's Agg canvas directly, so no display and no global ``pyplot`` state are touched.

        Example:
            >>> import os, tempfile
            >>> import numpy as np
            >>> result = EvaluationResult.from_values(
            ...     {("spearman", "blank", "flow", layer): np.array([0.2 * layer, 0.3]) for layer in (1, 2, 3)})
            >>> path = os.path.join(tempfile.mkdtemp(), "layers.png")
            >>> result.plot_correlations(path)
            >>> open(path, "rb").read(4)[1:]  # the PNG signature
            b'PNG'
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self.select(metric="spearman")
        references = sorted({row["reference"] for row in rows}) if reference is None else [reference]
        if not rows or not references:
            raise ValueError("no Spearman rows to plot; run the evaluation with 'spearman' in metrics.")
        figure = Figure(figsize=(7 * len(references), 3.5))
        FigureCanvasAgg(figure)
        for index, name in enumerate(references):
            axes = figure.add_subplot(1, len(references), index + 1)
            _plot_reference(axes, [row for row in rows if row["reference"] == name], name)
        figure.tight_layout()  # makes room for each legend beside its panel
        figure.savefig(path, dpi=dpi)

    def __repr__(self) -> str:
        return f"EvaluationResult({len(self.rows)} rows)"


def _format_cell(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _plot_reference(axes, rows: List[Dict[str, Any]], reference: str) -> None:
    banded = False
    for index, method in enumerate(dict.fromkeys(row["method"] for row in rows)):
        method_rows = [row for row in rows if row["method"] == method]
        color = f"C{index % 10}"
        if method_rows[0]["layer"] is None:
            axes.axhline(method_rows[0]["mean"], linestyle="--", color=color, label=f"{method} (one output)")
            continue
        method_rows.sort(key=lambda row: row["layer"])
        layers = np.array([row["layer"] for row in method_rows])
        means = np.array([row["mean"] for row in method_rows])
        stds = np.nan_to_num(np.array([row["std"] for row in method_rows]))
        axes.plot(layers, means, marker="o", color=color, label=method)
        axes.fill_between(layers, means - stds, means + stds, color=color, alpha=0.2, linewidth=0)
        banded = True
    if banded:  # one legend entry says what every band is
        axes.fill_between([], [], [], color="gray", alpha=0.3, linewidth=0, label="shaded: ± 1 std over examples")
    axes.set_xlabel("layer (1 = after the first)")
    axes.set_ylabel(f"Spearman vs {reference}")
    axes.set_ylim(-1.05, 1.05)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
