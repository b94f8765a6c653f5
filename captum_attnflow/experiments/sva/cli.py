"""Command line: train the model, evaluate the correlations, write the results."""

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from captum_attnflow.experiments.sva.train import TrainSettings, run_training

DEFAULT_OUT = Path("runs/sva")
DEFAULT_RESULTS = Path("docs/results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m captum_attnflow.experiments.sva",
        description="Reproduce Tables 1-2 of Abnar & Zuidema (2020) on a model trained here.")
    parser.add_argument("command", choices=("train", "evaluate", "all"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny model on a few hundred examples (seconds; for tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="checkpoint and raw results directory (default: runs/sva)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where sva.md/.csv/.png go (default: docs/results, or OUT with --quick)")
    parser.add_argument("--n-eval", type=int, default=None,
                        help="evaluate on the first N held-out examples (default: all of them)")
    parser.add_argument("--n-flow", type=int, default=None,
                        help="run attention flow on the first N evaluated examples (default: all)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None, help="training budget, minutes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument("--flow-backend", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    settings = TrainSettings.quick() if args.quick else TrainSettings()
    if args.epochs is not None:
        settings.epochs = args.epochs
    if args.time_budget is not None:
        settings.time_budget_s = args.time_budget * 60
    if args.threads is not None:
        settings.threads = args.threads
    return settings


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    if args.command in ("train", "all"):
        log = run_training(settings_from_args(args), args.out, progress=progress)
        print(json.dumps({k: v for k, v in log.items() if k != "split"}, indent=1))
    if args.command in ("evaluate", "all"):
        from captum_attnflow.experiments.sva.evaluate import run_evaluation

        results_dir = args.results_dir or (args.out if args.quick else DEFAULT_RESULTS)
        run_evaluation(args.out, results_dir, n_eval=args.n_eval, n_flow=args.n_flow,
                       flow_backend=args.flow_backend,
                       threads=args.threads or 2, progress=progress)
    return 0
