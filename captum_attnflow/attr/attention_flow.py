"""Attention flow as a Captum attribution."""

from concurrent.futures import Executor
from typing import Optional

import torch
from captum.log import log_usage

from captum_attnflow._validation import check_flag
from captum_attnflow.attr._base import AttentionAttributionBase
from captum_attnflow.capture import CapturedAttention
from captum_attnflow.functional import attention_flow
from captum_attnflow.functional.flow import check_chunk_size, check_executor
from captum_attnflow.functional.positions import TokenIndex


class AttentionFlow(AttentionAttributionBase):
    r"""Attention flow (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
    Transformers", ACL, https://arxiv.org/abs/2005.00928, Sec. 4).

    The attention graph has a node per (layer, position), layer 0 being the input
    tokens, and an edge (l, i) -> (l−1, k) of capacity ``Â_l[i, k]`` (heads fused, residual
    added, rows renormalized). The attribution of input ``j`` is the maximum flow from the
    explained token after ``layer`` to input node (0, j), solved exactly and separately for
    every ``j`` (by default with a compiled exact max-flow engine; ``backend="networkx"``
    runs the authors' Edmonds–Karp). With ``normalize=True`` (the paper's choice) the scores
    of each example sum to 1. With the default ``edge_weights="attention"``, ``target`` is
    accepted and ignored: flow is class-agnostic.

    **Target-aware edges.** With ``edge_weights="gradient"`` the capacities are Chefer et al.'s
    layer matrices ``I + E_h[(∇A_l ⊙ A_l)^+]`` (arXiv:2103.15679), not renormalised, so the flow
    through one layer equals Chefer's relevance (the product of those matrices) there; with
    ``"grad_rollout"`` they are vit-explain's renormalised rows. See
    :func:`captum_attnflow.functional.attention_flow`.
    The scores are :func:`captum_attnflow.functional.attention_flow` of the captured weights.

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
    def attribute(self, inputs, target=None, additional_forward_args=None, *,
                  token_index: TokenIndex = 0, layer: Optional[int] = None, return_all_layers: bool = False,
                  head_fusion: str = "mean", residual_weight: float = 0.5, discard_ratio: float = 0.0,
                  normalize: bool = True, backend: str = "auto", allow_large: bool = False,
                  causal_normalization: bool = False, attention_mask: Optional[torch.Tensor] = None,
                  return_patch_grid: bool = False, executor: Optional[Executor] = None,
                  chunk_size: Optional[int] = None, show_progress: Optional[bool] = None,
                  edge_weights: str = "attention", start_layer: int = 0, discard_mode: str = "row"):
        r"""
        Args:
            inputs (Tensor or tuple of one Tensor): token ids ``(B, S)``, pixel values
                ``(B, C, H, W)`` for vision transformers, or what the model's adapter accepts.
            target: with the gradient edge weights, the output to explain (Captum's conventions,
                see :class:`AttentionRollout`); ignored with ``edge_weights="attention"``.
            additional_forward_args (tuple, optional): extra positional arguments of the
                forward function, e.g. ``(attention_mask,)``; padded tokens get 0 (the mask is the
                one the model receives, see :class:`AttentionRollout`).
            token_index (int, Tensor or str): the explained position(s): an int (default 0, the
                CLS token), a ``(B,)`` tensor, a ``(B, P)`` tensor (all P sources of an example in
                one engine call), ``"mean"`` (average of the normalized flows of every real
                token), ``"last"`` (last real token) or ``"all"`` (``(B, S, S)`` flow matrices).
            layer (int, optional): explain the output of this layer (Python-list indexing; default:
                the last).
            return_all_layers (bool): return ``(L, B, ...)``, the flow from every layer's output
                (costs one flow problem per layer).
            head_fusion, residual_weight, discard_ratio: as in :class:`AttentionRollout`.
            normalize (bool): divide by the sum over inputs; ``False`` gives raw max-flow values.
            backend (str): max-flow engine (``"auto"``, ``"networkx"`` ...; see
                :data:`captum_attnflow.functional.FLOW_BACKENDS`).
            allow_large (bool): run problems whose estimated cost exceeds the safety budget.
            causal_normalization (bool): for decoders, divide each input's flow by the flow the
                explained token sends it under uniform causal attention (its receptive field) and
                rescale to the original sum; see :mod:`captum_attnflow.functional.causal`.
            attention_mask (Tensor, optional): as in :class:`AttentionRollout`.
            return_patch_grid (bool): vision models only: the ``(B, grid_h, grid_w)`` patch scores.
            executor (concurrent.futures.Executor, optional): solve the max-flow problems there
                (a spawned process pool, a Dask ``Client.get_executor()``, a thread pool ...); the
                model runs here and only the fused ``(l, S, S)`` graphs travel. See
                :mod:`captum_attnflow.parallel`.
            chunk_size (int, optional): with ``executor``, examples per submitted task (default: the
                batch split into 8 tasks).
            show_progress (bool, optional): a progress bar over the max-flow problems; ``None``
                (default) shows one once the call has run for 2 s, ``True``/``False`` force it.
            edge_weights, start_layer, discard_mode: as in :class:`AttentionRollout`; with
                ``"gradient"``, capacities ``I + Ā_l`` (not renormalised).

        Returns:
            Tensor shaped like ``inputs`` (``(L, *inputs.shape)`` with ``return_all_layers``; a
            ``P`` axis after the batch for several positions), in the model's floating dtype;
            see :class:`AttentionRollout` for images.
        """
        if executor is not None:
            check_executor(executor)
        check_chunk_size(chunk_size)
        if show_progress is not None:
            check_flag("show_progress", show_progress)
        return self._attribute(inputs, additional_forward_args, token_index=token_index, layer=layer,
                               return_all_layers=return_all_layers, head_fusion=head_fusion,
                               attention_mask=attention_mask, return_patch_grid=return_patch_grid,
                               residual_weight=residual_weight, discard_ratio=discard_ratio, normalize=normalize,
                               backend=backend, allow_large=allow_large, causal_normalization=causal_normalization,
                               executor=executor, chunk_size=chunk_size, show_progress=show_progress,
                               target=target, edge_weights=edge_weights, start_layer=start_layer,
                               discard_mode=discard_mode)

    def _propagate(self, captured: CapturedAttention, **options) -> torch.Tensor:
        return attention_flow(captured, **options)
