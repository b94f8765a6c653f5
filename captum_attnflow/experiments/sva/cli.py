"""Command line: train the models, evaluate the correlations, write the report.

Every option is checked before any work starts (a bad value fails in a second, not after
training).
"""

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from captum_attnflow.experiments.sva.data import find_data_dir
from captum_attnflow.experiments.sva.protocol import PROTOCOLS
from captum_attnflow.experiments.sva.report import write_report
from captum_attnflow.experiments.sva.runs import RUN_NAME, RunData, evaluate_run, load_run, run_dir, train_run
from captum_attnflow.experiments.sva.train import CHECKPOINT_NAME, TrainSettings
from captum_attnflow.functional import FLOW_BACKENDS

PROG = "python -m captum_attnflow.experiments.sva"
DEFAULT_OUT = Path("runs/sva")
COMMANDS = ("train", "evaluate", "report", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Reproduce Tables 1-2 of Abnar & Zuidema (2020) on models trained here, under the "
                               "authors' protocol and under this library's (see protocol.py).")
    parser.add_argument("command", choices=COMMANDS,
                        help="train models, evaluate them, write the report from evaluated runs, or all three")
    parser.add_argument("--protocol", choices=(*PROTOCOLS, "both"), default="both",
                        help="which protocol's models and evaluation (default: both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds (default: 0 1 2); the data split is the same for every seed")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models on a few hundred examples (seconds; for tests and CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="checkpoints and per-example results, OUT/<protocol>/seed<k>/ (default: runs/sva)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where sva.md, the CSVs and the figure go (default: OUT/results; the committed "
                             "files are written only when this names docs/results)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder of the numpred.* files (default: $CAPTUM_ATTNFLOW_SVA_DATA, else the "
                             "clone's data/linzen_sva)")
    parser.add_argument("--n-eval", type=int, default=None,
                        help="evaluate the first N held-out examples only (default: all of them)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 8; 1 with --quick)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="stop training a model after this many minutes (default: no limit)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--flow-backend", choices=FLOW_BACKENDS, default="auto",
                        help="max-flow engine for attention flow (default: auto, the compiled exact engine)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the confidence intervals (default: 1000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def protocols_of(args: argparse.Namespace) -> List[str]:
    return list(PROTOCOLS) if args.protocol == "both" else [args.protocol]


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject every bad option before any work (argparse's error: usage, message, exit code 2)."""
    for name in ("n_eval", "epochs", "threads", "bootstrap"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be a positive number of minutes, got {args.time_budget}.")
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct non-negative integers, got {args.seeds}.")
    if args.command != "report":
        try:
            find_data_dir(args.data_dir)
        except FileNotFoundError as error:
            parser.error(str(error))
    needed = {"evaluate": CHECKPOINT_NAME, "report": RUN_NAME}.get(args.command)
    if needed:
        missing = [str(run_dir(args.out, p, s) / needed) for p in protocols_of(args) for s in args.seeds
                   if not (run_dir(args.out, p, s) / needed).is_file()]
        if missing:
            parser.error(f"{args.command} needs {missing[0]} (and {len(missing) - 1} more); run "
                         f"`{PROG} {'train' if needed == CHECKPOINT_NAME else 'evaluate'}` first with the same "
                         "--out, --protocol and --seeds.")
    results_dir = results_dir_of(args)
    if results_dir.exists() and not results_dir.is_dir():
        parser.error(f"--results-dir {results_dir} exists and is not a folder.")


def results_dir_of(args: argparse.Namespace) -> Path:
    return args.results_dir if args.results_dir is not None else args.out / "results"


def settings_of(args: argparse.Namespace, protocol: str, seed: int) -> TrainSettings:
    settings = TrainSettings.for_protocol(protocol, seed, quick=args.quick)
    settings.threads = args.threads
    if args.epochs is not None:
        settings.epochs = args.epochs
    if args.time_budget is not None:
        settings.time_budget_s = args.time_budget * 60
    return settings


def command_line(argv: Sequence[str]) -> str:
    return " ".join([PROG, *map(shlex.quote, argv)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(argv) if argv is not None else None
    args = parser.parse_args(argv)
    validate(parser, args)
    progress = not args.no_progress
    for protocol in protocols_of(args):
        for seed in args.seeds:
            if args.command in ("train", "all"):
                log = train_run(settings_of(args, protocol, seed), args.out, data_dir=args.data_dir,
                                progress=progress)
                print(json.dumps({"protocol": protocol, "seed": seed, "train_time_s": round(log["train_time_s"], 1),
                                  "validation_accuracy": log["epochs"][-1]["validation_accuracy"]}))
            if args.command in ("evaluate", "all"):
                run = evaluate_run(run_dir(args.out, protocol, seed), data_dir=args.data_dir, n_eval=args.n_eval,
                                   flow_backend=args.flow_backend, threads=args.threads, progress=progress)
                print(json.dumps({"protocol": protocol, "seed": seed, "eval_time_s": round(run.eval_time_s, 1)}))
    if args.command in ("report", "all"):
        runs: Dict[str, List[RunData]] = {protocol: [load_run(run_dir(args.out, protocol, seed)) for seed in args.seeds]
                                          for protocol in protocols_of(args)}
        shown = argv if argv is not None else sys.argv[1:]
        write_report(runs, results_dir_of(args), command=command_line(shown), n_resamples=args.bootstrap)
        print(f"wrote {results_dir_of(args) / 'sva.md'}")
    return 0

