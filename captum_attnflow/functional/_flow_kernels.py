"""The compiled kernels of the ``"numba"`` flow engine: Dinic's algorithm on the layered graph.

Node (n, a): layer n in 0..l, position a. C = capacity and R = residual capacity of the
forward edges, both (l, S, S); the flow is C - R. Arcs of a node are numbered 0..2S-1:

* arc b < S: forward (n, a) -> (n-1, b), residual R[n-1, a, b];
* arc S + b: backward (n, a) -> (n+1, b), residual C[n, b, a] - R[n, b, a] (undoing flow).

Layer 0 is entered only at the sink ``(0, sink)``, so forward arcs from layer 1 lead only
there; the other inputs are dead ends for this problem.

Every kernel is compiled with ``numba.njit(cache=True, nogil=True)`` by :func:`compiled`
(the nogil lets the driver's threads run them in parallel); without numba they stay plain
Python functions, which the driver never calls (it falls back to scipy), so this module
imports either way. The driver (threads, chunks, progress) is
:mod:`captum_attnflow.functional._maxflow`.
"""

import math
from typing import NamedTuple

import numpy as np

try:  # numba is a declared dependency; without it the kernels stay plain Python (unused).
    import numba
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    numba = None  # type: ignore[assignment]


def compiled(function):
    """``function`` compiled by numba (cached on disk, releasing the GIL), or as it is without numba."""
    if numba is None:  # pragma: no cover - exercised in a subprocess by the tests
        return function
    return numba.njit(cache=True, nogil=True)(function)


def compiled_inline(function):
    """:func:`compiled`, and inlined into its callers: a compiled call reference-counts every
    array it is handed (the workspace's 20), which costs more than a small problem's search."""
    if numba is None:  # pragma: no cover - exercised in a subprocess by the tests
        return function
    return numba.njit(cache=True, nogil=True, inline="always")(function)


# Work counters (``work``, one int64 array of WORK_COUNTERS per solver thread): the cost
# model's and the tests' measure of the engine's work.
FIRST_PHASE_STEPS = 0  # arcs examined, edges added to or removed from the search path
BFS_STEPS = 1  # BFS steps of later phases
LATER_PHASES = 2  # later phases run
FULL_RESETS = 3  # problems whose change log overflowed (R restored in full)
BLOCKING_STEPS = 4  # blocking-flow steps of later phases
WORK_COUNTERS = 5

# ``Workspace.state``: per problem.
LOG_LENGTH = 0  # entries of R recorded in ``change_log``
LOG_FULL = 1  # 1 once the log overflowed: R is then reset in full
CUT_FOUND = 2  # 1 when the last BFS certified a minimum cut (``level >= 0`` marks its source side)

# ``Workspace.held``: kept across the chunks a thread solves.
HELD_EXAMPLE = 0  # the example whose capacities ``residual`` holds (-1: none)
HELD_CUTS = 1  # minimum cuts stored for that example so far

MAX_CUTS = 8  # minimum cuts stored per example (each bounds every other problem of it)


class Workspace(NamedTuple):
    """Arrays one solver thread reuses across problems (allocating per problem costs more
    than solving: the residual array alone is ``l·S²`` doubles). A named tuple, so the
    compiled kernels read its fields by name."""

    # The flow of the current problem.
    residual: np.ndarray  # (l, S, S) residual capacities R; equals the capacities between problems
    change_log: np.ndarray  # flat indices of the entries of R the problem changed (reset after it)
    state: np.ndarray  # (3,) LOG_LENGTH, LOG_FULL, CUT_FOUND
    # First phase (and the union-find of dead ends, shared with later phases).
    alive: np.ndarray  # (l+1, S+1) per layer: first alive (or unlabelled) index >= a
    pointer: np.ndarray  # (l+1, S) current arc of each node
    path: np.ndarray  # (3, nodes+1) search path: node positions (first phase); layer, position, arc (later)
    key: np.ndarray  # (l+1,) residual of each path edge when it joined + flow sent then
    prefix: np.ndarray  # (l+2,) prefix minima of ``key``
    # Later phases: BFS levels and level-sorted lists.
    level: np.ndarray  # (l+1, S) BFS level of each node (-1: unreached)
    queue: np.ndarray  # (2, nodes) BFS queue: layers, positions
    order: np.ndarray  # (l+1, S) nodes of each layer in BFS order
    counts: np.ndarray  # (l+1,) their count per layer
    rank: np.ndarray  # (l+1, S) rank of a node in its layer's BFS order
    cursor: np.ndarray  # (4, l+1, S) per node: forward position and end, backward position and end
    # Shared by the problems of one example.
    out_of_source: np.ndarray  # (S,) capacity out of each top-layer source
    into_sink: np.ndarray  # (S,) capacity into each input
    cut_top: np.ndarray  # (MAX_CUTS, S) stored cuts: their layer l-1 members
    cut_bottom: np.ndarray  # (MAX_CUTS, S) stored cuts: their layer 1 members
    cut_inner: np.ndarray  # (MAX_CUTS,) stored cuts: capacity between the middle layers
    held: np.ndarray  # (2,) HELD_EXAMPLE, HELD_CUTS


def new_workspace(num_layers: int, seq_len: int) -> Workspace:
    """A :class:`Workspace` for graphs of ``num_layers`` layers of ``seq_len`` positions."""
    nodes = (num_layers + 1) * seq_len
    layers = num_layers + 1
    return Workspace(
        residual=np.empty((num_layers, seq_len, seq_len)),
        change_log=np.empty(16 * nodes + 1024, np.int64),
        state=np.zeros(3, np.int64),
        alive=np.empty((layers, seq_len + 1), np.int64),
        pointer=np.empty((layers, seq_len), np.int64),
        path=np.empty((3, nodes + 1), np.int64),
        key=np.empty(num_layers + 1),
        prefix=np.empty(num_layers + 2),
        level=np.empty((layers, seq_len), np.int64),
        queue=np.empty((2, nodes), np.int64),
        order=np.empty((layers, seq_len), np.int64),
        counts=np.empty(layers, np.int64),
        rank=np.empty((layers, seq_len), np.int64),
        cursor=np.empty((4, layers, seq_len), np.int64),
        out_of_source=np.empty(seq_len),
        into_sink=np.empty(seq_len),
        cut_top=np.empty((MAX_CUTS, seq_len), np.bool_),
        cut_bottom=np.empty((MAX_CUTS, seq_len), np.bool_),
        cut_inner=np.empty(MAX_CUTS),
        held=np.array([-1, 0], np.int64))


@compiled
def _log_change(log, logged, state, k, i, j, seq_len):
    """Record residual entry ``(k, i, j)`` as changed, so the next problem resets only the
    entries this one touched; returns the new count. A full log sets ``state[LOG_FULL]``: the whole
    residual array is then reset instead."""
    if logged < log.shape[0]:
        log[logged] = (k * seq_len + i) * seq_len + j
        return logged + 1
    state[LOG_FULL] = 1
    return logged


@compiled
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
    state[LOG_LENGTH] = logged
    work[FIRST_PHASE_STEPS] += steps
    return sent


@compiled
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
    work[BFS_STEPS] += steps
    return level[0, sink] >= 0


@compiled
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


@compiled
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
    logged = state[LOG_LENGTH]
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
    state[LOG_LENGTH] = logged
    work[BLOCKING_STEPS] += steps
    return sent


@compiled_inline
def _one_max_flow(capacity, space, source, sink, bound, tol, work):
    """Exact max-flow from (top, source) to (0, sink) by Dinic's algorithm.

    ``bound`` is the capacity of a known cut (the trivial ones, or one found for an earlier
    problem): the search stops once the flow reaches it. The first phase runs on the layers
    (see :func:`_first_phase`) and usually ends the problem. Otherwise later phases use BFS
    levels over forward and backward residual arcs until the flow meets the bound or the
    sink is unreachable; then ``state[CUT_FOUND]`` is 1 and ``level >= 0`` marks the source
    side of a minimum cut. ``space.residual`` must equal ``capacity`` on entry and does again
    on return (only the logged entries are reset, unless the log overflowed).
    """
    seq_len = capacity.shape[1]
    residual, log, state, alive, path = space.residual, space.change_log, space.state, space.alive, space.path
    state[LOG_LENGTH] = 0
    state[LOG_FULL] = 0
    state[CUT_FOUND] = 0
    value = 0.0
    if bound > tol:
        value = _first_phase(capacity, residual, log, state, alive, space.pointer, path[0], space.key, space.prefix,
                             source, sink, tol, bound, work)
        while value < bound - tol:
            work[LATER_PHASES] += 1
            if not _levels(capacity, residual, space.level, space.order, space.counts, space.rank, alive,
                           space.queue[0], space.queue[1], source, sink, tol, work):
                state[CUT_FOUND] = 1
                break
            value += _blocking_flow(capacity, residual, log, state, space.level, space.order, space.counts,
                                    space.rank, alive, space.cursor, path[0], path[1], path[2], source, sink, tol,
                                    work)
    if state[LOG_FULL]:
        work[FULL_RESETS] += 1
        residual[:, :, :] = capacity
    else:
        for e in range(state[LOG_LENGTH]):
            entry = log[e]
            k, i, j = entry // (seq_len * seq_len), (entry // seq_len) % seq_len, entry % seq_len
            residual[k, i, j] = capacity[k, i, j]
    return value


@compiled
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


@compiled
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


@compiled
def solve_jobs(capacities, examples, sources, valid, jobs, tol, out, work, *workspace):
    """Solve problems ``jobs`` (indices ``task * S + sink``) into ``out``, on one thread.

    ``capacities`` is ``(B, l, S, S)``; problem ``task`` sends flow from node
    ``(l, sources[task])`` of example ``examples[task]``; ``work`` holds this thread's
    counters and ``workspace`` its :class:`Workspace`, passed spread (``*space``): numba
    dispatches a call on separate arrays in half the time it takes for a named tuple (5 vs
    10 µs, a tenth of a call of 6 layers × 16 tokens). Work shared between the problems of an
    example: the trivial cuts' capacities, and up to ``MAX_CUTS`` minimum cuts found for
    earlier problems (each is a cut of every problem of the example, so a later problem whose
    flow reaches one is done without a certifying BFS).
    """
    space = Workspace(*workspace)
    residual, out_of_source, into_sink = space.residual, space.out_of_source, space.into_sink
    cut_top, cut_bottom, cut_inner = space.cut_top, space.cut_bottom, space.cut_inner
    top, seq_len = capacities.shape[1], capacities.shape[2]
    max_cuts = cut_inner.shape[0] if top >= 2 else 0
    loaded, stored = space.held[HELD_EXAMPLE], space.held[HELD_CUTS]  # kept across chunks
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
        out[task, sink] = _one_max_flow(capacity, space, source, sink, bound, tol, work)
        if space.state[CUT_FOUND] and max_cuts > 0:  # a BFS certified a minimum cut below every known bound
            _store_cut(capacity, space.level, cut_top, cut_bottom, cut_inner, stored % max_cuts)
            stored += 1
    space.held[HELD_EXAMPLE], space.held[HELD_CUTS] = loaded, stored
