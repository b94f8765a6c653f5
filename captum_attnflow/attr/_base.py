"""Shared plumbing of the attention-based Captum attributions.

Subclasses only say how per-layer scores follow from the captured attention
(:meth:`AttentionAttributionBase._layer_scores`); capturing, validation, choosing the
explained token and shaping the output live here once.
"""

from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from captum.attr import Attribution
from torch import nn

from captum_attnflow._validation import check_layer, check_position
from captum_attnflow.capture import AttentionAdapter, CapturedAttention, capture_attention, resolve_model
from captum_attnflow.capture.base import find_adapter
from captum_attnflow.exceptions import InvalidInputError, InvalidInputTypeError, InvalidParameterError

TokenIndex = Union[int, str, torch.Tensor, Sequence[int]]
TOKEN_INDEX_MODES = ("mean", "last")


def explained_positions(token_index: TokenIndex, valid: torch.Tensor) -> List[List[int]]:
    """Positions whose rows are explained, per example, from ``token_index``.

    ``valid`` is the ``(B, S)`` bool mask of real tokens. An int (or a ``(B,)`` tensor of
    ints) picks one position, ``"mean"`` every real position (their scores are averaged),
    ``"last"`` the last real position (decoders; works with left or right padding).
    """
    batch_size, seq_len = valid.shape
    if isinstance(token_index, str):
        if token_index not in TOKEN_INDEX_MODES:
            raise InvalidParameterError(
                f"token_index={token_index!r} is not supported; use an int, a (B,) tensor, "
                f"or one of {TOKEN_INDEX_MODES}.")
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


def check_token_inputs(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, tuple) and len(inputs) == 1:
        inputs = inputs[0]
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputTypeError(
            f"inputs must be a torch.Tensor, got {type(inputs).__name__}; pass token ids (B, S) "
            "and the attention mask in additional_forward_args=(attention_mask,).")
    return inputs


class AttentionAttributionBase(Attribution):
    """Base class: capture attention once, turn it into per-layer token scores.

    Args:
        forward_func: the model, or a function of ``(inputs, *additional_forward_args)``
            running it (then also pass ``model``).
        model: the module holding the attention layers when ``forward_func`` is a function.
        adapter: an explicit :class:`~captum_attnflow.capture.AttentionAdapter`; by default the
            registered adapter for the model's family is used.
    """

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, *,
                 adapter: Optional[AttentionAdapter] = None) -> None:
        super().__init__(forward_func)
        self.model = resolve_model(forward_func, model)
        self.adapter = adapter if adapter is not None else find_adapter(self.model)

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
                   head_fusion, **kwargs) -> torch.Tensor:
        inputs = check_token_inputs(inputs)
        if not isinstance(return_all_layers, bool):
            raise InvalidParameterError("return_all_layers must be True or False.")
        captured = self.capture(inputs, additional_forward_args, head_fusion=head_fusion)
        num_layers, batch_size, _, seq_len, _ = captured.attentions.shape
        valid = self._valid_tokens(captured, batch_size, seq_len)
        if return_all_layers:
            layers = list(range(num_layers))
        else:
            layers = [check_layer(layer, num_layers)]
        positions = explained_positions(token_index, valid)
        scores = self._layer_scores(captured, valid, positions, layers, **kwargs)
        scores = self.adapter.scores_to_inputs(scores, inputs)
        return scores if return_all_layers else scores[0]

    @staticmethod
    def _valid_tokens(captured: CapturedAttention, batch_size: int, seq_len: int) -> torch.Tensor:
        mask = captured.attention_mask
        if mask is None:
            return torch.ones(batch_size, seq_len, dtype=torch.bool)
        if tuple(mask.shape) != (batch_size, seq_len):
            raise InvalidInputError(
                f"attention_mask has shape {tuple(mask.shape)} but the model attended over "
                f"(batch, seq_len) = ({batch_size}, {seq_len}); pass one 0/1 entry per token.")
        mask = mask.bool().cpu()
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise InvalidInputError(
                f"attention_mask marks every token of example(s) {empty} as padding; each example "
                "needs at least one real token.")
        return mask
