"""Score every method on one task (a trained model and its examples): per-example metric values.

For each method: AOPC comprehensiveness and sufficiency, the Spearman correlation with
blank-out, and the Spearman correlation between its explanations of the trained model and of
the cascading-randomised one (every layer, output first, re-drawn; the embeddings are kept).
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from captum_attnflow.evaluation.faithfulness import (
    aopc,
    blank_out,
    blank_out_spearman,
    randomization_spearman,
    randomized_copy,
)
from captum_attnflow.experiments.faithfulness.methods import attribute
from captum_attnflow.experiments.faithfulness.tasks import Task

#: Metric name -> (label, which direction is faithful).
METRICS = {
    "comprehensiveness": ("AOPC comprehensiveness", "higher"),
    "sufficiency": ("AOPC sufficiency", "lower"),
    "blank_out_spearman": ("Spearman with blank-out", "higher"),
    "randomization_spearman": ("Spearman trained vs randomised model", "lower"),
}


@dataclass
class TaskResult:
    """Per-example values ``values[metric][method]`` (``(B,)``) of one task and seed, plus its info."""

    task: str
    seed: int
    values: Dict[str, Dict[str, np.ndarray]]
    info: dict

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stem = directory / f"{self.task}_seed{self.seed}"
        arrays: Dict[str, Any] = {f"{metric}|{method}": values for metric, by_method in self.values.items()
                                  for method, values in by_method.items()}
        np.savez_compressed(f"{stem}.npz", **arrays)
        Path(f"{stem}.json").write_text(json.dumps({"task": self.task, "seed": self.seed, "info": self.info},
                                                   indent=1))

    @classmethod
    def load(cls, stem: Path) -> "TaskResult":
        meta = json.loads(Path(f"{stem}.json").read_text())
        values: Dict[str, Dict[str, np.ndarray]] = {}
        with np.load(f"{stem}.npz") as arrays:
            for key in arrays.files:
                metric, method = key.split("|")
                values.setdefault(metric, {})[method] = arrays[key]
        return cls(meta["task"], meta["seed"], values, meta["info"])


def evaluate_task(task: Task, methods: Sequence[str], *, bins: Sequence[float], progress: bool = True) -> TaskResult:
    """Every metric of every method on ``task``; times go into ``info``."""
    timings: Dict[str, float] = {}
    tick = time.perf_counter()
    score = task.score_of(task.model)
    blank = blank_out(score, task.remove, task.inputs, task.eligible)
    timings["blank_out_s"] = time.perf_counter() - tick
    randomized = randomized_copy(task.model, task.layers_top_down, seed=1000 + task.seed)
    values: Dict[str, Dict[str, np.ndarray]] = {metric: {} for metric in METRICS}
    threads = torch.get_num_threads()
    for method in tqdm(methods, desc=f"{task.name} seed {task.seed}", disable=not progress, leave=False):
        # The flow engine's first parallel numba call changes torch's thread count (shared OpenMP
        # runtime): restore the caller's, or later work oversubscribes the cores.
        torch.set_num_threads(threads)
        tick = time.perf_counter()
        scores = attribute(task, task.model, method)
        timings[f"{method}_s"] = time.perf_counter() - tick
        removal = aopc(score, task.remove, task.inputs, scores, task.eligible, bins=bins)
        values["comprehensiveness"][method] = removal["comprehensiveness"]
        values["sufficiency"][method] = removal["sufficiency"]
        values["blank_out_spearman"][method] = blank_out_spearman(scores, blank, task.eligible)
        values["randomization_spearman"][method] = randomization_spearman(
            scores, attribute(task, randomized, method), task.eligible)
    torch.set_num_threads(threads)
    info = dict(task.info, examples=int(task.inputs.shape[0]), timings=timings,
                eligible_units_mean=float(task.eligible.sum(1).float().mean()))
    return TaskResult(task.name, task.seed, values, info)
