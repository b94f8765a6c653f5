"""Shared plumbing of the attention-based Captum attributions.

Subclasses only say how per-layer scores follow from the captured attention
(:meth:`AttentionAttributionBase._layer_scores`); capturing, validation, choosing the
explained token and shaping the output live here once.
"""

from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from captum.attr import Attribution
from torch import nn

from captum_attnflow._validation import (
    check_attention_mask,
    check_attentions,
    check_layer,
    check_mask_matches_inputs,
    check_method_options,
    check_model_inputs,
    check_position,
    check_token_index,
)
from captum_attnflow.capture import AttentionAdapter, CapturedAttention, capture_attention
from captum_attnflow.capture.base import mask_from_forward_args
from captum_attnflow.capture.custom import WeightsReader, make_adapter
from captum_attnflow.exceptions import InvalidParameterError
from captum_attnflow.functional._maxflow import check_backend

TokenIndex = Union[int, str, torch.Tensor, Sequence[int]]
TOKEN_INDEX_MODES = ("mean", "last")


def explained_positions(token_index: TokenIndex, valid: torch.Tensor) -> List[List[int]]:
    """Positions whose rows are explained, per example, from ``token_index``.

    ``valid`` is the ``(B, S)`` bool mask of real tokens. An int (or a ``(B,)`` tensor of
    ints) picks one position, ``"mean"`` every real position (their scores are averaged),
    ``"last"`` the last real position (decoders; works with left or right padding).
    """
    batch_size, seq_len = valid.shape
    check_token_index(token_index, TOKEN_INDEX_MODES)
    if isinstance(token_index, str):
        real = [valid[b].nonzero().flatten().tolist() for b in range(batch_size)]
        return real if token_index == "mean" else [[positions[-1]] for positions in real]
    if isinstance(token_index, torch.Tensor) and token_index.ndim == 1 or isinstance(token_index, (list, tuple)):
        per_example = token_index.tolist() if isinstance(token_index, torch.Tensor) else list(token_index)
        if len(per_example) != batch_size:
            raise InvalidParameterError(
                f"token_index has {len(per_example)} entries but the batch has {batch_size} examples; "
                "pass one position per example.")
    else:
        if isinstance(token_index, torch.Tensor):
            token_index = token_index.item()
        per_example = [token_index] * batch_size
    positions = []
    for b, index in enumerate(per_example):
        position = check_position(index, seq_len, "token_index")
        if not valid[b, position]:
            raise InvalidParameterError(
                f"token_index={index} points at a padding position of example {b}; explain a real "
                "token (token_index='last' finds the last real token of each example).")
        positions.append([position])
    return positions


def unwrap_inputs(inputs: Any) -> Any:
    """Captum passes a 1-tuple for a single input; the attention methods take one tensor."""
    if isinstance(inputs, tuple) and len(inputs) == 1:
        return inputs[0]
    return inputs


class AttentionAttributionBase(Attribution):
    """Base class: capture attention once, turn it into per-layer token scores.

    Args:
        forward_func: the model, or a function of ``(inputs, *additional_forward_args)``
            running it (then also pass ``model``).
        model: the module holding the attention layers when ``forward_func`` is a function.
        adapter: an explicit :class:`~captum_attnflow.capture.AttentionAdapter`; by default the
            registered adapter for the model's family is used (Hugging Face text and vision
            models, timm ViTs, ``nn.MultiheadAttention``/``nn.TransformerEncoder``).
        attention_modules: for other models, the modules whose outputs carry each layer's
            ``(B, H, S, S)`` weights (by default ``output[1]``, or the output itself if 4-D).
        weights_from_output: with ``attention_modules``, ``callable(module, output)`` returning
            the weights for other output formats.
        attention_fn: instead of hooks, ``callable(inputs, *additional_forward_args)`` returning
            the L per-layer ``(B, H, S, S)`` weights; ``model`` is then optional.

    Example:
        >>> import torch
        >>> from captum_attnflow import AttentionRollout
        >>> weights = torch.softmax(torch.randn(2, 1, 2, 4, 4), -1)
        >>> rollout = AttentionRollout(lambda ids: ids.float(), attention_fn=lambda ids: weights)
        >>> tuple(rollout.attribute(torch.tensor([[1, 2, 3, 4]])).shape)
        (1, 4)
    """

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, *,
                 adapter: Optional[AttentionAdapter] = None,
                 attention_modules: Optional[Sequence[nn.Module]] = None,
                 weights_from_output: Optional[WeightsReader] = None,
                 attention_fn: Optional[Callable] = None) -> None:
        super().__init__(forward_func)
        self.adapter = make_adapter(forward_func, model, adapter=adapter, attention_modules=attention_modules,
                                    weights_from_output=weights_from_output, attention_fn=attention_fn)
        self.model = self.adapter.model if self.adapter.model is not None else model

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        return False

    def capture(self, inputs: torch.Tensor, additional_forward_args=None,
                head_fusion: Optional[str] = "mean") -> CapturedAttention:
        """Run the model once and return its (head-fused) attention; see :func:`capture_attention`."""
        return capture_attention(self.forward_func, inputs, additional_forward_args, model=self.model,
                                 adapter=self.adapter, head_fusion=head_fusion)

    def _layer_scores(self, captured: CapturedAttention, valid: torch.Tensor,
                      positions: List[List[int]], layers: List[int], **kwargs) -> torch.Tensor:
        """``(len(layers), B, S)`` scores over the attention sequence."""
        raise NotImplementedError

    def _attribute(self, inputs, additional_forward_args, token_index, layer, return_all_layers,
                   head_fusion, *, return_patch_grid: bool = False, **kwargs) -> torch.Tensor:
        inputs = self.adapter.check_inputs(unwrap_inputs(inputs))
        # Everything checkable without the model is checked first: fail fast, never mid-forward.
        check_model_inputs(inputs, self.model)
        check_method_options(dict(kwargs, return_patch_grid=return_patch_grid,
                                  return_all_layers=return_all_layers))
        if "backend" in kwargs:
            check_backend(kwargs["backend"])
        check_token_index(token_index, TOKEN_INDEX_MODES)
        self._check_mask_before_forward(inputs, additional_forward_args)
        captured = self.capture(inputs, additional_forward_args, head_fusion=head_fusion)
        check_attentions(captured.attentions)  # NaN/inf from the model, before any method uses them
        num_layers, batch_size, _, seq_len, _ = captured.attentions.shape
        valid = self._valid_tokens(captured, batch_size, seq_len)
        if return_all_layers:
            layers = list(range(num_layers))
        else:
            layers = [check_layer(layer, num_layers)]
        positions = explained_positions(token_index, valid)
        scores = self._layer_scores(captured, valid, positions, layers, **kwargs)
        # Only vision adapters know the option; others reject it instead of ignoring it.
        options = {"return_patch_grid": True} if return_patch_grid else {}
        scores = self.adapter.scores_to_inputs(scores, inputs, **options)
        return scores if return_all_layers else scores[0]

    def _check_mask_before_forward(self, inputs: torch.Tensor, additional_forward_args) -> None:
        """Where the padding mask is a named forward argument, check it before the model sees it."""
        if type(self.adapter).attention_mask is not AttentionAdapter.attention_mask:
            return  # the adapter finds its mask while the model runs (torch MHA) or has none (vision)
        if additional_forward_args is None:
            return
        forward_args = additional_forward_args if isinstance(additional_forward_args, tuple) \
            else (additional_forward_args,)
        mask = mask_from_forward_args(self.model, forward_args, forward_func=self.forward_func)
        check_mask_matches_inputs(mask, inputs)

    @staticmethod
    def _valid_tokens(captured: CapturedAttention, batch_size: int, seq_len: int) -> torch.Tensor:
        mask = check_attention_mask(captured.attention_mask, batch_size, seq_len)
        return torch.ones(batch_size, seq_len, dtype=torch.bool) if mask is None else mask.cpu()
