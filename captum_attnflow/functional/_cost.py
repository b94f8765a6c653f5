"""Cost model and safety budget of exact attention flow.

Attention flow solves one max-flow problem per (example, explained position, input token) on
a layered graph of ``l·S²`` edges. Before anything is solved, :func:`estimate_flow_cost`
predicts the time and memory of a call for the engine that will run it, and
:func:`check_flow_budget` refuses calls above the budget unless ``allow_large=True``.
"""

from dataclasses import dataclass
from numbers import Integral
from typing import Sequence, Union

from captum_attnflow._validation import check_flag
from captum_attnflow.exceptions import ProblemTooLargeError
from captum_attnflow.functional import _maxflow

FLOW_TIME_BUDGET_S = 60.0
FLOW_MEMORY_BUDGET_BYTES = 2 * 1024 ** 3

# Seconds per "edge visit" on one core: a problem on an l·S² graph visits about that many
# edges per Dinic phase, and attention graphs need one or two phases. Calibrated on this
# project's 2-core 2.x GHz CI machine (docs/benchmarks.md) and rounded up, so estimates err
# on the slow side.
_SECONDS_PER_EDGE_VISIT = {"numba": 2e-9, "networkx": 8e-6}
_PHASES = 2


@dataclass(frozen=True)
class FlowCost:
    """Estimated cost of an attention-flow call (``seconds`` and peak ``memory_bytes``)."""

    num_problems: int
    num_edges: int
    seconds: float
    memory_bytes: int


def estimate_flow_cost(num_layers: Union[int, Sequence[int]], seq_len: int, batch_size: int,
                       num_positions: int, *, backend: str = "auto", repeats: int = 1) -> FlowCost:
    """Estimate time and memory of exact flow for every (example, position, input) problem.

    Args:
        num_layers: graph depth ``l`` (explained layer + 1), or one depth per explained layer.
        seq_len, batch_size, num_positions: ``S``, ``B`` and explained positions per example.
        backend: engine that will run (``"auto"`` is resolved first).
        repeats: extra solves per problem (2 with causal normalization).

    Example:
        >>> cost = estimate_flow_cost(6, 32, 1, 1)
        >>> cost.num_problems, cost.num_edges
        (32, 6144)
    """
    engine = _maxflow.resolve_backend(backend)
    depths = [int(num_layers)] if isinstance(num_layers, Integral) else [int(d) for d in num_layers]
    problems_per_depth = batch_size * num_positions * seq_len * repeats
    visits = sum(problems_per_depth * _PHASES * depth * seq_len * seq_len for depth in depths)
    workers = _maxflow.worker_count()
    cores = workers if engine == "numba" else 1  # networkx runs serially
    largest = max(depths) * seq_len * seq_len
    # numba keeps one capacity array per example plus a flow array per concurrent problem.
    per_problem_arrays = 2 if engine == "numba" else 40  # networkx: ~40 bytes/edge of dicts
    memory = largest * 8 * (batch_size + per_problem_arrays * workers)
    return FlowCost(num_problems=problems_per_depth * len(depths), num_edges=largest,
                    seconds=visits * _SECONDS_PER_EDGE_VISIT[engine] / cores, memory_bytes=int(memory))


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
        "or make it smaller: fewer explained positions (one token_index instead of 'mean'), an "
        "earlier layer, shorter inputs or smaller batches; attention rollout is the cheap alternative.")



def typical_problem_seconds(num_layers: int, seq_len: int) -> float:
    """Seconds one problem typically takes on one core (chunk sizing only, not the budget)."""
    return 30 * num_layers * seq_len * 8e-9
