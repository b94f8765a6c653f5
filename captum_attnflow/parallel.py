"""Attention flow over large datasets: farm the max-flow problems out to any executor.

The model always runs in the calling process (attention is captured and fused there);
only the fused ``(l, S, S)`` float64 graphs of each chunk of examples travel to the
workers, which run the exact max-flow engine
(:func:`~captum_attnflow.functional.batched_flow_from_transitions`, a picklable module-level
function) and send back ``(P, S)`` scores, reassembled in input order. Any
:class:`concurrent.futures.Executor` works:

* a local process pool, :func:`local_process_pool` (the default): workers are *spawned*,
  so that they never inherit a half-used torch thread pool (a default, forking
  ``ProcessPoolExecutor()`` works too: workers only run the engine, on threads of its own);
* a Dask cluster: ``Client(address).get_executor()`` (``pip install "dask[distributed]"``);
* a thread pool, a Ray pool wrapped as an executor, or any object with
  ``submit(fn, *args, **kwargs) -> Future``.

Within one process the compiled engine already uses every local core, so an executor pays
off when it brings more machines, or to overlap flow with other work. As with any spawned
process pool, a script must start its work under ``if __name__ == "__main__":`` (spawned
workers import the main module; unguarded work there breaks the pool).

Two entry points:

* :func:`flow_map` — ``AttentionFlow(...).attribute(...)`` with the solving distributed;
* :func:`flow_map_transitions` — for precomputed attention: fused transition matrices in,
  flows out.

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
    client = Client("scheduler-address:8786")      # or Client(LocalCluster())
    scores = flow_map(AttentionFlow(model), input_ids, (mask,), executor=client.get_executor(),
                      token_index="mean", return_all_layers=True)
"""

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from numbers import Integral
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.functional.flow import batched_flow_from_transitions, check_chunk_size, check_executor

__all__ = ["check_executor", "flow_map", "flow_map_transitions", "local_process_pool"]


def local_process_pool(max_workers: Optional[int] = None) -> ProcessPoolExecutor:
    """A process pool whose workers start fresh ("spawn").

    Spawned workers import the package anew instead of inheriting a copy of this process
    (and its torch thread pool), so scripts must guard their entry point with
    ``if __name__ == "__main__":``. Starting the workers costs a few seconds (they import
    torch): create one pool and reuse it across calls.

    Example:
        >>> with local_process_pool(max_workers=1) as pool:
        ...     pool.submit(sum, [1, 2, 3]).result()
        6
    """
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"))


@contextmanager
def _executor_or_local_pool(executor: Optional[Executor]) -> Iterator[Executor]:
    if executor is not None:
        yield check_executor(executor)
        return
    with local_process_pool() as pool:
        yield pool


def flow_map(method, input_ids: torch.Tensor, additional_forward_args=None, *,
             executor: Optional[Executor] = None, chunk_size: Optional[int] = None,
             **attribute_kwargs) -> torch.Tensor:
    """``method.attribute(input_ids, ...)`` with the max-flow problems solved on ``executor``.

    The model runs once, here; the fused graphs of each chunk of examples are solved on
    the executor and the scores come back in input order, equal to the serial result.

    Args:
        method: an :class:`~captum_attnflow.AttentionFlow`.
        input_ids, additional_forward_args: as for ``attribute``.
        executor: where to solve (see :func:`check_executor`); default: a spawned local
            process pool for this call. Pass your own pool or a Dask ``Client.get_executor()``
            to reuse workers across calls.
        chunk_size: examples per submitted task; default: the batch split into 8 tasks.
        **attribute_kwargs: any other ``attribute`` option (``token_index``, ``layer``,
            ``return_all_layers``, ``normalize`` ...).

    Returns:
        Exactly what ``method.attribute`` returns without an executor.

    Example:
        >>> import torch
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> from captum_attnflow import AttentionFlow
        >>> weights = torch.softmax(torch.randn(2, 3, 2, 4, 4), -1)  # (L, B, H, S, S)
        >>> flow = AttentionFlow(lambda ids: ids.float(), attention_fn=lambda ids: weights)
        >>> ids = torch.zeros(3, 4, dtype=torch.long)
        >>> with ThreadPoolExecutor(2) as pool:
        ...     scores = flow_map(flow, ids, executor=pool, token_index="mean")
        >>> torch.equal(scores, flow.attribute(ids, token_index="mean"))
        True
    """
    from captum_attnflow.attr.attention_flow import AttentionFlow

    if not isinstance(method, AttentionFlow):
        raise InvalidParameterError(
            f"flow_map distributes AttentionFlow; got method={type(method).__name__}. Other methods run "
            "in-process: call method.attribute(...) directly.")
    chunk_size = check_chunk_size(chunk_size)
    if chunk_size is not None:
        attribute_kwargs["chunk_size"] = chunk_size
    with _executor_or_local_pool(executor) as pool:
        return method.attribute(input_ids, additional_forward_args=additional_forward_args, executor=pool,
                                **attribute_kwargs)


def flow_map_transitions(transitions, positions: Sequence[Union[int, Sequence[int]]], *,
                         valid=None, normalize: bool = True, backend: str = "auto",
                         executor: Optional[Executor] = None,
                         chunk_size: Optional[int] = None) -> List[np.ndarray]:
    """Attention flow from precomputed transition matrices, solved on ``executor``.

    For users who already hold attention weights: fuse them with
    :func:`~captum_attnflow.functional.transition_matrices` (heads, residual, padding),
    then solve every example's flow problems on the executor.

    Args:
        transitions: ``(B, l, S, S)`` array or tensor: per example, ``Â_1 … Â_l`` (the
            output of ``transition_matrices`` is ``(L, B, S, S)``: transpose the first two
            axes and keep the first ``l`` layers to explain the output of layer ``l``).
        positions: per example, the explained position (an int) or positions (a list): plain
            engine-level indices, unlike ``token_index`` (no modes such as ``"mean"``, no tensors).
        valid: optional ``(B, S)`` bool array of real tokens; padded inputs get 0.
        normalize: divide each flow vector by its sum over inputs (the paper's choice).
        backend: max-flow engine, see :data:`captum_attnflow.functional.FLOW_BACKENDS`.
        executor: where to solve (see :func:`check_executor`); default: a spawned local
            process pool for this call.
        chunk_size: examples per submitted task; default: the batch split into 8 tasks.

    Returns:
        A list of B float64 arrays, ``(len(positions[b]), S)`` each, in input order; equal to
        :func:`~captum_attnflow.functional.batched_flow_from_transitions` run in-process.

    Example:
        >>> import torch
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> from captum_attnflow.functional import attention_flow, transition_matrices
        >>> attentions = torch.softmax(torch.randn(3, 4, 2, 5, 5, dtype=torch.float64), -1)
        >>> graphs = transition_matrices(attentions).transpose(0, 1)   # (B, L, S, S)
        >>> with ThreadPoolExecutor(2) as pool:
        ...     flows = flow_map_transitions(graphs, [0, 0, 0, 0], executor=pool, chunk_size=1)
        >>> expected = attention_flow(attentions, token_index=0)  # (B, S)
        >>> torch.allclose(torch.from_numpy(flows[2][0]), expected[2])
        True
    """
    graphs = _check_transitions(transitions)
    batch_size, _, seq_len, _ = graphs.shape
    positions = _check_positions(positions, batch_size, seq_len)
    valid_tokens = _check_valid(valid, batch_size, seq_len)
    chunk_size = check_chunk_size(chunk_size)
    with _executor_or_local_pool(executor) as pool:
        return batched_flow_from_transitions(graphs, positions, valid=valid_tokens, normalize=normalize,
                                             backend=backend, executor=pool, chunk_size=chunk_size)


def _check_transitions(transitions) -> np.ndarray:
    if isinstance(transitions, torch.Tensor):
        transitions = transitions.detach().cpu().to(torch.float64).numpy()
    graphs = np.asarray(transitions)
    if graphs.ndim != 4 or graphs.shape[2] != graphs.shape[3] or 0 in graphs.shape:
        raise InvalidInputError(
            f"transitions must be a non-empty (B, l, S, S) array of per-example transition matrices, "
            f"got shape {graphs.shape}.")
    if not np.issubdtype(graphs.dtype, np.floating) or not np.isfinite(graphs).all() or (graphs < 0).any():
        raise InvalidInputError("transitions must hold finite, non-negative floats (capacities).")
    return np.ascontiguousarray(graphs, dtype=np.float64)


def _check_positions(positions, batch_size: int, seq_len: int) -> List[List[int]]:
    from captum_attnflow._validation import check_position

    if len(positions) != batch_size:
        raise InvalidParameterError(
            f"positions has {len(positions)} entries but transitions hold {batch_size} examples; give one "
            "position (or list of positions) per example.")
    checked = []
    for example in positions:
        example = [example] if isinstance(example, Integral) else list(example)
        if not example:
            raise InvalidParameterError("positions: every example needs at least one explained position.")
        checked.append([check_position(p, seq_len, "positions") for p in example])
    return checked


def _check_valid(valid, batch_size: int, seq_len: int) -> Optional[np.ndarray]:
    if valid is None:
        return None
    if isinstance(valid, torch.Tensor):
        valid = valid.detach().cpu().numpy()
    valid = np.asarray(valid).astype(bool)
    if valid.shape != (batch_size, seq_len):
        raise InvalidInputError(f"valid must have shape {(batch_size, seq_len)}, got {valid.shape}.")
    return valid
