"""Exact max-flow engines for the layered attention graph: choosing one, and the compiled
engine's driver (threads, chunks, progress bar).

Graph: a node per ``(layer, position)``, layer 0 holding the inputs. ``transitions[k]``
(shape ``(S, S)``) is ``Â_{k+1}``: the edge from node (k+1, i) to node (k, j) has capacity
``transitions[k, i, j]``. One problem = one source on the top layer and one input as sink.

Three engines:

* ``"numba"`` (the default behind ``"auto"``): Dinic's algorithm compiled with numba and
  specialised to the layered graph, in :mod:`~captum_attnflow.functional._flow_kernels`.
  Capacities and residual capacities are dense ``(l, S, S)`` arrays, so there is no graph to
  build. The search touches only what it must: dead ends are skipped in O(1), an augmentation
  costs O(1), and a minimum cut certified for one problem bounds every other problem of the
  example, so most problems end without a BFS. The problems of a call are split into chunks
  that the engine's own threads solve (numba functions that release the GIL, no numba
  threading layer), so concurrent calls are safe under every numba threading layer and in
  forked processes.
* ``"scipy"``: :func:`scipy.sparse.csgraph.maximum_flow` (Dinic, compiled) on capacities scaled
  to integers, one graph per example; the fallback when numba cannot be imported
  (:mod:`~captum_attnflow.functional._flow_reference`).
* ``"networkx"``: the authors' Edmonds–Karp through networkx, one graph per example, for
  reference. Slow (seconds per example).

Exactness of ``"numba"``: arithmetic is float64 and a residual capacity counts as empty when
it is at most ``RESIDUAL_TOLERANCE`` (1e-12). When the search stops, either the flow meets a
cut (a trivial one or, after the last phase, the nodes still reachable through residuals
above the tolerance), whose capacity exceeds the flow by at most
``(edges crossing the cut) * 1e-12 <= l * S**2 * 1e-12`` (6.1e-9 for 6 layers × 32 tokens,
3.1e-6 for 12 × 512), far below the 1e-6 promised for normalised flows on the sizes the tests
cover; the flow itself is feasible up to float rounding. Exactness of ``"scipy"``: see
:mod:`~captum_attnflow.functional._flow_reference`.
"""

import itertools
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from typing import List, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from captum_attnflow._compat import numba_threads_started
from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.functional._flow_kernels import (
    BFS_STEPS,
    BLOCKING_STEPS,
    FIRST_PHASE_STEPS,
    HELD_CUTS,
    HELD_EXAMPLE,
    WORK_COUNTERS,
    Workspace,
    new_workspace,
    solve_jobs,
)
from captum_attnflow.functional._flow_reference import (  # noqa: F401  (re-exported: the engines' one home)
    SCIPY_SCALE,
    networkx_max_flow,
    scipy_graph,
    scipy_max_flow,
)
from captum_attnflow.functional.graph import attention_graph  # noqa: F401  (re-exported)

try:  # numba is a declared dependency; the guard keeps the other engines usable without it.
    import numba
    _NUMBA_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    numba = None  # type: ignore[assignment]  # the engines test for None
    _NUMBA_IMPORT_ERROR = error

RESIDUAL_TOLERANCE = 1e-12

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
    """Threads the compiled engine spreads one call over (1 without numba): numba's thread count
    once its threading layer runs (``numba.set_num_threads`` is honoured), else
    ``NUMBA_NUM_THREADS``; asking numba earlier would start its OpenMP layer, which resets torch's
    thread count (:func:`captum_attnflow._compat.numba_threads_started`)."""
    if numba is None:
        return 1
    if numba_threads_started():
        return numba.get_num_threads()
    # numba.config sets its settings at import time, out of mypy's sight.
    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]


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
        # Only while work remains: a call whose first chunk finished it (after numba compiled
        # the engine, say) has nothing left to show.
        running_long = time.monotonic() - self.start > PROGRESS_AFTER_S
        if self.bar is None and self.show is None and done < self.total and running_long:
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
    work = np.zeros(WORK_COUNTERS, np.int64)
    out = np.zeros((len(sources), seq_len))
    for job in picked:  # a fresh workspace each: no cut shared between the samples
        solve_jobs(transitions, examples, sources, valid, picked[picked == job], RESIDUAL_TOLERANCE, out, work,
                   *new_workspace(num_layers, seq_len))
    return float(work[FIRST_PHASE_STEPS] + work[BFS_STEPS] + work[BLOCKING_STEPS]) / len(picked)


REUSED_WORKSPACE_BYTES = 1 << 20  # workspaces of graphs up to this size (l·S² doubles) are kept between calls
_thread_workspaces = threading.local()


def _workspace_for_call(num_layers: int, seq_len: int) -> Workspace:
    """A workspace for this thread's part of a call: its previous call's when the sizes match.

    Allocating one costs ~20 µs, a tenth of a small call (6 layers × 32 tokens); kept only
    for small graphs (``REUSED_WORKSPACE_BYTES``), so a large call leaves no memory behind.
    Thread-local, hence never shared by two concurrent calls; forked children get a copy.
    """
    space = getattr(_thread_workspaces, "space", None)
    if space is None or space.residual.shape != (num_layers, seq_len, seq_len):
        space = new_workspace(num_layers, seq_len)
        if space.residual.nbytes <= REUSED_WORKSPACE_BYTES:
            _thread_workspaces.space = space
    # The residual array holds no example of this call yet (it is loaded on the first job).
    space.held[HELD_EXAMPLE], space.held[HELD_CUTS] = -1, 0
    return space


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
            space = _workspace_for_call(num_layers, seq_len)
            done = 0
            for chunk in chunks:
                solve_jobs(capacities, examples, sources, valid, chunk, tol, out, work, *space)
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
        space = _workspace_for_call(capacities.shape[1], capacities.shape[2])
        for index in iter(lambda: next(next_chunk), None):
            if index >= len(chunks) or stop.is_set():
                return
            solve_jobs(capacities, examples, sources, valid, chunks[index], tol, out, works[thread], *space)
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
                            work=np.zeros(WORK_COUNTERS, np.int64) if work is None else work)
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
