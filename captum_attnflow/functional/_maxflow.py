"""Exact max-flow engines for the layered attention graph.

Graph: a node per ``(layer, position)``, layer 0 holding the inputs. ``transitions[k]``
(shape ``(S, S)``) is ``Â_{k+1}``: the edge from node (k+1, i) to node (k, j) has capacity
``transitions[k, i, j]``. One problem = one source on the top layer and one input as sink.

Three engines:

* ``"numba"`` (the default behind ``"auto"``): Dinic's algorithm compiled with numba and
  specialised to the layered graph; see :func:`_one_max_flow`. Capacities and residual
  capacities are dense ``(l, S, S)`` arrays, so there is no graph to build. The search touches
  only what it must: dead ends are skipped in O(1) (:func:`_first_phase`, :func:`_levels`,
  :func:`_blocking_flow`), an augmentation costs O(1), and a minimum cut certified for one
  problem bounds every other problem of the example (:func:`_solve_jobs`), so most problems
  end without a BFS. The problems of a call are split into chunks that the engine's own
  threads solve (numba functions that release the GIL, no numba threading layer), so
  concurrent calls are safe under every numba threading layer and in forked processes.
* ``"scipy"``: :func:`scipy.sparse.csgraph.maximum_flow` (Dinic, compiled) on capacities scaled
  to integers, one graph per example; the fallback when numba cannot be imported.
* ``"networkx"``: the authors' Edmonds–Karp through networkx, one graph per example, for
  reference. Slow (seconds per example).

Exactness of ``"numba"``: arithmetic is float64 and a residual capacity counts as empty when
it is at most ``RESIDUAL_TOLERANCE`` (1e-12). When the search stops, either the flow meets a
cut (a trivial one or, after the last phase, the nodes still reachable through residuals
above the tolerance), whose capacity exceeds the flow by at most
``(edges crossing the cut) * 1e-12 <= l * S**2 * 1e-12`` (6.1e-9 for 6 layers × 32 tokens,
3.1e-6 for 12 × 512), far below the 1e-6 promised for normalised flows on the sizes the tests
cover; the flow itself is feasible up to float rounding.

Exactness of ``"scipy"``: capacities are rounded down to multiples of ``1 / scale`` with
``scale = 2**30 / max(1, largest row sum)``; the value found is a feasible flow of the rounded
graph, below the exact value by at most ``(edges of its minimum cut) / scale`` (S edges when
the cut is the sink's, ``S / 2**30`` = 5e-7 for 512 tokens; at most ``l·S²/scale``).
"""

import itertools
import math
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from typing import List, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.functional.graph import attention_graph

try:  # numba is a declared dependency; the guard keeps the other engines usable without it.
    import numba
    _NUMBA_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    numba = None  # type: ignore[assignment]  # the engines test for None
    _NUMBA_IMPORT_ERROR = error

RESIDUAL_TOLERANCE = 1e-12
SCIPY_SCALE = 2 ** 30

FLOW_BACKENDS = ("auto", "numba", "scipy", "networkx") if numba is not None else ("auto", "scipy", "networkx")

_fallback_warned = False


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names an available engine, else raise with the choices."""
    if not isinstance(backend, str) or backend not in FLOW_BACKENDS:
        raise InvalidParameterError(
            f"backend={backend!r} is not available; use one of {FLOW_BACKENDS} "
            "('auto' picks the fastest exact engine).")
    return backend


def worker_count() -> int:
    """Threads the compiled engine spreads one call over (1 without numba)."""
    return numba.get_num_threads() if numba is not None else 1


def resolve_backend(backend: str) -> str:
    """Map ``"auto"`` to the engine that will actually run (warning once if it is not numba)."""
    check_backend(backend)
    if backend != "auto":
        return backend
    if numba is not None:
        return "numba"
    _warn_fallback()
    return "scipy"


def _warn_fallback() -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    warnings.warn(
        f"captum-attnflow: the compiled flow engine is unavailable because numba cannot be imported "
        f"({_NUMBA_IMPORT_ERROR!r}); attention flow falls back to scipy's integer max-flow, 20-100x "
        "slower and exact only to about 1e-9 per cut edge. Fix: `pip install numba` (a declared "
        "dependency of captum-attnflow) in this environment.", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------- networkx

def networkx_max_flow(transitions: np.ndarray, sources: List[int],
                      valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Reference: one networkx Edmonds–Karp max-flow per (source, input), as the authors did."""
    from networkx.algorithms.flow import edmonds_karp, maximum_flow_value

    num_layers, seq_len, _ = transitions.shape
    graph = attention_graph(transitions)
    flows = np.zeros((len(sources), seq_len))
    for row, position in enumerate(sources):
        for j in range(seq_len):
            if valid is not None and not valid[j]:
                continue
            flows[row, j] = maximum_flow_value(graph, (num_layers, position), (0, j), flow_func=edmonds_karp)
    return flows


# ---------------------------------------------------------------------------- scipy

def scipy_graph(transitions: np.ndarray) -> Tuple[object, float]:
    """The layered graph of one example as scipy's integer CSR matrix, and its scale."""
    from scipy.sparse import csr_matrix

    num_layers, seq_len, _ = transitions.shape
    # Flow through any edge or node is at most the source's out-capacity: keep it in int32.
    scale = math.floor(SCIPY_SCALE / max(1.0, float(transitions.sum(axis=-1).max())))
    layer, rows, cols = np.nonzero(transitions)
    capacities = np.floor(transitions[layer, rows, cols] * scale).astype(np.int32)
    nodes = (num_layers + 1) * seq_len
    graph = csr_matrix((capacities, ((layer + 1) * seq_len + rows, layer * seq_len + cols)), shape=(nodes, nodes))
    graph.eliminate_zeros()
    return graph, scale


def scipy_max_flow(transitions: np.ndarray, sources: List[int], valid: Optional[np.ndarray] = None) -> np.ndarray:
    """One scipy Dinic max-flow per (source, input) on the integer-scaled graph of one example."""
    from scipy.sparse.csgraph import maximum_flow

    num_layers, seq_len, _ = transitions.shape
    graph, scale = scipy_graph(transitions)
    flows = np.zeros((len(sources), seq_len))
    for row, position in enumerate(sources):
        for j in range(seq_len):
            if valid is None or valid[j]:
                flows[row, j] = maximum_flow(graph, num_layers * seq_len + position, j,
                                             method="dinic").flow_value / scale
    return flows


# ---------------------------------------------------------------------------- numba Dinic
# Node (n, a): layer n in 0..l, position a. C = capacity and R = residual capacity of the
# forward edges, both (l, S, S); the flow is C - R. Arcs of a node are numbered 0..2S-1:
#   arc b < S  : forward  (n, a) -> (n-1, b), residual R[n-1, a, b]
#   arc S + b  : backward (n, a) -> (n+1, b), residual C[n, b, a] - R[n, b, a]  (undoing flow)
# Layer 0 is entered only at the sink ``(0, sink)``, so forward arcs from layer 1 lead
# only there; the other inputs are dead ends for this problem.
#
# Work counters (``work``, per solver thread): [0] steps of the first phase (arcs examined,
# edges added to or removed from the path), [1] BFS steps of later phases, [2] later phases
# run, [3] problems whose change log overflowed (R restored in full), [4] blocking-flow steps
# of later phases.

def _log_change(log, logged, state, k, i, j, seq_len):
    """Record residual entry ``(k, i, j)`` as changed, so the next problem resets only the
    entries this one touched; returns the new count. A full log sets ``state[1]``: the whole
    residual array is then reset instead."""
    if logged < log.shape[0]:
        log[logged] = (k * seq_len + i) * seq_len + j
        return logged + 1
    state[1] = 1
    return logged


def _first_phase(capacity, residual, log, state, alive, pointer, path, key, prefix, source, sink, tol, bound,
                 work):
    """Dinic's first phase (a blocking flow of the level graph) from zero flow.

    From zero flow every source-to-sink path of the layered graph has length ``l``, so the
    levels are the layers (no BFS) and no backward arc is admissible. Three devices keep it
    cheap:

    * A node tries its heads from its own column on (the residual edge ``w·I`` makes that
      the widest), wrapping around, rather than from position 0: flow spreads instead of
      piling onto the first positions, halving the augmenting paths on attention graphs.

    * A node found to be a dead end leaves its layer's ``alive`` set: its parents skip it in
      O(1) instead of re-examining the arc (97% of the arc checks of a 12 × 512 graph looked
      at dead ends before).
    * Augmenting costs O(1), not O(l): every edge on the DFS path receives every augmentation
      made while it is on the path, so it keeps ``key = residual when it joined + total sent
      then``; its residual is ``key - sent`` and the path's bottleneck is
      ``min(key) - sent``, a prefix minimum kept as the path grows. Residuals are written
      back to R only when an edge leaves the path.

    Stops once the flow reaches ``bound`` (a cut's capacity). Returns the flow sent.
    """
    # Hot loop: helpers are written out inline, because numba reference-counts every array
    # handed to a helper call, which cost more than the search itself.
    top, seq_len = capacity.shape[0], capacity.shape[1]
    for n in range(top + 1):
        for a in range(seq_len + 1):
            alive[n, a] = a
        for a in range(seq_len):
            pointer[n, a] = a
    sent = 0.0
    steps = 0
    logged = 0
    depth = 0
    path[0] = source
    prefix[0] = math.inf
    while True:
        n = top - depth
        a = path[depth]
        steps += 1
        if n == 0:  # reached the sink: augment by the bottleneck, retreat to it
            sent = prefix[depth]
            if sent >= bound - tol:
                break
            retreat = 0
            while retreat < depth - 1 and key[retreat] > sent + tol:
                retreat += 1
            last = retreat  # edges retreat..depth-1 leave the path: write their residuals back
        else:
            b = seq_len
            available = 0.0
            if n == 1:  # layer 1 leads only to the sink (a one-layer graph)
                if residual[0, a, sink] > tol:
                    b = sink
            else:  # heads from the node's own column on, wrapping around: p in [a, a + S)
                m = n - 1
                p = pointer[n, a]
                available = prefix[depth] - sent  # what the path can still bring to this node
                while True:
                    wrapped = p >= seq_len
                    q = p - seq_len if wrapped else p
                    limit = a if wrapped else seq_len
                    if q < limit:
                        root = q  # first alive position >= q (union-find, path compression)
                        while alive[m, root] != root:
                            root = alive[m, root]
                        while alive[m, q] != root:
                            following = alive[m, q]
                            alive[m, q] = root
                            q = following
                        b = root
                    else:
                        b = limit
                    if b >= limit:
                        b = seq_len
                        if wrapped:
                            p = seq_len + a
                            break
                        p = seq_len
                        continue
                    p = b + seq_len if wrapped else b
                    steps += 1
                    arc = residual[m, a, b]
                    if arc <= tol:
                        p += 1
                        continue
                    if n > 2:
                        break  # descend into b
                    # Layer 2: b's only arc leads to the sink, so push through both edges here,
                    # head after head, instead of one augmenting path each.
                    last_arc = residual[0, b, sink]
                    if last_arc > tol:
                        amount = min(available, arc, last_arc)
                        for k, i, j, before in ((1, a, b, arc), (0, b, sink, last_arc)):
                            if before == capacity[k, i, j]:  # first change of this entry
                                logged = _log_change(log, logged, state, k, i, j, seq_len)
                            residual[k, i, j] = before - amount
                        available -= amount
                        sent += amount
                        if last_arc - amount <= tol:
                            alive[1, b] = b + 1  # b is full
                        if arc - amount <= tol:
                            p += 1
                        if available <= tol or sent >= bound - tol:
                            break
                    else:
                        alive[1, b] = b + 1
                pointer[n, a] = p
                if n == 2:
                    b = seq_len  # never descends
                    if sent >= bound - tol:
                        break
            if b < seq_len:
                key[depth] = residual[top - 1 - depth, a, b] + sent
                prefix[depth + 1] = min(prefix[depth], key[depth])
                path[depth + 1] = b
                depth += 1
                continue
            if n == 2 and available <= tol:  # the path above is full, not this node
                last = 0
                while last < depth - 1 and key[last] > sent + tol:
                    last += 1
            else:
                alive[n, a] = a + 1  # dead end for the rest of this phase
                if depth == 0:
                    break
                last = depth - 1
        for d in range(last, depth):
            k = top - 1 - d
            i, j = path[d], path[d + 1]
            value = key[d] - sent
            before = residual[k, i, j]
            if value != before:
                if before == capacity[k, i, j]:  # first change of this entry
                    logged = _log_change(log, logged, state, k, i, j, seq_len)
                residual[k, i, j] = value
        steps += depth - last
        depth = last
    state[0] = logged
    work[0] += steps
    return sent


def _levels(capacity, residual, level, order, count, rank, unseen, queue_n, queue_a, source, sink, tol, work):
    """BFS levels from the source over residual arcs; False when the sink is unreachable.

    Each layer keeps its not-yet-labelled nodes in a union-find (``unseen``), so expanding a
    node examines only arcs to unlabelled nodes: an examined arc either labels its head or
    is empty. Nodes are listed per layer in BFS order (``order``, ``count``, ``rank``), hence
    sorted by level, which :func:`_blocking_flow` uses to find admissible arcs.
    (Helpers are written out inline: numba reference-counts arrays passed to calls.)
    """
    top = capacity.shape[0]
    seq_len = capacity.shape[1]
    for n in range(top + 1):
        count[n] = 0
        for a in range(seq_len + 1):
            unseen[n, a] = a
        for a in range(seq_len):
            level[n, a] = -1
    level[top, source] = 0
    rank[top, source] = 0
    order[top, 0] = source
    count[top] = 1
    queue_n[0], queue_a[0] = top, source
    head, tail = 0, 1
    steps = 0
    while head < tail:
        n, a = queue_n[head], queue_a[head]
        head += 1
        if level[0, sink] >= 0 and level[n, a] >= level[0, sink]:
            break  # deeper nodes cannot be on a shortest path to the sink
        following = level[n, a] + 1
        if n == 1:
            steps += 1
            if level[0, sink] < 0 and residual[0, a, sink] > tol:
                level[0, sink] = following
                rank[0, sink] = count[0]
                order[0, count[0]] = sink
                count[0] += 1
                queue_n[tail], queue_a[tail] = 0, sink
                tail += 1
        for direction in range(2):  # 0: forward arcs to layer n-1; 1: backward arcs to layer n+1
            m = n - 1 if direction == 0 else n + 1
            if (direction == 0 and n < 2) or (direction == 1 and (n < 1 or m >= top)):
                continue  # layer 0 is entered only at the sink; only the source lives on top
            b = 0
            while True:
                root = b  # first unlabelled position >= b
                while unseen[m, root] != root:
                    root = unseen[m, root]
                while unseen[m, b] != root:
                    following_b = unseen[m, b]
                    unseen[m, b] = root
                    b = following_b
                b = root
                if b >= seq_len:
                    break
                steps += 1
                if direction == 0:
                    open_arc = residual[m, a, b] > tol
                else:
                    open_arc = capacity[n, b, a] - residual[n, b, a] > tol
                if open_arc:
                    unseen[m, b] = b + 1
                    level[m, b] = following
                    rank[m, b] = count[m]
                    order[m, count[m]] = b
                    count[m] += 1
                    queue_n[tail], queue_a[tail] = m, b
                    tail += 1
                b += 1
    work[1] += steps
    return level[0, sink] >= 0


def _level_range(level, order, count, m, wanted):
    """Indices ``[lo, hi)`` of layer m's BFS list whose level is ``wanted`` (binary search)."""
    lo, hi = 0, count[m]
    while lo < hi:
        mid = (lo + hi) // 2
        if level[m, order[m, mid]] < wanted:
            lo = mid + 1
        else:
            hi = mid
    start = lo
    hi = count[m]
    while lo < hi:
        mid = (lo + hi) // 2
        if level[m, order[m, mid]] <= wanted:
            lo = mid + 1
        else:
            hi = mid
    return start, lo


def _blocking_flow(capacity, residual, log, state, level, order, count, rank, alive, cursor, path_n, path_a,
                   path_arc, source, sink, tol, work):
    """Saturate every shortest augmenting path of the BFS level graph (a later Dinic phase).

    Admissible heads of a node at level λ are the nodes at level λ+1 of the layers below
    (forward arcs) and above (backward arcs): a contiguous range of each layer's BFS list.
    Each node keeps a cursor in both ranges (``cursor[0..3]``: forward position and end,
    backward position and end); nodes found to be dead ends leave their layer's ``alive``
    union-find, so they are skipped in O(1). (Helpers written out inline, as in
    :func:`_levels`.)
    """
    top = capacity.shape[0]
    seq_len = capacity.shape[1]
    for n in range(top + 1):
        for x in range(count[n] + 1):
            alive[n, x] = x
        for a in range(seq_len):
            cursor[0, n, a] = -1  # ranges not looked up yet
    logged = state[0]
    depth = 0
    steps = 0
    sent = 0.0
    path_n[0], path_a[0] = top, source
    while True:
        n, a = path_n[depth], path_a[depth]
        steps += 1
        if n == 0:  # reached the sink: augment by the bottleneck, retreat to it
            amount = math.inf
            for d in range(depth):
                tail_n, tail_a, arc = path_n[d], path_a[d], path_arc[d]
                if arc < seq_len:
                    available = residual[tail_n - 1, tail_a, arc]
                else:
                    available = capacity[tail_n, arc - seq_len, tail_a] - residual[tail_n, arc - seq_len, tail_a]
                amount = min(amount, available)
            sent += amount
            retreat = -1
            for d in range(depth):
                tail_n, tail_a, arc = path_n[d], path_a[d], path_arc[d]
                if arc < seq_len:
                    k, i, j = tail_n - 1, tail_a, arc
                    if residual[k, i, j] == capacity[k, i, j]:  # first change of this entry
                        logged = _log_change(log, logged, state, k, i, j, seq_len)
                    residual[k, i, j] -= amount
                    left = residual[k, i, j]
                else:  # cancel flow on (tail_n + 1, b) -> (tail_n, tail_a)
                    k, i, j = tail_n, arc - seq_len, tail_a
                    residual[k, i, j] += amount
                    left = capacity[k, i, j] - residual[k, i, j]
                if retreat < 0 and left <= tol:
                    retreat = d
            steps += 2 * depth
            depth = max(retreat, 0)
            continue
        following = level[n, a] + 1
        if cursor[0, n, a] < 0:
            if n >= 2:
                cursor[0, n, a], cursor[1, n, a] = _level_range(level, order, count, n - 1, following)
            else:  # layer 1 leads only to the sink
                cursor[0, n, a], cursor[1, n, a] = 0, 1 if level[0, sink] == following else 0
            if 1 <= n and n + 1 < top:
                cursor[2, n, a], cursor[3, n, a] = _level_range(level, order, count, n + 1, following)
            else:
                cursor[2, n, a], cursor[3, n, a] = 0, 0
        arc = -1
        if n == 1:
            if cursor[0, n, a] < cursor[1, n, a]:
                steps += 1
                if residual[0, a, sink] > tol:
                    arc = sink
                else:
                    cursor[0, n, a] = cursor[1, n, a]
        for direction in range(2):
            if arc >= 0 or (direction == 0 and n < 2):
                continue
            m = n - 1 if direction == 0 else n + 1
            x = cursor[2 * direction, n, a]
            end = cursor[2 * direction + 1, n, a]
            while x < end:
                root = x  # first alive index >= x of layer m's BFS list
                while alive[m, root] != root:
                    root = alive[m, root]
                while alive[m, x] != root:
                    following_x = alive[m, x]
                    alive[m, x] = root
                    x = following_x
                x = root
                if x >= end:
                    break
                steps += 1
                b = order[m, x]
                if direction == 0:
                    if residual[m, a, b] > tol:
                        arc = b
                        break
                elif capacity[n, b, a] - residual[n, b, a] > tol:
                    arc = seq_len + b
                    break
                x += 1
            cursor[2 * direction, n, a] = x
        if arc >= 0:
            path_arc[depth] = arc
            depth += 1
            if arc < seq_len:
                path_n[depth], path_a[depth] = n - 1, arc
            else:
                path_n[depth], path_a[depth] = n + 1, arc - seq_len
            continue
        alive[n, rank[n, a]] = rank[n, a] + 1  # dead end for the rest of this phase
        if depth == 0:
            break
        depth -= 1
    state[0] = logged
    work[4] += steps
    return sent


def _one_max_flow(capacity, residual, source, sink, bound, tol, log, state, alive, level, pointer, queue, path,
                  key, prefix, order, count, rank, cursor, work):
    """Exact max-flow from (top, source) to (0, sink) by Dinic's algorithm.

    ``bound`` is the capacity of a known cut (the trivial ones, or one found for an earlier
    problem): the search stops once the flow reaches it. The first phase runs on the layers
    (see :func:`_first_phase`) and usually ends the problem. Otherwise later phases use BFS
    levels over forward and backward residual arcs until the flow meets the bound or the
    sink is unreachable; then ``state[2]`` is 1 and ``level >= 0`` marks the source side of
    a minimum cut. ``residual`` must equal ``capacity`` on entry and does again on return.
    """
    seq_len = capacity.shape[1]
    state[0] = 0
    state[1] = 0
    state[2] = 0
    value = 0.0
    if bound > tol:
        value = _first_phase(capacity, residual, log, state, alive, pointer, path[0], key, prefix, source, sink,
                             tol, bound, work)
        while value < bound - tol:
            work[2] += 1
            if not _levels(capacity, residual, level, order, count, rank, alive, queue[0], queue[1], source, sink,
                           tol, work):
                state[2] = 1
                break
            value += _blocking_flow(capacity, residual, log, state, level, order, count, rank, alive, cursor,
                                    path[0], path[1], path[2], source, sink, tol, work)
    if state[1]:
        work[3] += 1
        residual[:, :, :] = capacity
    else:
        for e in range(state[0]):
            entry = log[e]
            k, i, j = entry // (seq_len * seq_len), (entry // seq_len) % seq_len, entry % seq_len
            residual[k, i, j] = capacity[k, i, j]
    return value


def _cut_bound(capacity, cut_top, cut_bottom, cut_inner, c, source, sink):
    """Capacity, for problem (source, sink), of stored cut c (source side ``X``: its layer
    l-1 and layer 1 members and the capacity of its edges between the layers in between)."""
    top, seq_len = capacity.shape[0], capacity.shape[1]
    total = cut_inner[c]
    for j in range(seq_len):
        if not cut_top[c, j]:
            total += capacity[top - 1, source, j]
        if cut_bottom[c, j]:
            total += capacity[0, j, sink]
    return total


def _store_cut(capacity, level, cut_top, cut_bottom, cut_inner, c):
    """Store the source side of the minimum cut the last BFS found (``level >= 0``) as cut c.

    Only its middle (layers 1..l-1) is kept: with the source node and the sink added it is a
    cut of every other (source, sink) problem of the example, whose capacity
    :func:`_cut_bound` evaluates in O(S).
    """
    top, seq_len = capacity.shape[0], capacity.shape[1]
    inner = 0.0
    for k in range(1, top - 1):  # edges (k+1, i) -> (k, j) between middle layers
        for i in range(seq_len):
            if level[k + 1, i] >= 0:
                for j in range(seq_len):
                    if level[k, j] < 0:
                        inner += capacity[k, i, j]
    for j in range(seq_len):
        cut_top[c, j] = level[top - 1, j] >= 0
        cut_bottom[c, j] = level[1, j] >= 0
    cut_inner[c] = inner


def _solve_jobs(capacities, examples, sources, valid, jobs, tol, out, space, work):
    """Solve problems ``jobs`` (indices ``task * S + sink``) into ``out``, on one thread.

    Work shared between the problems of an example: the trivial cuts' capacities, and up to
    ``MAX_CUTS`` minimum cuts found for earlier problems (each is a cut of every problem of
    the example, so a later problem whose flow reaches one is done without a certifying BFS).
    """
    (residual, log, state, alive, level, pointer, queue, path, key, prefix, order, count, rank, cursor,
     out_of_source, into_sink, cut_top, cut_bottom, cut_inner, memo) = space
    top, seq_len = capacities.shape[1], capacities.shape[2]
    max_cuts = cut_inner.shape[0] if top >= 2 else 0
    loaded, stored = memo[0], memo[1]  # kept across chunks: the example ``residual`` holds, cuts stored
    for job in jobs:
        task, sink = job // seq_len, job % seq_len
        example = examples[task]
        if not valid[example, sink]:
            continue
        capacity = capacities[example]
        if example != loaded:
            residual[:, :, :] = capacity
            for i in range(seq_len):
                out_of_source[i] = capacity[top - 1, i].sum()
                into_sink[i] = capacity[0, :, i].sum()
            loaded = example
            stored = 0
        source = sources[task]
        bound = min(out_of_source[source], into_sink[sink])
        for c in range(min(stored, max_cuts)):
            bound = min(bound, _cut_bound(capacity, cut_top, cut_bottom, cut_inner, c, source, sink))
        out[task, sink] = _one_max_flow(capacity, residual, source, sink, bound, tol, log, state, alive, level,
                                        pointer, queue, path, key, prefix, order, count, rank, cursor, work)
        if state[2] and max_cuts > 0:  # a BFS certified a minimum cut below every known bound
            _store_cut(capacity, level, cut_top, cut_bottom, cut_inner, stored % max_cuts)
            stored += 1
    memo[0], memo[1] = loaded, stored


MAX_CUTS = 8


def _workspace(num_layers: int, seq_len: int) -> tuple:
    """Arrays one solver thread reuses across problems (allocating per problem costs more
    than solving: the residual array alone is ``l·S²`` doubles)."""
    nodes = (num_layers + 1) * seq_len
    layers = num_layers + 1
    return (np.empty((num_layers, seq_len, seq_len)),   # residual capacities R
            np.empty(16 * nodes + 1024, np.int64),         # log of changed entries of R
            np.zeros(3, np.int64),                         # log length, overflow flag, cut certified
            np.empty((layers, seq_len + 1), np.int64),     # alive / unseen (union-find per layer)
            np.empty((layers, seq_len), np.int64),         # BFS level
            np.empty((layers, seq_len), np.int64),         # first-phase pointer (current arc)
            np.empty((2, nodes), np.int64),                # BFS queue
            np.empty((3, nodes + 1), np.int64),            # path
            np.empty(num_layers + 1),                      # first phase: key of each path edge
            np.empty(num_layers + 2),                      # first phase: prefix minima of the keys
            np.empty((layers, seq_len), np.int64),         # nodes of each layer in BFS order
            np.empty(layers, np.int64),                    # their count per layer
            np.empty((layers, seq_len), np.int64),         # rank of a node in its layer's BFS order
            np.empty((4, layers, seq_len), np.int64),      # later phases: cursors into level ranges
            np.empty(seq_len),                             # capacity out of each top-layer source
            np.empty(seq_len),                             # capacity into each input
            np.empty((MAX_CUTS, seq_len), np.bool_),       # stored cuts: layer l-1 members
            np.empty((MAX_CUTS, seq_len), np.bool_),       # stored cuts: layer 1 members
            np.empty(MAX_CUTS),                            # stored cuts: capacity between middle layers
            np.array([-1, 0], np.int64))                   # example held in R, cuts stored


if numba is not None:
    _jit = numba.njit(cache=True, nogil=True)
    for _name in ("_log_change", "_first_phase", "_levels", "_level_range", "_blocking_flow", "_one_max_flow",
                  "_cut_bound", "_store_cut", "_solve_jobs"):
        globals()[_name] = _jit(globals()[_name])
    del _name


# ---------------------------------------------------------------------------- threads

PROGRESS_AFTER_S = 2.0  # show_progress=None: a bar appears once a call has run this long

_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_owner = (0, 0)  # (pid, size): a forked child must not reuse its parent's (absent) threads


def _thread_pool(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_owner
    with _pool_lock:
        if _pool is None or _pool_owner != (os.getpid(), size):
            if _pool is not None and _pool_owner[0] == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="captum-attnflow-flow")
            _pool_owner = (os.getpid(), size)
        return _pool


class _Progress:
    """A tqdm bar over the problems of a call: shown from the start (``show=True``), never
    (``False``), or once the call has run ``PROGRESS_AFTER_S`` seconds (``None``)."""

    def __init__(self, total: int, show: Optional[bool]):
        self.total, self.show, self.bar = total, show, None
        self.start = time.monotonic()
        if show:
            self._open(0)

    def _open(self, done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=done, desc="attention flow", unit="max-flow")

    def update_to(self, done: int) -> None:
        if self.bar is None and self.show is None and time.monotonic() - self.start > PROGRESS_AFTER_S:
            self._open(done)
        elif self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.update_to(self.total)
            self.bar.close()


def typical_problem_seconds(num_layers: int, seq_len: int) -> float:
    """Seconds one problem typically takes on one quiet core (about 10·l·S steps of 8 ns);
    sizes the chunks only. The budget's cautious estimate is in ``_cost``."""
    return 10 * num_layers * seq_len * 8e-9


def all_positions(batch_size: int, seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """``examples, positions`` listing every position of every example as a source, in
    order: the ``(B·S, S)`` result of :func:`max_flows_for_tasks` reshapes to ``(B, S, S)``,
    row ``[b, p]`` being the flow from position p of example b to every input.

    Example:
        >>> all_positions(2, 3)
        (array([0, 0, 0, 1, 1, 1]), array([0, 1, 2, 0, 1, 2]))
    """
    return np.repeat(np.arange(batch_size), seq_len), np.tile(np.arange(seq_len), batch_size)


def sample_steps_per_problem(transitions: np.ndarray, examples: ArrayLike, sources: ArrayLike, *,
                             valid: Optional[np.ndarray] = None, samples: int = 16, seed: int = 0) -> float:
    """Mean work (steps) of up to ``samples`` randomly drawn problems of a call, solved alone.

    The data-aware alternative to the cost model's size-only bound (see
    ``_cost.estimate_flow_cost(..., steps_per_problem=...)``): peaked or residual-free
    attention costs up to 10 times typical attention, which sizes alone cannot tell. Each
    sampled problem runs without the cuts other problems would share, so the mean errs high.
    Costs ``samples`` problems (well under 1 % of any call worth budgeting).
    """
    transitions = np.ascontiguousarray(transitions, dtype=np.float64)
    batch_size, num_layers, seq_len, _ = transitions.shape
    examples = np.asarray(examples, dtype=np.int64)
    sources = np.asarray(sources, dtype=np.int64)
    valid = np.ones((batch_size, seq_len), dtype=bool) if valid is None else np.ascontiguousarray(valid, dtype=bool)
    jobs = np.flatnonzero(valid[examples].ravel()).astype(np.int64)
    if len(jobs) == 0 or numba is None:
        return 0.0
    picked = np.random.default_rng(seed).choice(jobs, size=min(samples, len(jobs)), replace=False)
    work = np.zeros(5, np.int64)
    out = np.zeros((len(sources), seq_len))
    for job in picked:  # a fresh workspace each: no cut shared between the samples
        _solve_jobs(transitions, examples, sources, valid, picked[picked == job], RESIDUAL_TOLERANCE, out,
                    _workspace(num_layers, seq_len), work)
    return float(work[0] + work[1] + work[4]) / len(picked)


def _numba_flows(capacities, examples, sources, valid, *, show_progress, work):
    num_layers, seq_len = capacities.shape[1], capacities.shape[2]
    out = np.zeros((len(sources), seq_len))
    jobs = np.flatnonzero(valid[examples].ravel()).astype(np.int64)
    if len(jobs) == 0:
        return out
    per_problem = typical_problem_seconds(num_layers, seq_len)
    # Chunks of 1-50 ms, about four per thread: threads pull them as they go (balance) and
    # the bar moves with them. A call under 10 ms runs on the calling thread alone: on a busy
    # machine a second thread may be scheduled milliseconds late, and the call waits for it.
    workers = worker_count()
    smallest, largest = max(4, int(1e-3 / per_problem)), max(16, int(0.05 / per_problem))
    chunk_size = min(max(smallest, -(-len(jobs) // (4 * workers))), largest)
    threads = min(workers, -(-len(jobs) // chunk_size))
    if threads <= 1 or len(jobs) * per_problem < 1e-2:
        threads = 1
        chunk_size = len(jobs) if show_progress is False else largest
    chunks = [jobs[start:start + chunk_size] for start in range(0, len(jobs), chunk_size)]
    progress = _Progress(len(jobs), show_progress)
    tol = RESIDUAL_TOLERANCE
    try:
        if threads <= 1:
            space = _workspace(num_layers, seq_len)
            done = 0
            for chunk in chunks:
                _solve_jobs(capacities, examples, sources, valid, chunk, tol, out, space, work)
                done += len(chunk)
                progress.update_to(done)
        else:
            _solve_on_threads(capacities, examples, sources, valid, chunks, tol, out, threads, progress, work)
    finally:
        progress.close()
    return out


def _solve_on_threads(capacities, examples, sources, valid, chunks, tol, out, threads, progress, work):
    """The calling thread and ``threads - 1`` pool threads pull chunks from a shared counter.

    The solver releases the GIL (``nogil``), so the threads run in parallel; no numba
    threading layer is involved, hence no workqueue abort when several calls overlap. The
    calling thread works too (one hand-off fewer, which matters for calls of a millisecond)
    and moves the progress bar between its chunks and while it waits for the others.
    """
    next_chunk = itertools.count()  # next() is atomic under the GIL
    done = np.zeros(threads, np.int64)  # problems finished, one slot per thread
    works = np.zeros((threads, len(work)), np.int64)
    stop = threading.Event()  # set if the caller is interrupted: threads stop after their chunk

    def run(thread: int) -> None:
        space = _workspace(capacities.shape[1], capacities.shape[2])
        for index in iter(lambda: next(next_chunk), None):
            if index >= len(chunks) or stop.is_set():
                return
            _solve_jobs(capacities, examples, sources, valid, chunks[index], tol, out, space, works[thread])
            done[thread] += len(chunks[index])
            if thread == 0:
                progress.update_to(int(done.sum()))

    pool = _thread_pool(worker_count())
    futures = [pool.submit(run, thread) for thread in range(1, threads)]
    try:
        run(0)
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.1)
            for future in finished:
                future.result()  # re-raise a worker's error here
            progress.update_to(int(done.sum()))
    except BaseException:
        stop.set()
        raise
    work += works.sum(axis=0)


# ---------------------------------------------------------------------------- entry points

def max_flows_for_tasks(transitions: np.ndarray, examples: ArrayLike, sources: ArrayLike, *,
                        valid: Optional[np.ndarray] = None, backend: str = "auto",
                        show_progress: Optional[bool] = None, work: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact max-flow values for a list of problems, ``(T, S)``.

    Args:
        transitions: ``(B, l, S, S)`` capacities, ``transitions[b, k] = Â_{k+1}`` of example b.
        examples, sources: length-T: problem t sends flow from node ``(l, sources[t])`` of
            example ``examples[t]`` to every input. For every position of an example
            (``token_index="all"``), list each position of it once.
        valid: ``(B, S)`` bool, real tokens; flows to other inputs are left at 0.
        backend: ``"auto"``, ``"numba"``, ``"scipy"`` or ``"networkx"``.
        show_progress: ``None`` shows a tqdm progress bar once the call has run for 2 s
            (``PROGRESS_AFTER_S``); ``True``/``False`` force it on or off. The bar advances as
            chunks of problems finish (numba engine).
        work: optional int64 array of 5 counters the numba engine adds its work to (steps of
            the first phase, BFS steps of later phases, later phases run, change-log
            overflows, blocking-flow steps of later phases); for the cost model and tests.
    """
    engine = resolve_backend(backend)
    if show_progress is not None and not isinstance(show_progress, bool):
        raise InvalidParameterError(f"show_progress must be None (automatic), True or False, got {show_progress!r}.")
    batch_size, num_layers, seq_len, _ = transitions.shape
    examples = np.asarray(examples, dtype=np.int64)
    sources = np.asarray(sources, dtype=np.int64)
    valid = np.ones((batch_size, seq_len), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if engine == "numba":
        return _numba_flows(np.ascontiguousarray(transitions, dtype=np.float64), examples, sources,
                            np.ascontiguousarray(valid), show_progress=show_progress,
                            work=np.zeros(5, np.int64) if work is None else work)
    solve = scipy_max_flow if engine == "scipy" else networkx_max_flow
    flows = np.zeros((len(sources), seq_len))
    for example in np.unique(examples):
        rows = np.flatnonzero(examples == example)
        graph = np.ascontiguousarray(transitions[example], dtype=np.float64)
        flows[rows] = solve(graph, sources[rows].tolist(), valid[example])
    return flows


def max_flow_to_inputs(transitions: np.ndarray, sources: List[int], *,
                       valid: Optional[np.ndarray] = None, backend: str = "auto", **options) -> np.ndarray:
    """``(len(sources), S)`` exact max-flow values from each top-layer source of one example."""
    return max_flows_for_tasks(transitions[None], np.zeros(len(sources), dtype=np.int64), list(sources),
                               valid=None if valid is None else np.asarray(valid)[None], backend=backend,
                               **options)
