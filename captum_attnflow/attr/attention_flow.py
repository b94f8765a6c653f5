"""Attention flow as a Captum attribution."""

from concurrent.futures import Executor
from typing import List, Optional

import numpy as np
import torch
from captum.log import log_usage

from captum_attnflow._validation import check_causal_transitions
from captum_attnflow.functional._cost import check_flow_budget, estimate_flow_cost
from captum_attnflow.attr._base import AttentionAttributionBase, TokenIndex
from captum_attnflow.capture import CapturedAttention
from captum_attnflow.functional import _maxflow
from captum_attnflow.functional.causal import normalize_by_receptive_field, receptive_field_transitions
from captum_attnflow.functional.flow import batched_flow_from_transitions
from captum_attnflow.functional.fusion import transition_matrices


class AttentionFlow(AttentionAttributionBase):
    r"""Attention flow (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
    Transformers", ACL, https://arxiv.org/abs/2005.00928, Sec. 4).

    The attention graph has a node per (layer, position), layer 0 being the input
    tokens, and an edge (l, i) -> (l−1, k) of capacity ``Â_l[i, k]`` (heads fused, residual
    added, rows renormalised). The attribution of input ``j`` is the maximum flow from the
    explained token after ``layer`` to input node (0, j), solved exactly and separately for
    every ``j`` (by default with a compiled exact max-flow engine; ``backend="networkx"``
    runs the authors' Edmonds–Karp). With ``normalize=True`` (the paper's choice) the scores
    of each example sum to 1. ``target`` is accepted and ignored: flow is class-agnostic.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertModel
        >>> from captum_attnflow import AttentionFlow
        >>> model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                              num_attention_heads=2, intermediate_size=16)).eval()
        >>> input_ids = torch.tensor([[1, 5, 7, 2]])
        >>> scores = AttentionFlow(model).attribute(input_ids)
        >>> tuple(scores.shape), round(float(scores.sum()), 6)
        ((1, 4), 1.0)
    """

    @log_usage()
    def attribute(self, inputs: torch.Tensor, target=None, additional_forward_args=None, *,
                  token_index: TokenIndex = 0, layer: int = -1, return_all_layers: bool = False,
                  head_fusion: str = "mean", residual_weight: float = 0.5, discard_ratio: float = 0.0,
                  normalize: bool = True, backend: str = "auto", allow_large: bool = False,
                  causal_normalization: bool = False, return_patch_grid: bool = False,
                  executor: Optional[Executor] = None) -> torch.Tensor:
        r"""
        Args:
            inputs (Tensor): token ids ``(B, S)``, pixel values ``(B, C, H, W)`` for vision
                transformers, or what the model's adapter accepts.
            target: unused; flow does not depend on the output class.
            additional_forward_args (tuple, optional): extra positional arguments of the
                forward function, e.g. ``(attention_mask,)``; padded tokens get 0.
            token_index (int, Tensor or str): the explained position: an int (default 0, the
                CLS token), a ``(B,)`` tensor, ``"mean"`` (average of the normalised flows of
                every real token) or ``"last"`` (last real token).
            layer (int): explain the output of this layer (Python-list indexing, ``-1`` = last).
            return_all_layers (bool): return ``(L, B, S)``, the flow from every layer's output
                (costs one flow problem per layer).
            head_fusion, residual_weight, discard_ratio: as in :class:`AttentionRollout`.
            normalize (bool): divide by the sum over inputs; ``False`` gives raw max-flow values.
            backend (str): max-flow engine (``"auto"``, ``"networkx"`` ...; see
                :data:`captum_attnflow.functional.FLOW_BACKENDS`).
            allow_large (bool): run problems whose estimated cost exceeds the safety budget.
            causal_normalization (bool): for decoders, divide each input's flow by the flow the
                explained token sends it under uniform causal attention (its receptive field) and
                rescale to the original sum; see :mod:`captum_attnflow.functional.causal`.
            return_patch_grid (bool): vision models only: the ``(B, grid_h, grid_w)`` patch scores.
            executor (concurrent.futures.Executor, optional): solve the max-flow problems there
                (a process pool, a Dask ``Client.get_executor()``, a Ray pool ...); the model runs
                here and only the fused ``(l, S, S)`` graphs travel. See
                :func:`captum_attnflow.parallel.flow_map`.

        Returns:
            Tensor shaped like ``inputs`` (``(L, *inputs.shape)`` with ``return_all_layers``);
            see :class:`AttentionRollout` for images.
        """
        return self._attribute(inputs, additional_forward_args, token_index, layer, return_all_layers,
                               head_fusion, return_patch_grid=return_patch_grid, residual_weight=residual_weight,
                               discard_ratio=discard_ratio, normalize=normalize, backend=backend,
                               allow_large=allow_large, causal_normalization=causal_normalization,
                               executor=executor)

    def _layer_scores(self, captured: CapturedAttention, valid: torch.Tensor, positions: List[List[int]],
                      layers: List[int], *, residual_weight: float, discard_ratio: float,
                      normalize: bool, backend: str, allow_large: bool,
                      causal_normalization: bool, executor: Optional[Executor] = None) -> torch.Tensor:
        _maxflow.check_backend(backend)
        # One solve per explained token of every example; the causal baseline doubles it.
        cost = estimate_flow_cost([layer + 1 for layer in layers], captured.attentions.shape[-1], len(positions),
                                  [len(p) for p in positions], backend=backend,
                                  repeats=2 if causal_normalization else 1)
        check_flow_budget(cost, allow_large)
        transitions = transition_matrices(captured.attentions, head_fusion=captured.head_fusion or "mean",
                                          residual_weight=residual_weight, discard_ratio=discard_ratio,
                                          attention_mask=valid.to(captured.attentions.device))
        graphs = transitions.detach().to("cpu", torch.float64).numpy()
        valid_np = valid.numpy()
        uniform = None
        if causal_normalization:
            check_causal_transitions(transitions[: max(layers) + 1])
            uniform = receptive_field_transitions(graphs.shape[0], graphs.shape[1], graphs.shape[2],
                                                  residual_weight=residual_weight, attention_mask=valid,
                                                  dtype=torch.float64).numpy()
        scores = np.zeros((len(layers), graphs.shape[1], graphs.shape[2]))
        for out_row, layer in enumerate(layers):
            # Every example's problems go to the engine in one call (parallel over cores).
            flows = batched_flow_from_transitions(graphs[: layer + 1].transpose(1, 0, 2, 3), positions,
                                                  valid=valid_np, normalize=normalize, backend=backend,
                                                  executor=executor)
            if uniform is not None:
                baselines = batched_flow_from_transitions(uniform[: layer + 1].transpose(1, 0, 2, 3), positions,
                                                          valid=valid_np, normalize=normalize, backend=backend,
                                                          executor=executor)
                flows = [normalize_by_receptive_field(torch.from_numpy(f), torch.from_numpy(u)).numpy()
                         for f, u in zip(flows, baselines)]
            scores[out_row] = np.stack([f.mean(axis=0) for f in flows])
        return torch.from_numpy(scores).float()
