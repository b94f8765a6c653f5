"""Attention flow over large datasets: farm the max-flow problems out to any executor.

The model always runs in the calling process (attention is captured and fused there);
only the fused ``(l, S, S)`` float64 graphs of each chunk of examples travel to the
workers, which run the exact max-flow engine and send back ``(P, S)`` scores. Any
:class:`concurrent.futures.Executor` works:

* a local process pool, :func:`local_process_pool` (the default of :func:`flow_map`);
* a Dask cluster: ``Client(address).get_executor()`` (``pip install "dask[distributed]"``);
* a Ray pool: ``ray.util.multiprocessing.Pool`` wrapped as an executor, or any object with
  ``submit(fn, *args, **kwargs) -> Future``.

Within one process the compiled engine already uses every local core (numba threads), so
an executor pays off when it brings more machines, or to overlap flow with other work.

Example:
    >>> import torch
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> from transformers import BertConfig, BertModel
    >>> from captum_attnflow import AttentionFlow
    >>> from captum_attnflow.parallel import flow_map
    >>> model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
    ...                              num_attention_heads=2, intermediate_size=16)).eval()
    >>> input_ids = torch.tensor([[1, 5, 7, 2], [1, 4, 2, 0]])
    >>> mask = (input_ids != 0).long()
    >>> with ThreadPoolExecutor(2) as pool:
    ...     scores = flow_map(AttentionFlow(model), input_ids, (mask,), executor=pool)
    >>> torch.equal(scores, AttentionFlow(model).attribute(input_ids, additional_forward_args=(mask,)))
    True

On a Dask cluster (not run here)::

    from dask.distributed import Client
    client = Client("scheduler-address:8786")
    scores = flow_map(AttentionFlow(model), input_ids, (mask,), executor=client.get_executor())
"""

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.functional.flow import batched_flow_from_transitions

__all__ = ["batched_flow_from_transitions", "flow_map", "local_process_pool"]


def local_process_pool(max_workers: Optional[int] = None) -> ProcessPoolExecutor:
    """A process pool whose workers start fresh ("spawn").

    Forked workers would inherit the parent's OpenMP thread pool (used by the compiled
    engine and by torch), which is not fork-safe; spawned workers import the package anew.
    """
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"))


@contextmanager
def _executor_or_local_pool(executor: Optional[Executor]) -> Iterator[Executor]:
    if executor is not None:
        yield executor
        return
    with local_process_pool() as pool:
        yield pool


def flow_map(method, input_ids: torch.Tensor, additional_forward_args=None, *,
             executor: Optional[Executor] = None, **attribute_kwargs) -> torch.Tensor:
    """``method.attribute(input_ids, ...)`` with the max-flow problems solved on ``executor``.

    Args:
        method: an :class:`~captum_attnflow.AttentionFlow`.
        input_ids, additional_forward_args: as for ``attribute``.
        executor: where to solve; default: a local process pool for this call (pass your own
            pool or a Dask ``Client.get_executor()`` to reuse workers across calls). The batch
            is sent in 8 chunks of examples.
        **attribute_kwargs: any other ``attribute`` option (``token_index``, ``layer``,
            ``return_all_layers``, ``normalize`` ...).

    Returns:
        Exactly what ``method.attribute`` returns without an executor.
    """
    from captum_attnflow.attr.attention_flow import AttentionFlow

    if not isinstance(method, AttentionFlow):
        raise InvalidParameterError(
            f"flow_map distributes AttentionFlow; got method={type(method).__name__}. Other methods run "
            "in-process: call method.attribute(...) directly.")
    with _executor_or_local_pool(executor) as pool:
        return method.attribute(input_ids, additional_forward_args=additional_forward_args, executor=pool,
                                **attribute_kwargs)
