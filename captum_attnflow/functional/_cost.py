"""Cost model and safety budget of exact attention flow.

Attention flow solves one max-flow problem per (example, explained position, input token) on
a layered graph of ``l·S²`` edges. Before anything is solved, :func:`estimate_flow_cost`
predicts the time and memory of a call for the engine that will run it, and
:func:`check_flow_budget` refuses calls above the budget unless ``allow_large=True``.

Time (numba engine). The engine counts its work in "steps" (an arc examined, an edge added
to or removed from the search path, a node labelled). Measured over a zoo of attention graphs
(random softmax at temperatures 0.5–20, 90 % sparse, real MiniLM attention on short and long
texts; ``residual_weight`` 0 and 0.5; 6–12 layers, 12–256 tokens), a problem took at most
``l·S·(30 + √S)`` steps with the residual connection (``residual_weight >= 0.1``; the closest,
0.8 of it, on 12–25-token MiniLM sentences) and ``l·S·(16 + 5·√S)`` without it (no wide
diagonal: longer searches; at most 0.6 of it). The tests check the engine's counted work against
this bound. A step took 6–12 ns on one quiet core of this project's 2-core CI machine and up to
33 ns with the machine overloaded (load average 9 on 2 cores); the estimate uses 40 ns per step
on half the engine's threads, plus 0.05 s per call. Under that load the estimate stayed 3.8× or
more above the measured time on every graph of the zoo, and it errs on the slow side by 5–30×
on typical attention (the price of covering peaked, residual-free graphs, which take up to 10×
longer than typical ones).

Data-aware estimate. Sizes cannot tell peaked from typical attention, so callers that hold
the graphs may measure the work of 16 sampled problems of the call
(``_maxflow.sample_steps_per_problem``) and pass it as ``steps_per_problem``: the estimate then
uses 3 times that (``SAMPLE_MARGIN``; over 20 seeds on real and random graphs the call's mean
work was at most 1.74 times the sampled one), never more than the size-only bound.

Memory. The batch's fused weights in float32 and float64 (``B·L·S²`` values each, the torch
side of the call), the engine's contiguous float64 copy of the explained layers
(``B·l·S²``), one residual array of ``l·S²`` doubles per engine thread, and the
``(problems/S, S)`` float64 results, counted three times (normalisation and reassembly copies).
"""

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Optional, Sequence, Union

from captum_attnflow._validation import check_flag
from captum_attnflow.exceptions import ProblemTooLargeError
from captum_attnflow.functional import _maxflow

FLOW_TIME_BUDGET_S = 60.0
FLOW_MEMORY_BUDGET_BYTES = 2 * 1024 ** 3

SECONDS_PER_STEP = 40e-9  # numba engine, one thread of an overloaded 2-core machine
CALL_OVERHEAD_S = 0.05  # starting threads, copying the batch
SAMPLE_MARGIN = 3.0  # on work measured on a sample of a call's problems (sampling noise, no shared cuts)
_STEPS = {"residual": (30.0, 1.0), "no residual": (16.0, 5.0)}  # l·S·(base + per_root·√S)
# Per problem, measured the same way (serial engines): scipy's Dinic costs a fixed Python
# overhead plus a pass over the graph per phase; networkx's Edmonds–Karp ~30 µs per edge.
_SCIPY_SECONDS = (4e-4, 8e-8)  # (per problem, per edge)
_NETWORKX_SECONDS_PER_EDGE = 3e-5


@dataclass(frozen=True)
class FlowCost:
    """Estimated cost of an attention-flow call (``seconds`` and peak ``memory_bytes``)."""

    num_problems: int
    num_edges: int
    seconds: float
    memory_bytes: int


def steps_per_problem_bound(num_layers: int, seq_len: int, residual_weight: Optional[float] = None) -> float:
    """Upper estimate of the numba engine's work counters (first + later phases) per problem.

    ``residual_weight=None`` (unknown) assumes the slower residual-free case.
    """
    residual = residual_weight is not None and residual_weight >= 0.1
    base, per_root = _STEPS["residual" if residual else "no residual"]
    return num_layers * seq_len * (base + per_root * math.sqrt(seq_len))


def estimate_flow_cost(num_layers: Union[int, Sequence[int]], seq_len: int, batch_size: int,
                       num_positions: Union[int, Sequence[int]], *, backend: str = "auto", repeats: int = 1,
                       residual_weight: Optional[float] = None,
                       steps_per_problem: Optional[float] = None) -> FlowCost:
    """Estimate time and memory of exact flow for every (example, position, input) problem.

    Args:
        num_layers: graph depth ``l`` (explained layer + 1), or one depth per explained layer.
        seq_len, batch_size: ``S`` and ``B``.
        num_positions: explained positions per example: one count for every example, or a
            sequence of ``B`` counts.
        backend: engine that will run (``"auto"`` is resolved first).
        repeats: solves per problem (2 with causal normalization).
        residual_weight: the residual weight of the graphs, if known (graphs without the
            residual connection take longer; unknown assumes so).
        steps_per_problem: the numba engine's work per problem measured on a sample of the
            call's own problems (:func:`~captum_attnflow.functional._maxflow.sample_steps_per_problem`,
            deepest graph); the estimate then uses ``SAMPLE_MARGIN`` times it (never more than
            the size-only bound) instead of the size-only bound, which covers the slowest
            attention and so errs high by 5–30× on typical attention.

    Example:
        >>> cost = estimate_flow_cost(6, 32, 1, 1)
        >>> cost.num_problems, cost.num_edges
        (32, 6144)
        >>> estimate_flow_cost(6, 32, 8, 1).memory_bytes > 4 * cost.memory_bytes  # counts the batch
        True
    """
    engine = _maxflow.resolve_backend(backend)
    measured_steps = steps_per_problem
    depths = [int(num_layers)] if isinstance(num_layers, (int, Integral)) else [int(d) for d in num_layers]
    positions = (int(num_positions) * batch_size if isinstance(num_positions, (int, Integral))
                 else sum(int(p) for p in num_positions))
    problems_per_depth = positions * seq_len * repeats
    if engine == "numba":
        deepest = max(depths)
        steps = 0.0
        for depth in depths:
            bound = steps_per_problem_bound(depth, seq_len, residual_weight)
            if measured_steps is not None:  # scaled from the deepest graph, where it was measured
                bound = min(bound, SAMPLE_MARGIN * measured_steps * depth / deepest)
            steps += problems_per_depth * bound
        seconds = CALL_OVERHEAD_S + steps * SECONDS_PER_STEP / max(1.0, _maxflow.worker_count() / 2)
    elif engine == "scipy":
        seconds = sum(problems_per_depth * (_SCIPY_SECONDS[0] + _SCIPY_SECONDS[1] * d * seq_len ** 2)
                      for d in depths)
    else:
        seconds = sum(problems_per_depth * _NETWORKX_SECONDS_PER_EDGE * d * seq_len ** 2 for d in depths)
    return FlowCost(num_problems=problems_per_depth * len(depths), num_edges=max(depths) * seq_len ** 2,
                    seconds=seconds, memory_bytes=_memory_bytes(engine, max(depths), seq_len, batch_size, positions))


def _memory_bytes(engine: str, depth: int, seq_len: int, batch_size: int, positions: int) -> int:
    graph = depth * seq_len * seq_len  # values of one example's explained layers
    batch = batch_size * graph * (4 + 8 + 8)  # float32 fused, float64 copy, engine's contiguous copy
    results = 3 * 8 * positions * seq_len
    if engine == "numba":
        per_thread = 8 * graph + 64 * (depth + 1) * seq_len
        solver = per_thread * _maxflow.worker_count()
    elif engine == "scipy":
        solver = 2 * 12 * graph  # CSR graph and scipy's residual copy
    else:
        solver = 400 * graph  # networkx: dicts of dicts, ~400 bytes per edge
    return int(batch + results + solver)


def check_flow_budget(cost: FlowCost, allow_large: bool) -> FlowCost:
    """Refuse problems above the time or memory budget unless ``allow_large=True``."""
    check_flag("allow_large", allow_large)
    if allow_large or (cost.seconds <= FLOW_TIME_BUDGET_S and cost.memory_bytes <= FLOW_MEMORY_BUDGET_BYTES):
        return cost
    raise ProblemTooLargeError(
        f"attention flow would solve {cost.num_problems:,} max-flow problems on graphs of up to "
        f"{cost.num_edges:,} edges: estimated {cost.seconds:,.0f} s and "
        f"{cost.memory_bytes / 1024 ** 2:,.0f} MiB (budget {FLOW_TIME_BUDGET_S:.0f} s, "
        f"{FLOW_MEMORY_BUDGET_BYTES / 1024 ** 2:,.0f} MiB). Pass allow_large=True to run it anyway, "
        "or make it smaller: fewer explained positions (one token_index instead of 'mean' or 'all'), an "
        "earlier layer, shorter inputs or smaller batches; attention rollout is the cheap alternative.")
