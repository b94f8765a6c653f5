"""Flow on executors (threads, a spawned process pool, Dask) equals the in-process result."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from captum_attnflow import AttentionFlow
from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.functional import attention_flow, batched_flow_from_transitions
from captum_attnflow.parallel import flow_map, local_process_pool


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32)).eval()


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

    submitted = 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize("options", [dict(), dict(token_index="mean"), dict(return_all_layers=True, normalize=False)])
def test_thread_pool_equals_serial(tiny_bert, padded_batch, options):
    ids, mask = padded_batch
    serial = AttentionFlow(tiny_bert).attribute(ids, additional_forward_args=(mask,), **options)
    with CountingExecutor(2) as pool:
        distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=pool, **options)
    assert pool.submitted >= 2
    torch.testing.assert_close(distributed, serial, rtol=0, atol=0)


def test_spawned_process_pool_equals_serial(tiny_bert, padded_batch):
    ids, mask = padded_batch
    serial = AttentionFlow(tiny_bert).attribute(ids, additional_forward_args=(mask,), token_index=2)
    with local_process_pool(max_workers=2) as pool:
        distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=pool, token_index=2)
    torch.testing.assert_close(distributed, serial, rtol=0, atol=0)


def test_dask_local_cluster_executor(tiny_bert, padded_batch):
    distributed_module = pytest.importorskip("dask.distributed")
    ids, mask = padded_batch
    serial = AttentionFlow(tiny_bert).attribute(ids, additional_forward_args=(mask,))
    with distributed_module.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                         dashboard_address=None) as cluster, \
            distributed_module.Client(cluster) as client:
        distributed = flow_map(AttentionFlow(tiny_bert), ids, (mask,), executor=client.get_executor())
    torch.testing.assert_close(distributed, serial, rtol=0, atol=0)


def test_functional_chunks_are_reassembled_in_order():
    generator = torch.Generator().manual_seed(0)
    attentions = torch.softmax(torch.randn(3, 9, 2, 6, 6, generator=generator, dtype=torch.float64), -1)
    from captum_attnflow.functional import transition_matrices

    graphs = transition_matrices(attentions).numpy().transpose(1, 0, 2, 3)
    sources = [[b % 6] for b in range(9)]
    with ThreadPoolExecutor(3) as pool:
        chunked = batched_flow_from_transitions(graphs, sources, executor=pool, chunk_size=2)
    serial = batched_flow_from_transitions(graphs, sources)
    for got, expected in zip(chunked, serial):
        np.testing.assert_array_equal(got, expected)
    reference = attention_flow(attentions, output_positions=list(range(6)))
    for b in range(9):
        np.testing.assert_allclose(chunked[b][0], reference[b, b % 6].numpy(), atol=1e-12)


def test_flow_map_refuses_other_methods_and_bad_executors(tiny_bert, padded_batch):
    from captum_attnflow import AttentionRollout

    ids, mask = padded_batch
    with pytest.raises(InvalidParameterError, match="method"):
        flow_map(AttentionRollout(tiny_bert), ids, (mask,), executor=ThreadPoolExecutor(1))
    with pytest.raises(InvalidParameterError, match="executor"):
        AttentionFlow(tiny_bert).attribute(ids, additional_forward_args=(mask,), executor="processes")
