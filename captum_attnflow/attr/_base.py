"""Shared plumbing of the attention-based Captum attributions.

Every class runs the same three steps, and only the second differs:

1. check everything that can be checked without the model, then capture the attention of
   one forward pass (:func:`~captum_attnflow.capture.capture_attention`);
2. call its function of the functional API on the captured weights
   (:func:`~captum_attnflow.functional.attention_rollout`,
   :func:`~captum_attnflow.functional.attention_flow`,
   :func:`~captum_attnflow.functional.raw_attention`), so the classes and the functional API
   give identical results for the same options;
3. map the token scores onto the inputs' shape and follow Captum's conventions (a tuple of
   inputs gives a tuple of attributions).
"""

from numbers import Integral
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from captum.attr import Attribution
from torch import nn

from captum_attnflow._validation import (
    check_choice,
    check_flag,
    check_fraction,
    check_head_fusion,
    check_layer,
    check_model_inputs,
)
from captum_attnflow.capture import AttentionAdapter, CapturedAttention, capture_attention
from captum_attnflow.capture.custom import WeightsReader, make_adapter
from captum_attnflow.capture.gradients import capture_attention_gradients, check_target
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.functional import FLOW_BACKENDS, check_token_index
from captum_attnflow.functional.fusion import check_edge_options
from captum_attnflow.functional.positions import TokenIndex

#: Result layouts with one row per explained position (``(B, P, ...)``).
MULTI_ROW = ("all",)


def unwrap_inputs(inputs: Any) -> Tuple[Any, bool]:
    """``(tensor, was_tuple)``: Captum passes a 1-tuple for a single input."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise InvalidInputError(
                f"inputs is a tuple of {len(inputs)} tensors; attention methods explain one input (token ids, "
                "embeddings or pixels): pass the others through additional_forward_args.")
        return inputs[0], True
    return inputs, False


def _multi_row(token_index: TokenIndex) -> bool:
    return (isinstance(token_index, str) and token_index in MULTI_ROW) or (
        isinstance(token_index, torch.Tensor) and token_index.ndim == 2)


class AttentionAttributionBase(Attribution):
    """Base class: capture attention once, hand it to the functional API, shape the result.

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

    The padding mask is read from the model's own call for Hugging Face and PyTorch models
    (see :mod:`captum_attnflow.capture`); with ``attention_modules`` or ``attention_fn`` it
    cannot be seen, so pass ``attention_mask=`` to ``attribute`` for padded batches.

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

    def capture(self, inputs: torch.Tensor, additional_forward_args=None, head_fusion: Optional[str] = "mean",
                attention_mask: Optional[torch.Tensor] = None) -> CapturedAttention:
        """Run the model once and return its (head-fused) attention; see :func:`capture_attention`."""
        return capture_attention(self.forward_func, inputs, additional_forward_args, model=self.model,
                                 adapter=self.adapter, head_fusion=head_fusion, attention_mask=attention_mask)

    def capture_gradients(self, inputs: torch.Tensor, additional_forward_args=None, target=None,
                          attention_mask: Optional[torch.Tensor] = None) -> CapturedAttention:
        """Every head's weights and the target's gradient, from one forward and one backward pass;
        see :func:`~captum_attnflow.capture.capture_attention_gradients`."""
        return capture_attention_gradients(self.forward_func, inputs, additional_forward_args, target=target,
                                           model=self.model, adapter=self.adapter, attention_mask=attention_mask)

    def _propagate(self, captured: CapturedAttention, **options) -> torch.Tensor:
        """The functional API's result on the captured weights."""
        raise NotImplementedError

    def _attribute(self, inputs, additional_forward_args, *, token_index: TokenIndex, layer: Optional[int],
                   return_all_layers: bool, head_fusion: str, attention_mask: Optional[torch.Tensor],
                   return_patch_grid: bool = False, target=None, **options) -> Any:
        inputs, was_tuple = unwrap_inputs(inputs)
        inputs = self._check_before_forward(inputs, token_index, layer, return_all_layers, head_fusion,
                                            return_patch_grid, options)
        if options.get("edge_weights", "attention") == "attention":
            # Class-agnostic: the target is accepted (for drop-in use in Captum loops) and not used.
            captured = self.capture(inputs, additional_forward_args, head_fusion=head_fusion,
                                    attention_mask=attention_mask)
        else:
            check_target(target)
            captured = self.capture_gradients(inputs, additional_forward_args, target=target,
                                              attention_mask=attention_mask)
        scores = self._propagate(captured, token_index=token_index, layer=layer, return_all_layers=return_all_layers,
                                 head_fusion=head_fusion, **options)
        scores = self._to_input_shape(scores if return_all_layers else scores[None], inputs, token_index,
                                      return_patch_grid)
        scores = scores if return_all_layers else scores[0]
        return (scores,) if was_tuple else scores

    def _check_before_forward(self, inputs, token_index, layer, return_all_layers, head_fusion, return_patch_grid,
                              options: Dict[str, Any]) -> torch.Tensor:
        """Everything checkable without the model, so that nothing fails after a forward pass."""
        self._check_options(layer, return_all_layers, head_fusion, return_patch_grid, options)
        inputs = self.adapter.check_inputs(inputs)
        check_model_inputs(inputs, self.adapter.vocabulary_size())
        sequence_length = self.adapter.sequence_length(inputs)
        check_token_index(token_index, inputs.shape[0] if inputs.ndim >= 2 else None, sequence_length)
        return inputs

    def _check_options(self, layer, return_all_layers, head_fusion, return_patch_grid,
                       options: Dict[str, Any]) -> None:
        """The options that do not depend on the inputs (also checked by LLMAttentionAttribution
        before it generates)."""
        check_head_fusion(head_fusion)
        check_flag("return_all_layers", return_all_layers)
        check_flag("return_patch_grid", return_patch_grid)
        for name in ("normalize", "allow_large", "causal_normalization"):
            if name in options:
                check_flag(name, options[name])
        if "residual_weight" in options:
            check_fraction("residual_weight", options["residual_weight"])
        if "discard_ratio" in options:
            check_fraction("discard_ratio", options["discard_ratio"], upper_open=True)
        if "backend" in options:
            check_choice("backend", options["backend"], FLOW_BACKENDS,
                         "('auto' picks the fastest exact engine)")
        check_edge_options(options.get("edge_weights", "attention"), head_fusion=head_fusion,
                           residual_weight=options.get("residual_weight", 0.5),
                           discard_mode=options.get("discard_mode", "row"),
                           causal_normalization=options.get("causal_normalization", False))
        if return_all_layers and layer is not None:
            raise InvalidParameterError(
                f"layer={layer!r} and return_all_layers=True contradict each other: return_all_layers returns "
                "every layer; drop one of them.")
        num_layers = self.adapter.expected_num_layers()
        if num_layers is not None and layer is not None:
            check_layer(layer, num_layers)
        start_layer = options.get("start_layer", 0)
        if isinstance(start_layer, bool) or not isinstance(start_layer, Integral):
            raise InvalidParameterError(
                f"start_layer must be an int indexing the layers like a Python list, got {type(start_layer).__name__}.")
        if num_layers is not None:
            check_layer(start_layer, num_layers, "start_layer")

    def _to_input_shape(self, scores: torch.Tensor, inputs: torch.Tensor, token_index, return_patch_grid: bool):
        """``(n, B, [P,] S)`` token scores onto the inputs' shape, row by row for several positions."""
        options = {"return_patch_grid": True} if return_patch_grid else {}
        if not _multi_row(token_index):
            return self.adapter.scores_to_inputs(scores, inputs, **options)
        num_layers, batch_size, num_rows, seq_len = scores.shape
        # Map each explained row like a single-position result, then put the rows after the batch.
        rows = scores.transpose(1, 2).reshape(num_layers * num_rows, batch_size, seq_len)
        mapped = self.adapter.scores_to_inputs(rows, inputs, **options)
        if mapped.shape[1] != batch_size:
            raise InvalidParameterError(
                f"token_index={'a (B, P) tensor' if isinstance(token_index, torch.Tensor) else repr(token_index)} "
                "gives one row per position, which needs batch-first inputs; pass (B, S, ...) inputs.")
        mapped = mapped.reshape(num_layers, num_rows, *mapped.shape[1:])
        return mapped.transpose(1, 2)
