"""Flow on executors (threads, spawned process pools, Dask) equals the in-process result exactly."""

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from captum_attnflow import AttentionFlow, AttentionRollout
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.functional import attention_flow, batched_flow_from_transitions, transition_matrices
from captum_attnflow.parallel import check_executor, flow_map, flow_map_transitions


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64)).eval()


@pytest.fixture(scope="module")
def padded_batch():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 40, (5, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[3, 3:] = 0
    return ids * mask, mask


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts submissions, to prove the work really went through it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitted = 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def serial_flow(model, ids, mask, **options):
    return AttentionFlow(model).attribute(ids, additional_forward_args=(mask,), **options)


# --------------------------------------------------------------------------- flow_map


@pytest.mark.parametrize("options", [
    dict(),
    dict(token_index="mean"),
    dict(token_index="last", layer=0),
    dict(token_index=torch.tensor([0, 4, 1, 2, 6])),
    dict(return_all_layers=True, normalize=False),
], ids=["cls", "mean", "last-layer0", "per-example", "all-layers-raw"])
def test_thread_pool_equals_serial(tiny_bert, padded_batch, options):
    ids, mask = padded_batch
    with CountingExecutor(2) as pool:
        distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=pool, **options)
    assert pool.submitted >= 2
    torch.testing.assert_close(distributed, serial_flow(tiny_bert, ids, mask, **options), rtol=0, atol=0)


@pytest.mark.slow
def test_spawned_process_pool_equals_serial(tiny_bert, padded_batch):
    ids, mask = padded_batch
    options = dict(token_index=2, return_all_layers=True)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=pool, **options)
    torch.testing.assert_close(distributed, serial_flow(tiny_bert, ids, mask, **options), rtol=0, atol=0)


@pytest.mark.slow
def test_default_executor_is_a_local_process_pool(tiny_bert, padded_batch):
    ids, mask = padded_batch
    distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), token_index="mean")
    torch.testing.assert_close(distributed, serial_flow(tiny_bert, ids, mask, token_index="mean"),
                               rtol=0, atol=0)


def test_dask_local_cluster_executor(tiny_bert, padded_batch):
    distributed_module = pytest.importorskip("dask.distributed")
    ids, mask = padded_batch
    with distributed_module.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                         dashboard_address=None) as cluster, \
            distributed_module.Client(cluster) as client:
        distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=client.get_executor(),
                               return_all_layers=True)
    torch.testing.assert_close(distributed, serial_flow(tiny_bert, ids, mask, return_all_layers=True),
                               rtol=0, atol=0)


def test_flow_map_chunk_size_sets_examples_per_task(tiny_bert, padded_batch):
    ids, mask = padded_batch
    with CountingExecutor(2) as pool:
        distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=pool, chunk_size=2)
    assert pool.submitted == math.ceil(len(ids) / 2)
    torch.testing.assert_close(distributed, serial_flow(tiny_bert, ids, mask), rtol=0, atol=0)


def test_forking_process_pool_gives_the_serial_result(tiny_bert, padded_batch):
    # The engine ran in this process before the fork (below); its workers are threads of its
    # own, so a forked worker can run it too (the old OpenMP engine broke the pool).
    ids, mask = padded_batch
    serial = serial_flow(tiny_bert, ids, mask)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        forked = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=pool)
    torch.testing.assert_close(forked, serial, rtol=0, atol=0)
    assert check_executor(ThreadPoolExecutor(1)) is not None


def test_flow_map_refuses_other_methods_and_bad_options(tiny_bert, padded_batch):
    ids, mask = padded_batch
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(InvalidParameterError, match="method"):
            flow_map(AttentionRollout(tiny_bert), ids, (mask,), executor=pool)
        for chunk_size in (0, 1.5, True):
            with pytest.raises(InvalidParameterError, match="chunk_size"):
                flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=pool, chunk_size=chunk_size)
    with pytest.raises(InvalidParameterError, match="executor"):
        flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor="processes")


# --------------------------------------------------------------------------- flow_map_transitions


@pytest.fixture(scope="module")
def random_attentions():
    generator = torch.Generator().manual_seed(0)
    attentions = torch.softmax(torch.randn(3, 9, 2, 6, 6, generator=generator, dtype=torch.float64), -1)
    mask = torch.ones(9, 6, dtype=torch.long)
    mask[2, 4:] = 0
    mask[7, 3:] = 0
    return attentions, mask


def test_transitions_chunks_are_reassembled_in_order(random_attentions):
    attentions, mask = random_attentions
    graphs = transition_matrices(attentions, attention_mask=mask).transpose(0, 1)  # (B, L, S, S)
    sources = [b % 3 for b in range(9)]  # a different explained position per example
    with CountingExecutor(3) as pool:
        chunked = flow_map_transitions(graphs, sources, valid=mask, executor=pool, chunk_size=2)
    assert pool.submitted == 5  # ceil(9 / 2)
    serial = batched_flow_from_transitions(graphs.numpy(), [[s] for s in sources], valid=mask.bool().numpy())
    for got, expected in zip(chunked, serial):
        np.testing.assert_array_equal(got, expected)
    # Independent reference: the functional attention_flow, every position at once, per example.
    reference = attention_flow(attentions, token_index="all", attention_mask=mask)
    for b, source in enumerate(sources):
        np.testing.assert_allclose(chunked[b][0], reference[b, source].numpy(), atol=1e-12)
        assert (chunked[b][0][~mask[b].bool().numpy()] == 0).all()


def test_transitions_with_several_sources_and_raw_values(random_attentions):
    attentions, _ = random_attentions
    graphs = transition_matrices(attentions)[:2].transpose(0, 1).numpy()  # explain the output of layer 1
    with ThreadPoolExecutor(2) as pool:
        flows = flow_map_transitions(graphs, [[0, 5]] * 9, normalize=False, executor=pool)
    expected = attention_flow(attentions, token_index=torch.tensor([[0, 5]] * 9), layer=1, normalize=False)
    assert [f.shape for f in flows] == [(2, 6)] * 9
    np.testing.assert_allclose(np.stack(flows), expected.numpy(), atol=1e-12)


def test_transitions_input_checks(random_attentions):
    attentions, _ = random_attentions
    graphs = transition_matrices(attentions).transpose(0, 1)
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(InvalidInputError, match="shape"):
            flow_map_transitions(graphs[0], [0] * 9, executor=pool)
        with pytest.raises(InvalidInputError, match="non-negative"):
            flow_map_transitions(-graphs, [0] * 9, executor=pool)
        with pytest.raises(InvalidParameterError, match="positions"):
            flow_map_transitions(graphs, [0] * 8, executor=pool)
        with pytest.raises(InvalidParameterError, match="positions"):
            flow_map_transitions(graphs, [6] * 9, executor=pool)
        with pytest.raises(InvalidInputError, match="valid"):
            flow_map_transitions(graphs, [0] * 9, valid=np.ones((9, 5), bool), executor=pool)
