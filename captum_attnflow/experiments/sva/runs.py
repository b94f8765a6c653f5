"""One run = one protocol × one training seed: train, evaluate, and the files it leaves.

``OUT/<protocol>/seed<k>/`` holds ``checkpoint.pt``, ``correlations.npz`` (every example's
correlation for every configuration) and ``run.json`` (settings, accuracy, timings), so
the report can be rebuilt from the runs without recomputing anything.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from captum_attnflow.experiments.sva.evaluate import Cell, evaluate_examples, flatten, unflatten
from captum_attnflow.experiments.sva.protocol import PROTOCOLS, configurations
from captum_attnflow.experiments.sva.train import (
    CHECKPOINT_NAME,
    TrainSettings,
    accuracy_by_group,
    load_checkpoint,
    prepare_data,
    run_training,
)

CORRELATIONS_NAME = "correlations.npz"
RUN_NAME = "run.json"


def run_dir(out_dir: Path, protocol: str, seed: int) -> Path:
    return Path(out_dir) / protocol / f"seed{seed}"


@dataclass
class RunData:
    """What the report needs from one run."""

    protocol: str
    seed: int
    settings: TrainSettings
    train_log: dict
    accuracy: dict
    timings: Dict[str, float]
    eval_time_s: float
    groups: np.ndarray
    correlations: Dict[str, Dict[Cell, np.ndarray]]


def train_run(settings: TrainSettings, out_dir: Path, *, data_dir: Optional[Path] = None,
              progress: bool = True) -> dict:
    """Train one model into ``run_dir(out_dir, protocol, seed)``; returns the training log."""
    return run_training(settings, run_dir(out_dir, settings.protocol, settings.seed), data_dir=data_dir,
                        progress=progress)


def evaluate_run(directory: Path, *, data_dir: Optional[Path] = None, n_eval: Optional[int] = None,
                 flow_backend: str = "auto", threads: int = 2, progress: bool = True) -> RunData:
    """Evaluate the checkpoint in ``directory`` on its held-out split; writes the run files."""
    torch.set_num_threads(threads)
    model, vocab, settings, train_log = load_checkpoint(Path(directory) / CHECKPOINT_NAME)
    split, _ = prepare_data(settings, data_dir)  # same split seed -> same split as in training
    test = split.test if n_eval is None else split.test[:n_eval]
    start = time.perf_counter()
    accuracy = accuracy_by_group(model, split.test, vocab, settings.end_token)
    evaluation = evaluate_examples(model, vocab, test, configurations(PROTOCOLS[settings.protocol]),
                                   end_token=settings.end_token, flow_backend=flow_backend, progress=progress)
    run = RunData(protocol=settings.protocol, seed=settings.seed, settings=settings, train_log=train_log,
                  accuracy=accuracy, timings=evaluation["timings"], eval_time_s=time.perf_counter() - start,
                  groups=evaluation["groups"], correlations=evaluation["correlations"])
    save_run(run, Path(directory))
    return run


def save_run(run: RunData, directory: Path) -> None:
    # numpy's stub matches **arrays against its allow_pickle: bool parameter.
    np.savez_compressed(directory / CORRELATIONS_NAME, groups=run.groups, **flatten(run.correlations))  # type: ignore[arg-type]
    meta = {"protocol": run.protocol, "seed": run.seed, "settings": asdict(run.settings),
            "train_log": run.train_log, "accuracy": run.accuracy, "timings": run.timings,
            "eval_time_s": run.eval_time_s}
    (directory / RUN_NAME).write_text(json.dumps(meta, indent=1))


def load_run(directory: Path) -> RunData:
    meta = json.loads((Path(directory) / RUN_NAME).read_text())
    with np.load(Path(directory) / CORRELATIONS_NAME, allow_pickle=False) as arrays:
        groups = arrays["groups"]
        correlations = unflatten({key: arrays[key] for key in arrays.files if key != "groups"})
    return RunData(protocol=meta["protocol"], seed=meta["seed"], settings=TrainSettings(**meta["settings"]),
                   train_log=meta["train_log"], accuracy=meta["accuracy"], timings=meta["timings"],
                   eval_time_s=meta["eval_time_s"], groups=groups, correlations=correlations)
