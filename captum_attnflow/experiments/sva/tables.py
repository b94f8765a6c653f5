"""Numbers of the report: per-cell means over seeds with bootstrap CIs, the ablation, the findings.

A *table* is a ``(seeds, examples)`` array of per-example correlations of one cell, with
``nan`` where an example is not averaged (another example group, or an undefined correlation
that the protocol leaves out). Confidence intervals resample seeds and examples together
(:func:`~captum_attnflow.evaluation.bootstrap_means`); differences are paired.
"""

import warnings
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from captum_attnflow.evaluation import bootstrap_means
from captum_attnflow.experiments.sva.protocol import CLS_VARIANTS, FACTORS, METHODS, PAPER, PROTOCOLS, REFERENCES
from captum_attnflow.experiments.sva.runs import RunData

#: Layers of the done-when criterion, averaged into one ablation column.
LATE_LAYERS = (3, 4, 5, 6)
LEVEL = 0.95


@dataclass(frozen=True)
class Selection:
    """Which stored configuration is averaged, over which examples, counting undefined how."""

    config: str = "base"
    examples: str = "all"
    undefined: str = "exclude"


def base_selection(protocol: str) -> Selection:
    choices = PROTOCOLS[protocol].evaluation
    return Selection("base", choices.examples, choices.undefined)


def cell_table(runs: Sequence[RunData], selection: Selection, cell: tuple) -> np.ndarray:
    """``(seeds, examples)`` table of one cell; ``cell[3]`` may be a tuple of layers (averaged)."""
    variant, reference, method, layers = cell
    layers = layers if isinstance(layers, tuple) else (layers,)
    rows = []
    for run in runs:
        stored = run.correlations[selection.config]
        values = np.stack([stored[(variant, reference, method, layer)] for layer in layers])
        if selection.undefined == "zero":
            values = np.nan_to_num(values, nan=0.0)
        with warnings.catch_warnings():  # an example undefined at every averaged layer stays nan
            warnings.simplefilter("ignore", RuntimeWarning)
            row = np.nanmean(values, axis=0) if len(layers) > 1 else values[0]
        if selection.examples == "natural":
            row = np.where(run.groups == "random", row, np.nan)
        rows.append(row)
    return np.stack(rows)


def check_runs_align(runs: Sequence[RunData]) -> None:
    """Runs pooled or compared must share their evaluation examples (same split and order)."""
    for run in runs[1:]:
        if not np.array_equal(run.groups, runs[0].groups):
            raise ValueError(f"runs {runs[0].protocol}/seed{runs[0].seed} and {run.protocol}/seed{run.seed} were "
                             "evaluated on different examples; evaluate them with the same split and --n-eval.")


def _summaries(tables: np.ndarray, n_resamples: int) -> np.ndarray:
    point, resampled = bootstrap_means(tables, n_resamples=n_resamples)
    return np.column_stack([point, *_interval(resampled)])


def _interval(resampled: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    tail = (1 - LEVEL) / 2 * 100
    with np.errstate(all="ignore"):
        return np.nanpercentile(resampled, tail, axis=1), np.nanpercentile(resampled, 100 - tail, axis=1)


def base_cells(runs: Sequence[RunData]) -> List[tuple]:
    return sorted(runs[0].correlations["base"], key=_cell_order)


def _cell_order(cell: tuple) -> tuple:
    variant, reference, method, layer = cell
    return CLS_VARIANTS.index(variant), REFERENCES.index(reference), METHODS.index(method), layer


def result_rows(runs_by_protocol: Mapping[str, Sequence[RunData]], n_resamples: int = 1000) -> List[dict]:
    """One row per (protocol, variant, reference, method, layer) pooled over seeds (``seed="all"``),
    then one per seed; each with mean, 95 % CI and the number of examples averaged."""
    rows = []
    for protocol, runs in runs_by_protocol.items():
        selection = base_selection(protocol)
        cells = base_cells(runs)
        tables = np.stack([cell_table(runs, selection, cell) for cell in cells])
        pooled = _summaries(tables, n_resamples)
        per_seed = [_summaries(tables[:, [index]], n_resamples) for index in range(len(runs))]
        for k, cell in enumerate(cells):
            n_examples = int(np.isfinite(tables[k]).any(axis=0).sum())
            rows.append(_row(protocol, cell, "all", pooled[k], n_examples))
            for run, summary in zip(runs, per_seed):
                rows.append(_row(protocol, cell, run.seed, summary[k], int(np.isfinite(tables[k, 0]).sum())))
    return rows


def _row(protocol: str, cell: tuple, seed, summary: np.ndarray, n_examples: int) -> dict:
    variant, reference, method, layer = cell
    paper = PAPER.get(reference, {}).get(method)
    return {"protocol": protocol, "cls_variant": variant, "reference": reference, "method": method,
            "layer": layer, "seed": seed, "mean": float(summary[0]), "ci_low": float(summary[1]),
            "ci_high": float(summary[2]), "n_examples": n_examples,
            "paper": paper[layer - 1] if paper and layer <= len(paper) else None}


def lookup(rows: Sequence[dict], **criteria) -> Dict[tuple, dict]:
    """``{(protocol, variant, reference, method, layer): row}`` of the rows matching ``criteria``."""
    return {(r["protocol"], r["cls_variant"], r["reference"], r["method"], r["layer"]): r
            for r in rows if all(r[key] == value for key, value in criteria.items())}


# --------------------------------------------------------------------------- ablation


@dataclass(frozen=True)
class Switch:
    """One ablation row: the base protocol with one factor set to ``value``."""

    protocol: str
    factor: str
    value: object
    treated: Tuple[str, Selection]  # (protocol whose runs are used, selection)
    baseline: Tuple[str, Selection]


def switches(protocol: str, available: Sequence[str]) -> List[Switch]:
    """Every single-factor switch away from ``protocol`` that the stored runs allow."""
    base = base_selection(protocol)
    evaluation = PROTOCOLS[protocol].evaluation
    result = []
    for factor in FACTORS:
        if factor.stage != "evaluation" or not factor.run:
            continue
        for value in factor.values:
            if value == getattr(evaluation, factor.name):
                continue
            if factor.name in ("examples", "undefined"):
                treated = replace(base, **{factor.name: value})
            elif factor.name == "rank_end_token" and not PROTOCOLS[protocol].model.end_token:
                continue
            else:
                treated = replace(base, config=f"{factor.name}={value}")
            result.append(Switch(protocol, factor.name, value, (protocol, treated), (protocol, base)))
    other = "library" if protocol == "authors" else "authors"
    if other in available:
        # Same evaluation on both models; an end token, where there is one, is not ranked.
        baseline_config = "rank_end_token=False" if PROTOCOLS[protocol].model.end_token else "base"
        result.append(Switch(protocol, "model", other, (other, replace(base, config="cross")),
                             (protocol, replace(base, config=baseline_config))))
    return result


def late_layers(runs: Sequence[RunData]) -> Tuple[int, ...]:
    """:data:`LATE_LAYERS` the models have (all their layers for the small ``--quick`` models)."""
    layers = sorted({cell[3] for cell in base_cells(runs)})
    return tuple(layer for layer in layers if layer in LATE_LAYERS) or tuple(layers)


def layer_label(layers: Tuple[int, ...]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def ablation_rows(runs_by_protocol: Mapping[str, Sequence[RunData]], n_resamples: int = 1000) -> List[dict]:
    """Δ of every cell (and of the layer-3–6 average) when one factor is switched, with a paired CI."""
    rows = []
    for protocol, runs in runs_by_protocol.items():
        cells = base_cells(runs)
        late = late_layers(runs)
        cells += sorted({(v, r, m, late) for v, r, m, _ in cells}, key=lambda c: _cell_order((*c[:3], 0)))
        for switch in switches(protocol, list(runs_by_protocol)):
            treated_runs = runs_by_protocol[switch.treated[0]]
            check_runs_align([*runs, *treated_runs])
            for cell in cells:
                treated = cell_table(treated_runs, switch.treated[1], cell)
                baseline = cell_table(runs, switch.baseline[1], cell)
                rows.append(_delta_row(switch, cell, treated, baseline, n_resamples))
    return rows


def _delta_row(switch: Switch, cell: tuple, treated: np.ndarray, baseline: np.ndarray, n_resamples: int) -> dict:
    point, resampled = bootstrap_means(np.stack([treated, baseline]), n_resamples=n_resamples)
    low, high = _interval((resampled[0] - resampled[1])[None])
    variant, reference, method, layer = cell
    return {"protocol": switch.protocol, "factor": switch.factor, "value": str(switch.value),
            "cls_variant": variant, "reference": reference, "method": method,
            "layer": layer_label(layer) if isinstance(layer, tuple) else layer,
            "baseline": float(point[1]), "delta": float(point[0] - point[1]),
            "ci_low": float(low[0]), "ci_high": float(high[0])}


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    name: str
    label: str
    statement: str
    comparisons: Tuple[Tuple[tuple, tuple], ...]  # ((method, layer) higher, (method, layer) lower)


#: The paper's qualitative findings (Sec. 5, Tables 1–2), each as "a > b" comparisons.
FINDINGS = (
    Finding("raw_layer1", "raw best at layer 1", "raw attention correlates best at layer 1 (above its layers 2–6)",
            tuple((("raw", 1), ("raw", layer)) for layer in range(2, 7))),
    Finding("rise", "rollout/flow rise", "rollout and flow rise with depth (layer 6 above layer 1)",
            ((("rollout", 6), ("rollout", 1)), (("flow", 6), ("flow", 1)))),
    Finding("beat_raw", "rollout/flow beat raw", "from layer 2 on, rollout and flow beat raw attention",
            tuple(((method, layer), ("raw", layer)) for method in ("rollout", "flow") for layer in range(2, 7))),
    Finding("flow_faster", "flow above rollout", "flow rises faster than rollout (flow above rollout at layers 2–4)",
            tuple((("flow", layer), ("rollout", layer)) for layer in range(2, 5))),
)


def finding_rows(runs_by_protocol: Mapping[str, Sequence[RunData]], n_resamples: int = 1000) -> List[dict]:
    """For each protocol, variant, paper reference and finding: does every comparison hold?

    A comparison holds when the 95 % CI of the paired difference lies above 0; the row keeps
    the smallest difference and its CI.
    """
    rows = []
    for protocol, runs in runs_by_protocol.items():
        selection = base_selection(protocol)
        num_layers = max(cell[3] for cell in base_cells(runs))
        for variant in CLS_VARIANTS:
            for reference in PAPER:
                for finding in FINDINGS:
                    comparisons = [(high, low) for high, low in finding.comparisons
                                   if max(high[1], low[1]) <= num_layers]  # small --quick models
                    if not comparisons:
                        continue
                    deltas = [_paired_delta(runs, selection, (variant, reference, *high),
                                            (variant, reference, *low), n_resamples)
                              for high, low in comparisons]
                    weakest = min(deltas, key=lambda d: d[1])
                    rows.append({"protocol": protocol, "cls_variant": variant, "reference": reference,
                                 "finding": finding.name, "label": finding.label, "statement": finding.statement,
                                 "holds": all(d[1] > 0 for d in deltas), "weakest_delta": weakest[0],
                                 "weakest_ci_low": weakest[1], "weakest_ci_high": weakest[2],
                                 "paper_holds": _paper_holds(reference, finding)})
    return rows


def _paired_delta(runs, selection, high_cell, low_cell, n_resamples) -> Tuple[float, float, float]:
    tables = np.stack([cell_table(runs, selection, high_cell), cell_table(runs, selection, low_cell)])
    point, resampled = bootstrap_means(tables, n_resamples=n_resamples)
    low, high = _interval((resampled[0] - resampled[1])[None])
    return float(point[0] - point[1]), float(low[0]), float(high[0])


def _paper_holds(reference: str, finding: Finding) -> bool:
    table = PAPER[reference]
    return all(table[a][la - 1] > table[b][lb - 1] for (a, la), (b, lb) in finding.comparisons)


def gap_rows(rows: Sequence[dict], protocol: str = "authors", variant: str = "with_cls") -> List[dict]:
    """Ours − paper for every paper cell of one protocol (pooled over seeds)."""
    result = []
    for _key, row in lookup(rows, protocol=protocol, cls_variant=variant, seed="all").items():
        if row["paper"] is None:
            continue
        result.append({**row, "gap": row["mean"] - row["paper"],
                       "paper_in_ci": row["ci_low"] <= row["paper"] <= row["ci_high"]})
    return result


def late_layer_rows(ablation: Sequence[dict], protocol: str, variant: str = "with_cls",
                    references: Optional[Sequence[str]] = None) -> List[dict]:
    """The ablation rows of the layer-3–6 average, for the Markdown table."""
    references = tuple(PAPER) if references is None else tuple(references)
    return [row for row in ablation if row["protocol"] == protocol and row["cls_variant"] == variant
            and isinstance(row["layer"], str) and row["reference"] in references]
