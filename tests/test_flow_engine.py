"""The compiled max-flow engine against independent networkx max-flows on hard graphs, its
threads, fallbacks, progress bar and cost model."""

import functools
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from references import networkx_flow

from captum_attnflow.capture import capture_attention
from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.functional import _cost, _flow_kernels, _maxflow
from captum_attnflow.functional.flow import batched_flow_from_transitions, flow_from_transitions
from captum_attnflow.functional.fusion import transition_matrices

pytestmark = pytest.mark.skipif("numba" not in _maxflow.FLOW_BACKENDS, reason="numba not installed")

PACKAGE = Path(_maxflow.__file__).resolve().parents[1]


def sparse_capacities(rng, num_layers, seq_len, density):
    """Row-stochastic layers where most edges are missing: greedy routing goes wrong here,
    so Dinic needs several phases and must push flow back along reverse arcs."""
    keep = rng.random((num_layers, seq_len, seq_len)) < density
    keep[:, np.arange(seq_len), rng.integers(0, seq_len, seq_len)] = True  # no empty rows
    weights = rng.random((num_layers, seq_len, seq_len)) * keep
    return weights / weights.sum(axis=-1, keepdims=True)


def softmax_capacities(num_layers, seq_len, temperature, residual_weight=0.5, seed=0, heads=4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_layers, 1, heads, seq_len, seq_len, generator=generator, dtype=torch.float64)
    attentions = torch.softmax(logits * temperature, -1)
    return transition_matrices(attentions, residual_weight=residual_weight)[:, 0].numpy()


def every_flow(capacities, **options):
    """``(S, S)``: the engine's flow from every top-layer position to every input."""
    return _maxflow.max_flow_to_inputs(capacities, list(range(capacities.shape[-1])), **options)


def networkx_every_flow(capacities):
    return np.stack([networkx_flow(capacities, source) for source in range(capacities.shape[-1])])


# --- exactness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_sparse_random_graphs_match_networkx(seed):
    rng = np.random.default_rng(seed)
    num_layers, seq_len = int(rng.integers(2, 6)), int(rng.integers(3, 10))
    capacities = sparse_capacities(rng, num_layers, seq_len, density=0.3)
    source = int(rng.integers(seq_len))
    flows = _maxflow.max_flow_to_inputs(capacities, [source], backend="numba")[0]
    np.testing.assert_allclose(flows, networkx_flow(capacities, source), atol=1e-9)


def test_flow_that_must_be_rerouted_is_found():
    # Source s=(3,0) feeds a=(2,0) and b=(2,1) with 0.5 each; a -> c=(1,0), d=(1,1) (0.5 each),
    # b -> c only; c and d each send 0.5 to input 0. The first (shortest-path) phase routes
    # s->a->c->0 and strands b's half at c; the second phase must cancel a->c through the
    # reverse arc (s->b->c->a->d->0) to reach the true maximum, 1.
    capacities = np.zeros((3, 2, 2))
    capacities[2] = [[0.5, 0.5], [0.5, 0.5]]
    capacities[1] = [[0.5, 0.5], [1.0, 0.0]]
    capacities[0] = [[0.5, 0.5], [0.5, 0.5]]
    np.testing.assert_allclose(networkx_flow(capacities, 0), [1.0, 1.0])
    np.testing.assert_allclose(_maxflow.max_flow_to_inputs(capacities, [0], backend="numba")[0], [1.0, 1.0],
                               atol=1e-12)


@pytest.mark.parametrize("temperature, residual_weight", [(0.3, 0.5), (3.0, 0.5), (8.0, 0.5), (3.0, 0.0),
                                                          (25.0, 0.0), (25.0, 0.5)])
def test_every_position_of_softmax_graphs_matches_networkx(temperature, residual_weight):
    # Flat, ordinary, peaked and near one-hot attention (temperature 25), with and without the
    # residual connection; every (source, input) pair, so the cuts shared between problems are
    # exercised too.
    capacities = softmax_capacities(4, 9, temperature, residual_weight, seed=int(temperature * 10))
    np.testing.assert_allclose(every_flow(capacities), networkx_every_flow(capacities), atol=1e-9)


def test_every_position_of_real_attention_matches_networkx(minilm, minilm_tokenizer):
    encoded = minilm_tokenizer(["The keys to the cabinet are on the table."], return_tensors="pt")
    # Our capture, not output_attentions=True: transformers would leave its own recording
    # hooks on the shared model.
    attentions = capture_attention(minilm, encoded.input_ids, (encoded.attention_mask,), head_fusion=None).attentions
    capacities = transition_matrices(attentions)[:, 0].double().numpy()
    fast = every_flow(capacities)
    np.testing.assert_allclose(fast, networkx_every_flow(capacities), atol=1e-9)
    sources = [0, capacities.shape[-1] - 1]
    authors = _maxflow.max_flow_to_inputs(capacities, sources, backend="networkx")  # Edmonds–Karp
    np.testing.assert_allclose(fast[sources], authors, atol=1e-6)


def test_cut_found_for_one_problem_bounds_the_others(monkeypatch):
    # Position 0 keeps 97 % of its weight on itself in every layer, so from source 0 the
    # minimum cut of every sink is its column (capacity ~0.03 per layer), not a trivial cut.
    # The first problem certifies it with a BFS; the engine stores that cut and the other
    # sinks stop as soon as their flow reaches its capacity, without a BFS of their own.
    rng = np.random.default_rng(3)
    capacities = sparse_capacities(rng, 5, 12, density=1.0)
    capacities[:, 0, :] *= 0.03 / capacities[:, 0, 1:].sum(axis=-1, keepdims=True)
    capacities[:, 0, 0] = 0.97
    work = np.zeros(5, np.int64)
    flows = _maxflow.max_flow_to_inputs(capacities, [0], work=work)[0]
    np.testing.assert_allclose(flows, networkx_flow(capacities, 0), atol=1e-9)
    assert (flows[1:] < 0.5).all()  # the column cut binds for every other sink
    monkeypatch.setattr(_flow_kernels, "MAX_CUTS", 0)  # the same without sharing cuts
    monkeypatch.setattr(_maxflow, "_thread_workspaces", threading.local())  # no workspace kept from before
    unshared = np.zeros(5, np.int64)
    np.testing.assert_array_equal(_maxflow.max_flow_to_inputs(capacities, [0], work=unshared)[0], flows)
    assert unshared[2] >= 10 and work[2] <= 3  # BFS phases: a certificate per sink without sharing


def test_workspace_kept_between_calls_carries_nothing_over(monkeypatch):
    # A small call reuses its thread's workspace from the previous call; the cuts stored for
    # one graph must not bound the problems of the next one (a cut of graph A is no cut of B).
    rng = np.random.default_rng(5)
    peaked = sparse_capacities(rng, 4, 10, density=1.0)
    peaked[:, 0, :] *= 0.03 / peaked[:, 0, 1:].sum(axis=-1, keepdims=True)
    peaked[:, 0, 0] = 0.97  # from source 0, every sink's minimum cut is a stored, shared one
    graphs = [peaked, sparse_capacities(rng, 4, 10, density=0.4), peaked, softmax_capacities(4, 10, 1.0)]
    fresh = []
    for graph in graphs:
        monkeypatch.setattr(_maxflow, "_thread_workspaces", threading.local())
        fresh.append(_maxflow.max_flow_to_inputs(graph, [0, 3]))
    monkeypatch.setattr(_maxflow, "_thread_workspaces", threading.local())
    kept = [_maxflow.max_flow_to_inputs(graph, [0, 3]) for graph in graphs]
    assert _maxflow._thread_workspaces.space.residual.shape == (4, 10, 10)  # it was kept
    for graph, expected, got in zip(graphs, fresh, kept):
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(got[0], networkx_flow(graph, 0), atol=1e-9)


def test_one_batched_call_equals_per_example_calls():
    rng = np.random.default_rng(7)
    capacities = np.stack([sparse_capacities(rng, 3, 6, density=0.5) for _ in range(3)])
    valid = np.ones((3, 6), dtype=bool)
    valid[1, 4:] = False
    sources = [[0], [1, 3], [5, 2, 0]]
    batched = batched_flow_from_transitions(capacities, sources, valid=valid, normalize=False)
    for b in range(3):
        single = flow_from_transitions(capacities[b], sources[b], valid=valid[b], normalize=False)
        np.testing.assert_array_equal(batched[b], single)
        networkx = flow_from_transitions(capacities[b], sources[b], valid=valid[b], normalize=False,
                                         backend="networkx")
        np.testing.assert_allclose(batched[b], networkx, atol=1e-9)
    assert (batched[1][:, 4:] == 0).all()


def test_all_positions_of_a_padded_batch_reshape_to_per_position_matrices():
    rng = np.random.default_rng(11)
    capacities = np.stack([sparse_capacities(rng, 3, 7, density=0.6) for _ in range(2)])
    valid = np.ones((2, 7), dtype=bool)
    valid[1, 5:] = False
    examples, positions = _maxflow.all_positions(2, 7)
    flows = _maxflow.max_flows_for_tasks(capacities, examples, positions, valid=valid).reshape(2, 7, 7)
    for b in range(2):
        expected = networkx_every_flow(capacities[b]) * valid[b]
        np.testing.assert_allclose(flows[b], expected, atol=1e-9)


def test_scipy_engine_is_within_its_scaling_bound():
    capacities = softmax_capacities(4, 10, 3.0)
    scaled = _maxflow.max_flow_to_inputs(capacities, [0, 9], backend="scipy")
    exact = np.stack([networkx_flow(capacities, 0), networkx_flow(capacities, 9)])
    assert (scaled <= exact + 1e-12).all()  # rounding capacities down never adds flow
    np.testing.assert_allclose(scaled, exact, atol=capacities.size / _maxflow.SCIPY_SCALE)


# --- threads, threading layers, fallback --------------------------------------------------------

def test_concurrent_calls_equal_serial_calls():
    graphs = [softmax_capacities(3, 40, 2.0, seed=seed) for seed in range(4)]
    serial = [every_flow(graph) for graph in graphs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(every_flow, graphs * 2))
    for got, expected in zip(concurrent, serial * 2):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_process_pool_after_the_engine_used_its_threads():
    # numba's OpenMP pool broke forked workers (BrokenProcessPool); the engine's own threads
    # are recreated in the child.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    graphs = np.stack([softmax_capacities(4, 48, 2.0, seed=seed) for seed in range(4)])
    everything = [list(range(48))] * 4
    serial = batched_flow_from_transitions(graphs, everything)  # over 10 ms: uses the engine's threads
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        forked = [pool.submit(batched_flow_from_transitions, graphs[b:b + 1], everything[:1]) for b in range(4)]
        for expected, future in zip(serial, forked):
            np.testing.assert_array_equal(future.result()[0], expected)


ENGINE_ONLY = textwrap.dedent(f"""
    import sys, types
    # Load the engine without the package's __init__ (torch, transformers): seconds saved.
    for name, path in (("captum_attnflow", {str(PACKAGE)!r}), ("captum_attnflow.functional",
                                                               {str(PACKAGE / "functional")!r})):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    import numpy as np
    def graph(seed, layers=3, size=30):
        rng = np.random.default_rng(seed)
        weights = rng.random((layers, size, size)) ** 4
        return weights / weights.sum(axis=-1, keepdims=True)
""")


def run_engine_script(body, **env):
    completed = subprocess.run([sys.executable, "-c", ENGINE_ONLY + textwrap.dedent(body)], capture_output=True,
                               text=True, timeout=300, env=dict(os.environ, **env))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_concurrent_calls_under_the_workqueue_threading_layer():
    # The workqueue layer (numba's default without OpenMP/TBB) aborts the process when two
    # threads launch parallel numba code at once; the engine runs its own threads instead.
    output = run_engine_script("""
        import threading, numba
        from captum_attnflow.functional import _maxflow
        graphs = [graph(seed, layers=4, size=48) for seed in range(4)]  # big enough for the engine's threads
        everything = list(range(48))
        serial = [_maxflow.max_flow_to_inputs(g, everything) for g in graphs]
        results = [None] * 8
        def run(index):
            results[index] = _maxflow.max_flow_to_inputs(graphs[index % 4], everything)
        threads = [threading.Thread(target=run, args=(index,)) for index in range(8)]
        for thread in threads: thread.start()
        for thread in threads: thread.join()
        assert all(np.array_equal(got, serial[index % 4]) for index, got in enumerate(results))
        @numba.njit(parallel=True)
        def total(n):
            acc = 0
            for i in numba.prange(n):
                acc += i
            return acc
        total(100)
        print("layer", numba.threading_layer())
    """, NUMBA_THREADING_LAYER="workqueue")
    assert "layer workqueue" in output


def test_without_numba_flow_warns_once_and_falls_back_to_scipy():
    output = run_engine_script("""
        import warnings
        sys.modules["numba"] = None  # `import numba` now raises ImportError
        from captum_attnflow.functional import _maxflow
        assert "numba" not in _maxflow.FLOW_BACKENDS
        g = graph(0, layers=2, size=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            flows = _maxflow.max_flow_to_inputs(g, [0, 3])
            _maxflow.max_flow_to_inputs(g, [1])
            assert _maxflow.resolve_backend("auto") == "scipy"
        assert len(caught) == 1 and caught[0].category is UserWarning, caught
        reference = _maxflow.max_flow_to_inputs(g, [0, 3], backend="networkx")
        assert np.abs(flows - reference).max() < 1e-7
        print(caught[0].message)
    """)
    assert "numba cannot be imported" in output and "pip install numba" in output


# --- progress bar -------------------------------------------------------------------------------

def test_progress_bar_on_request_never_when_refused(capsys):
    capacities = softmax_capacities(3, 30, 2.0)
    quiet = every_flow(capacities, show_progress=False)
    assert "attention flow" not in capsys.readouterr().err
    shown = every_flow(capacities, show_progress=True)
    assert "attention flow" in capsys.readouterr().err
    np.testing.assert_array_equal(shown, quiet)
    with pytest.raises(InvalidParameterError, match="show_progress"):
        every_flow(capacities, show_progress="yes")


def test_progress_bar_appears_once_a_call_runs_long(capsys, monkeypatch):
    capacities = softmax_capacities(3, 60, 2.0)
    every_flow(capacities)  # short: no bar
    assert "attention flow" not in capsys.readouterr().err
    monkeypatch.setattr(_maxflow, "PROGRESS_AFTER_S", 0.0)  # every call is now "long"
    every_flow(capacities)
    assert "attention flow" in capsys.readouterr().err
    # A call whose one chunk is already done when the bar is first considered (a first call that
    # waited for numba to compile the engine, say) has nothing left to show: no bar.
    every_flow(softmax_capacities(2, 4, 2.0))
    assert "attention flow" not in capsys.readouterr().err


# --- cost model ---------------------------------------------------------------------------------

COST_ZOO = {  # name: (capacities, residual weight as the cost model is told)
    "softmax": (softmax_capacities(6, 32, 2.0), 0.5),
    "peaked": (softmax_capacities(6, 32, 25.0), 0.5),
    "no residual": (softmax_capacities(6, 32, 3.0, residual_weight=0.0), 0.0),
    "peaked, no residual": (softmax_capacities(12, 24, 25.0, residual_weight=0.0), None),
    "sparse": (sparse_capacities(np.random.default_rng(0), 6, 32, density=0.1), 0.0),
}


@functools.lru_cache(maxsize=None)
def counted_steps(name: str) -> int:
    """The engine's counted steps for every (source, input) problem of a zoo graph, solved once."""
    work = np.zeros(5, np.int64)
    every_flow(COST_ZOO[name][0], work=work)
    return int(work[0] + work[1] + work[4])


@pytest.mark.parametrize("name", sorted(COST_ZOO))
def test_counted_work_stays_under_the_cost_model(name):
    capacities, residual_weight = COST_ZOO[name]
    num_layers, seq_len, _ = capacities.shape
    estimate = seq_len * seq_len * _cost.steps_per_problem_bound(num_layers, seq_len, residual_weight)
    measured = counted_steps(name)
    assert measured <= estimate
    assert estimate <= 40 * measured  # an upper estimate, not a vacuous one


@pytest.mark.parametrize("name", sorted(COST_ZOO))
def test_sampled_work_estimate_covers_the_whole_call(name):
    # A data-aware estimate from 16 sampled problems (times the margin) covers the call's mean
    # work, and is tighter than the size-only bound on all but the slowest graphs.
    capacities, residual_weight = COST_ZOO[name]
    num_layers, seq_len, _ = capacities.shape
    measured = counted_steps(name) / seq_len ** 2
    sampled = _maxflow.sample_steps_per_problem(capacities[None], np.zeros(seq_len, np.int64), np.arange(seq_len))
    assert _cost.SAMPLE_MARGIN * sampled >= measured
    informed = _cost.estimate_flow_cost(num_layers, seq_len, 1, seq_len, residual_weight=residual_weight,
                                        steps_per_problem=sampled)
    assert informed.seconds <= _cost.estimate_flow_cost(num_layers, seq_len, 1, seq_len,
                                                        residual_weight=residual_weight).seconds


def test_cost_model_covers_real_attention(minilm, minilm_tokenizer):
    text = "The keys to the old wooden cabinet in the narrow hallway are missing again this morning, and nobody knows."
    encoded = minilm_tokenizer([text], return_tensors="pt")
    attentions = capture_attention(minilm, encoded.input_ids, (encoded.attention_mask,)).attentions
    capacities = transition_matrices(attentions)[:, 0].double().numpy()
    num_layers, seq_len, _ = capacities.shape
    work = np.zeros(5, np.int64)
    every_flow(capacities, work=work)
    assert work[0] + work[1] + work[4] <= seq_len * seq_len * _cost.steps_per_problem_bound(num_layers, seq_len, 0.5)


def test_cost_estimate_grows_with_the_problem():
    small = _cost.estimate_flow_cost(6, 32, 1, 1)
    assert small.num_problems == 32 and small.num_edges == 6 * 32 * 32
    longer = _cost.estimate_flow_cost(6, 64, 1, 1)
    deeper = _cost.estimate_flow_cost([6, 12], 32, 1, 1)
    assert longer.seconds > small.seconds and longer.memory_bytes > small.memory_bytes
    assert deeper.num_problems == 2 * small.num_problems and deeper.seconds > small.seconds
    assert _cost.estimate_flow_cost(6, 32, 1, 1, residual_weight=0.5).seconds < small.seconds  # unknown = slow
    assert _cost.estimate_flow_cost(6, 32, 8, 1, backend="networkx").seconds > \
        _cost.estimate_flow_cost(6, 32, 8, 1).seconds * 100
    per_example = _cost.estimate_flow_cost(6, 32, 3, [1, 2, 3])
    assert per_example.num_problems == 6 * 32


@pytest.mark.parametrize("seq_len", [8, 64, 256, 512])
def test_quick_budget_check_admits_only_what_the_estimate_admits(seq_len):
    # The fast path of small calls never admits a call the full estimate would refuse; it
    # does admit small ones, and refuses ones near the budget (left to the estimate).
    admitted = 0
    for depth in (1, 6, 12, 24):
        for batch_size in (1, 8, 64):
            for positions in (1, seq_len):
                depths = list(range(1, depth + 1)) if positions == 1 else [depth]
                problems = batch_size * positions * seq_len * len(depths)
                if _cost.clearly_within_budget(problems, depth, seq_len, batch_size):
                    admitted += 1
                    cost = _cost.estimate_flow_cost(depths, seq_len, batch_size, positions)
                    assert cost.seconds <= _cost.FLOW_TIME_BUDGET_S
                    assert cost.memory_bytes <= _cost.FLOW_MEMORY_BUDGET_BYTES
    assert admitted > 0 if seq_len <= 64 else True
    assert not _cost.clearly_within_budget(64 * 512 * 512, 12, 512, 64)


def test_memory_estimate_counts_the_batch():
    # The engine's own allocations for a batch (tracemalloc sees numpy's) stay under the
    # estimate, and the estimate grows with the batch (it once assumed one example).
    batch_size, num_layers, seq_len = 16, 3, 48
    rng = np.random.default_rng(0)
    capacities = np.stack([sparse_capacities(rng, num_layers, seq_len, 0.5) for _ in range(batch_size)])
    layer_major = np.ascontiguousarray(capacities.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)  # as callers pass
    examples, positions = np.arange(batch_size), np.zeros(batch_size, np.int64)
    tracemalloc.start()
    try:
        _maxflow.max_flows_for_tasks(layer_major, examples, positions)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = _cost.estimate_flow_cost(num_layers, seq_len, batch_size, 1)
    assert peak <= estimate.memory_bytes
    assert estimate.memory_bytes >= batch_size * 8 * num_layers * seq_len ** 2  # the batch's float64 copy
    one = _cost.estimate_flow_cost(num_layers, seq_len, 1, 1).memory_bytes
    assert estimate.memory_bytes > 8 * one


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="backend"):
        _maxflow.check_backend("scipy-typo")


def test_attention_flow_budget_counts_every_example_of_the_batch(monkeypatch):
    # The class once estimated a batch's memory as one example's: a batch 8 times larger than
    # the memory budget allows must be refused before solving.
    from transformers import BertConfig, BertModel

    from captum_attnflow import AttentionFlow, ProblemTooLargeError

    model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=16)).eval()
    ids = torch.randint(1, 30, (8, 12), generator=torch.Generator().manual_seed(0))
    one = _cost.estimate_flow_cost(2, 12, 1, 1).memory_bytes
    monkeypatch.setattr(_cost, "FLOW_MEMORY_BUDGET_BYTES", 2 * one)
    AttentionFlow(model).attribute(ids[:1])  # one example fits
    with pytest.raises(ProblemTooLargeError, match="MiB"):
        AttentionFlow(model).attribute(ids)


def test_a_full_change_log_falls_back_to_a_whole_reset(monkeypatch):
    """When a problem changes more residual entries than its log holds, the engine resets the
    whole residual array instead; the flows are the same, bit for bit."""
    capacities = softmax_capacities(4, 12, 3.0)
    expected = every_flow(capacities)
    full_resets = np.zeros(5, np.int64)
    every_flow(capacities, work=full_resets)
    assert full_resets[3] == 0  # the normal log never fills on this graph
    workspace = _maxflow.new_workspace

    def tiny_log_workspace(num_layers, seq_len):  # room for two changed entries only
        return workspace(num_layers, seq_len)._replace(change_log=np.empty(2, np.int64))

    monkeypatch.setattr(_maxflow, "new_workspace", tiny_log_workspace)
    monkeypatch.setattr(_maxflow, "_thread_workspaces", threading.local())  # no workspace kept from before
    work = np.zeros(5, np.int64)
    np.testing.assert_array_equal(every_flow(capacities, work=work), expected)
    assert work[3] > 0  # whole resets happened
