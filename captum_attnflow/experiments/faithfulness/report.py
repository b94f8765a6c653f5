"""Tables, CSV and figure from the per-example results of every task and seed.

Every cell is a mean over seeds and examples with a 95 % two-way bootstrap interval
(:func:`~captum_attnflow.evaluation.metrics.bootstrap_mean_cis`: seeds and examples resampled
together). Comparisons between edge weightings are paired (same resamples, same examples):
:func:`~captum_attnflow.evaluation.metrics.bootstrap_difference_ci`.
"""

import csv
import platform
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from captum_attnflow.evaluation.metrics import bootstrap_difference_ci, bootstrap_mean_cis
from captum_attnflow.experiments.faithfulness.methods import EDGE_WEIGHTS, GRAPH_METHODS
from captum_attnflow.experiments.faithfulness.run import METRICS, TaskResult

TASK_LABELS = {"sva": "SVA classifier", "minilm": "MiniLM similarity", "vit": "ViT on digits"}
CSV_COLUMNS = ("task", "metric", "method", "seeds", "examples_per_seed", "n", "mean", "ci_low", "ci_high")
DIFF_COLUMNS = ("task", "metric", "comparison", "difference", "ci_low", "ci_high", "verdict")
NOTES_START, NOTES_END = "<!-- notes -->", "<!-- /notes -->"


def tables(results: Sequence[TaskResult]) -> Dict[Tuple[str, str, str], np.ndarray]:
    """``{(task, metric, method): (seeds, examples)}``, seeds in increasing order."""
    grouped: Dict[Tuple[str, str, str], List[Tuple[int, np.ndarray]]] = defaultdict(list)
    for result in results:
        for metric, by_method in result.values.items():
            for method, values in by_method.items():
                grouped[(result.task, metric, method)].append((result.seed, np.asarray(values, dtype=np.float64)))
    out = {}
    for key, rows in grouped.items():
        rows.sort(key=lambda row: row[0])
        width = min(len(values) for _, values in rows)  # a seed with fewer examples: cut to the common count
        out[key] = np.stack([values[:width] for _, values in rows])
    return out


def summary_rows(cells: Dict[Tuple[str, str, str], np.ndarray], n_resamples: int) -> List[dict]:
    keys = list(cells)  # task, metric, method in the order they were computed
    stats: Dict[Tuple[str, str, str], Any] = {}
    for shape in dict.fromkeys(table.shape for table in cells.values()):
        # Tables of one shape (one task) share their resamples: one stacked call per shape.
        same = [key for key in keys if cells[key].shape == shape]
        stats.update(zip(same, bootstrap_mean_cis(np.stack([cells[key] for key in same]), n_resamples=n_resamples)))
    rows = []
    for key in keys:
        mean, low, high = stats[key]
        table = cells[key]
        rows.append(dict(zip(CSV_COLUMNS, (*key, table.shape[0], table.shape[1], int(np.isfinite(table).sum()),
                                            mean, low, high))))
    return rows


def comparisons(methods: Sequence[str]) -> List[Tuple[str, str]]:
    """(treated, baseline) pairs: each edge weighting against raw attention, then flow against rollout."""
    pairs = []
    for graph in GRAPH_METHODS:
        for weights in EDGE_WEIGHTS[1:]:
            pairs.append((f"{graph}/{weights}", f"{graph}/attention"))
    pairs += [(f"flow/{weights}", f"rollout/{weights}") for weights in EDGE_WEIGHTS]
    return [(a, b) for a, b in pairs if a in methods and b in methods]


def difference_rows(cells: Dict[Tuple[str, str, str], np.ndarray], n_resamples: int) -> List[dict]:
    rows = []
    for task, metric in dict.fromkeys((task, metric) for task, metric, _ in cells):
        methods = [method for t, m, method in cells if (t, m) == (task, metric)]
        better = METRICS[metric][1]
        for treated, baseline in comparisons(methods):
            diff, low, high = bootstrap_difference_ci(cells[(task, metric, treated)], cells[(task, metric, baseline)],
                                                      n_resamples=n_resamples)
            if low > 0 or high < 0:
                wins = (low > 0) == (better == "higher")
                verdict = f"{treated if wins else baseline} better"
            else:
                verdict = "no difference"
            rows.append(dict(zip(DIFF_COLUMNS, (task, metric, f"{treated} − {baseline}", diff, low, high, verdict))))
    return rows


def write_csv(path: Path, rows: List[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value
                             for key, value in row.items()})


def _cell(row: Optional[dict]) -> str:
    if row is None or not np.isfinite(row["mean"]):
        return "—"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def main_table(rows: List[dict], task: str) -> List[str]:
    lookup = {(row["metric"], row["method"]): row for row in rows if row["task"] == task}
    methods = list(dict.fromkeys(row["method"] for row in rows if row["task"] == task))
    header = ["method"] + [f"{METRICS[m][0]} ({'↑' if METRICS[m][1] == 'higher' else '↓'})" for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(_cell(lookup.get((metric, method))) for metric in METRICS) + " |")
    return lines


def verdict_lines(differences: List[dict], task: str) -> List[str]:
    """One sentence per metric: which comparison has a CI excluding 0, in whose favour."""
    lines = []
    for metric, (label, better) in METRICS.items():
        rows = [row for row in differences if row["task"] == task and row["metric"] == metric]
        if not rows:
            continue
        decided = [f"{row['verdict'].replace(' better', '')} beats {_loser(row)} ({row['difference']:+.3f} "
                   f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}])"
                   for row in rows if row["verdict"] != "no difference"]
        undecided = [row["comparison"] for row in rows if row["verdict"] == "no difference"]
        text = f"- **{label}** ({better} is better): "
        text += "; ".join(decided) if decided else "no comparison has a CI excluding 0"
        if undecided and decided:
            text += f"; no difference for {', '.join(undecided)}"
        lines.append(text + ".")
    return lines


def _loser(row: dict) -> str:
    treated, baseline = row["comparison"].split(" − ")
    return baseline if row["verdict"].startswith(treated) else treated


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(len(METRICS), len(tasks), figsize=(4.2 * len(tasks), 2.6 * len(METRICS)),
                                squeeze=False, layout="constrained")
    colors = {"attention": "tab:blue", "gradient": "tab:orange", "grad_rollout": "tab:green"}
    for column, task in enumerate(tasks):
        for line, (metric, (label, better)) in enumerate(METRICS.items()):
            axis = axes[line, column]
            selected = [row for row in rows if row["task"] == task and row["metric"] == metric]
            for position, row in enumerate(selected):
                weights = row["method"].partition("/")[2]
                mean = row["mean"]
                axis.errorbar(mean, position, xerr=[[mean - row["ci_low"]], [row["ci_high"] - mean]], fmt="o",
                              color=colors.get(weights, "0.3"), capsize=2, markersize=4)
            axis.set_yticks(range(len(selected)), [row["method"] for row in selected], fontsize=7)
            axis.invert_yaxis()
            axis.axvline(0.0, color="0.8", linewidth=0.8, zorder=0)
            axis.tick_params(axis="x", labelsize=7)
            axis.set_title(f"{TASK_LABELS.get(task, task)}: {label} ({'↑' if better == 'higher' else '↓'})",
                           fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=color, label=f"edge weights: {weights}")
               for weights, color in colors.items()]
    handles.append(Line2D([], [], marker="o", linestyle="", color="0.3", label="references"))
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    figure.suptitle("Faithfulness by edge weighting (mean, 95 % bootstrap CI over seeds and examples)", fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _existing_notes(path: Path) -> str:
    if not path.is_file():
        return ""
    match = re.search(re.escape(NOTES_START) + r".*?" + re.escape(NOTES_END), path.read_text(), flags=re.S)
    return match.group(0) if match else ""


def write_report(results: Sequence[TaskResult], results_dir: Path, *, command: str, n_resamples: int = 1000,
                 bins: Sequence[float] = (), deviations: Sequence[str] = (),
                 times: Optional[Tuple[float, float]] = None, name: str = "faithfulness") -> Path:
    """``<name>.md``, ``<name>.csv``, ``<name>_differences.csv`` and ``<name>.png`` in ``results_dir``."""
    import torch
    import transformers

    results_dir.mkdir(parents=True, exist_ok=True)
    cells = tables(results)
    rows = summary_rows(cells, n_resamples)
    differences = difference_rows(cells, n_resamples)
    write_csv(results_dir / f"{name}.csv", rows, CSV_COLUMNS)
    write_csv(results_dir / f"{name}_differences.csv", differences, DIFF_COLUMNS)
    plot(rows, results_dir / f"{name}.png")
    markdown = results_dir / f"{name}.md"
    notes = _existing_notes(markdown) or f"{NOTES_START}\n{NOTES_END}"
    tasks = list(dict.fromkeys(result.task for result in results))
    seeds = {task: sorted(r.seed for r in results if r.task == task) for task in tasks}
    lines = [
        "# Faithfulness of rollout and flow by edge weighting",
        "",
        f"Generated by `{command}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC). Cells: mean over seeds and "
        "examples with a 95 % bootstrap CI (seeds and examples resampled together, "
        f"{n_resamples} resamples). Machine-readable: `{name}.csv`, `{name}_differences.csv`; figure: `{name}.png`.",
        "",
        notes,
        "",
        "## What is measured",
        "",
        f"- **AOPC comprehensiveness / sufficiency** (DeYoung et al. 2020, ERASER): mean over bins "
        f"{', '.join(f'{b:g}' for b in bins)} of the drop of the explained score when the top max(1, ⌈q·n⌉) units are "
        "removed / when all other units are removed. Comprehensiveness: higher is more faithful; sufficiency: lower.",
        "- **Spearman with blank-out** (Abnar & Zuidema 2020): per example, ranks of the attribution vs "
        "|Δscore| when that single unit is removed.",
        "- **Spearman trained vs randomised** (Adebayo et al. 2018): per example, ranks of the explanation of the "
        "trained model vs of the model after cascading randomisation of every layer (classifier head and every "
        "transformer block, output first; each parameter re-drawn from a normal with its trained mean and std; "
        "embeddings kept). Lower is better: a method whose explanation survives randomisation does not explain "
        "what was learned (`random`, independent of the model, scores 1 by construction).",
        "- Units and removal: SVA: words (`[CLS]` excluded), replaced by `[UNK]`; MiniLM: word pieces of "
        "sentence A (`[CLS]`/`[SEP]` excluded), replaced by `[UNK]`; ViT: the 16 patches, replaced by zeros "
        "(the background). Explained score: p(predicted class) for SVA and ViT, cos(A, B) for MiniLM.",
        "- Methods: `raw_attention` (last layer, head mean), `rollout/<w>` and `flow/<w>` with edge weights "
        "`w` = `attention` (raw attention graph), `gradient` (Chefer et al.'s E_h[(∇A ⊙ A)⁺]), `grad_rollout` "
        "(vit-explain), all with `start_layer=0`; `grad_x_input` (Σ over the embedding of gradient × "
        "embedding, signed; pixels × gradient summed per patch for the ViT) and `random` (uniform scores) "
        "as references. Rollout and flow explain `[CLS]` (SVA, ViT) or the mean over tokens (MiniLM, mean pooling).",
        "",
    ]
    for task in tasks:
        lines += [f"## {TASK_LABELS.get(task, task)} (seeds {', '.join(map(str, seeds[task]))})", ""]
        lines += main_table(rows, task) + [""]
        lines += ["Which graph wins (paired 95 % CI of the difference excludes 0):", ""]
        lines += verdict_lines(differences, task) + [""]
    lines += ["## Models", "", "| task | seed | examples | details |", "|---|---|---|---|"]
    for result in sorted(results, key=lambda r: (tasks.index(r.task), r.seed)):
        details = {key: value for key, value in result.info.items() if key not in ("timings", "examples")}
        text = ", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                         for key, value in details.items())
        lines.append(f"| {result.task} | {result.seed} | {result.info.get('examples')} | {text} |")
    lines += [""]
    if deviations:
        lines += ["## Deviations", ""] + [f"- {text}" for text in deviations] + [""]
    lines += ["## Run time and versions", ""]
    if times is not None:
        lines.append(f"- Whole run: {times[0] / 60:.1f} min wall, {times[1] / 60:.1f} min CPU (this process, all "
                     f"threads; training, attribution, metrics, report) on {platform.machine()}, CPU only, "
                     f"{torch.get_num_threads()} torch threads, on a machine shared with other work (wall times vary "
                     "with its load). Per task and seed: `total_s` (wall) and `cpu_s` in the Models table.")
    else:
        lines.append("- Rebuilt from stored per-example values (--report-only); run times: `total_s` / `cpu_s` "
                     "in the Models table.")
    lines.append(f"- Python {platform.python_version()}; torch {torch.__version__}, transformers "
                 f"{transformers.__version__}.")
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return markdown
