"""Command line: ``python -m captum_attnflow.experiments.faithfulness [--quick] [--tasks ...] [--seeds ...]``.

Trains (or loads) each task's model per seed, scores every method, stores the per-example
values under ``--out`` and writes the report to ``--results-dir``. ``--report-only`` rebuilds
the report from stored values. Options are checked before any work starts.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from captum_attnflow.evaluation.metrics import AOPC_BINS
from captum_attnflow.experiments.faithfulness.methods import EDGE_WEIGHTS, method_names, supported_edge_weights
from captum_attnflow.experiments.faithfulness.report import write_report
from captum_attnflow.experiments.faithfulness.run import TaskResult, evaluate_task
from captum_attnflow.experiments.faithfulness.tasks import TASKS, SvaScale, build_task, load_minilm

PROG = "python -m captum_attnflow.experiments.faithfulness"
#: Examples explained per task and seed in the full run / in --quick.
EXAMPLES = {"sva": 200, "minilm": 50, "vit": 200}
QUICK_EXAMPLES = 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Faithfulness table (AOPC, blank-out Spearman, parameter randomisation) of attention "
                               "rollout and flow under each edge weighting, on an SVA classifier, MiniLM similarity "
                               "and a ViT on digits.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-initialised models, a few examples, 2 seeds (seconds; tests and smoke runs)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="default: all three")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training seeds (SVA, ViT) / sentence samples (MiniLM); default 0 1 2 (0 1 with --quick)")
    parser.add_argument("--examples", type=int, default=None,
                        help=f"examples per task and seed (default {EXAMPLES}; {QUICK_EXAMPLES} with --quick)")
    parser.add_argument("--edge-weights", nargs="+", choices=EDGE_WEIGHTS, default=None,
                        help="edge weightings of rollout and flow (default: every one this library version offers)")
    parser.add_argument("--vit-epochs", type=int, default=20, help="ViT training epochs (default 20)")
    parser.add_argument("--sva-subset", type=int, default=SvaScale.subset,
                        help=f"SVA: examples kept before the split (default {SvaScale.subset})")
    parser.add_argument("--out", type=Path, default=Path("runs/faithfulness"),
                        help="per-example values, one .npz/.json per task and seed, and the trained models in "
                             "OUT/models (reused when present: delete them to retrain) (default runs/faithfulness)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where faithfulness.md/.csv/.png go (default OUT/results)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the values in --out")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("examples", "threads", "bootstrap", "vit_epochs", "sva_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    offered = supported_edge_weights()
    missing = [w for w in (args.edge_weights or ()) if w not in offered]
    if missing:
        parser.error(f"--edge-weights {' '.join(missing)}: this version of the library offers only {offered}")


def deviations(args: argparse.Namespace) -> List[str]:
    if args.quick:
        return ["--quick: tiny models (SVA: 2 layers on 400 examples; MiniLM replaced by a random 2-layer BERT; "
                "ViT: 2 layers on 256 images, 2 epochs) and a few examples: a smoke test of the pipeline, "
                "not a result."]
    scale = SvaScale()
    texts = [
        f"SVA models are trained at a reduced scale to fit the CPU budget: a stratified subset of {args.sva_subset} "
        f"of the ~80k Linzen prefixes ({scale.n_test} held out, {scale.n_validation} validation), {scale.num_layers} "
        f"layers, {scale.num_heads} heads, hidden size {scale.hidden_size}, {scale.epochs} epoch (the SVA experiment: "
        "all data, 6 layers, 8 heads, hidden 128, 8 epochs). Their accuracy is below the full models' (see Models).",
        "MiniLM is pretrained, so its 'seeds' are not training runs: seed k draws a different random sample of "
        "sentences A (numpy default_rng(k)) from a pool of lower-case Wikipedia prefixes of 8-16 words "
        "(`numpred.val` of the SVA data); sentence B is A's nearest neighbour in the pool by MiniLM cosine, fixed "
        "given A. Examples therefore differ between MiniLM seeds; the interval still resamples seeds and examples.",
        f"The ViT is the tutorial's (4 layers, 4 heads, hidden 64, 16x16 digits in 4x4 patches), trained "
        f"{args.vit_epochs} epochs per seed on a fixed 1500/297 split.",
    ]
    return texts


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    quick = args.quick
    seeds = args.seeds or ([0, 1] if quick else [0, 1, 2])
    results_dir = args.results_dir or args.out / "results"
    command = PROG + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.report_only:
        stored = [TaskResult.load(path.with_suffix("")) for path in sorted(args.out.glob("*_seed*.json"))]
        results = sorted((r for r in stored if r.task in args.tasks and r.seed in seeds),
                         key=lambda r: (TASKS.index(r.task), r.seed))
        if not results:
            print(f"{PROG}: no stored results in {args.out}; run without --report-only first", file=sys.stderr)
            return 2
    else:
        results = []
        edge_weights = args.edge_weights or supported_edge_weights()
        if edge_weights == ("attention",):
            print("note: this library version offers only edge_weights='attention'", file=sys.stderr)
        methods = method_names(edge_weights)
        minilm = load_minilm(tiny=quick) if "minilm" in args.tasks else None
        jobs = [(task, seed) for task in args.tasks for seed in seeds]
        for task_name, seed in tqdm(jobs, desc="tasks x seeds", disable=args.no_progress):
            tick, cpu_tick = time.perf_counter(), time.process_time()
            n_examples = args.examples or (QUICK_EXAMPLES if quick else EXAMPLES[task_name])
            options = {"sva": {"scale": SvaScale(subset=args.sva_subset), "cache_dir": args.out / "models"},
                       "minilm": {"loaded": minilm},
                       "vit": {"epochs": args.vit_epochs, "cache_dir": args.out / "models"}}[task_name]
            task = build_task(task_name, seed, n_examples, quick=quick, **options)
            result = evaluate_task(task, methods, bins=AOPC_BINS, progress=not args.no_progress)
            result.info["total_s"] = time.perf_counter() - tick
            result.info["cpu_s"] = time.process_time() - cpu_tick
            result.save(args.out)
            results.append(result)
    path = write_report(results, results_dir, command=command, n_resamples=args.bootstrap, bins=AOPC_BINS,
                        deviations=deviations(args), times=None if args.report_only else
                        (time.perf_counter() - start, time.process_time() - cpu_start))
    print(f"report: {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return run(args)
