"""Capture attention weights *and* the gradient of a target output with respect to them.

The gradient edge weightings (``edge_weights="gradient"``, Chefer et al. 2021; ``"grad_rollout"``,
vit-explain) need, for every layer and head, ``A`` and ``∂y_t/∂A`` where ``y_t`` is the
explained output. :func:`capture_attention_gradients` gets both from **one forward and one
backward pass**:

* The forward pass runs with gradients enabled and the adapter's hooks keep the weights each
  attention module returns *as tensors of the autograd graph*. Every adapter that hooks the
  model reads the probabilities that multiply the values: Hugging Face's eager attention
  returns ``dropout(softmax(q·kᵀ))``, the very tensor of the ``matmul`` with the values
  (dropout returns its input unchanged in eval mode); timm's ``attn_drop`` output is that
  tensor; ``nn.MultiheadAttention`` returns a ``(B, H, S, S)`` view of it made after the product,
  so the gradient is taken at the viewed tensor (:func:`_multiplied_tensor`). A layer whose
  weights the output does not depend on through the graph is an error, never a zero gradient.
* The target follows Captum's conventions (:func:`select_target_outputs`): an int, a tuple, a
  tensor or a list with one entry per example picks one scalar per example. The selected
  outputs are **summed over the batch** and ``torch.autograd.grad`` differentiates that sum
  with respect to the weights only, once. Examples do not interact in a model in eval mode
  (no batch statistics), so the gradient of the sum with respect to example ``b``'s weights is
  the gradient of example ``b``'s own output: one backward pass serves the batch. BatchNorm in
  training mode couples the examples and is refused.
* The model is left as it was: parameters' ``.grad`` are never touched (only the weights are
  differentiated, ``torch.autograd.grad`` instead of ``.backward()``); parameters frozen with
  ``requires_grad=False`` are switched on for the call (the graph must reach the weights) and
  switched back; hooks are removed and eager attention is undone as for
  :func:`~captum_attnflow.capture.capture_attention`, even when something raises.

Models whose weights come from ``attention_fn=`` (computed apart from the output) cannot be
differentiated this way and are refused.
"""

import contextlib
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from captum_attnflow._compat import select_targets
from captum_attnflow.capture.base import (
    AttentionAdapter,
    CapturedAttention,
    CaptureSession,
    _check_layer_count,
    _checked_call,
    _new_session,
    _observed_or_explicit_mask,
    _recording_hooks,
    _stack_counter,
    model_lock,
)
from captum_attnflow.capture.stacks import StackChoice
from captum_attnflow.exceptions import (
    AttentionCaptureError,
    InvalidInputTypeError,
    InvalidParameterError,
    UnsupportedModelError,
)

__all__ = [
    "CapturedAttentionGradients",
    "capture_attention_gradients",
    "capture_attention_gradients_per_target",
    "check_target",
    "select_target_outputs",
]


@dataclass
class CapturedAttentionGradients(CapturedAttention):
    """:class:`~captum_attnflow.capture.CapturedAttention` with every head kept and the gradient.

    Attributes:
        attention_grads: ``(L, B, H, S, S)``: ``∂y_b/∂A`` for each example's selected output
            ``y_b`` (rows of padded queries and columns of padded keys zeroed).
        target_outputs: ``(B,)`` the selected outputs ``y_b`` (detached).
    """

    attention_grads: Optional[torch.Tensor] = None
    target_outputs: Optional[torch.Tensor] = None


def check_target(target: Any) -> Any:
    """Refuse, before the forward pass, a ``target`` that is none of Captum's forms.

    Captum's forms (``captum._utils.common._select_targets``): None, an int, a tuple of ints,
    a tensor (one element, or one index per example), or a list with an int or a tuple per
    example.
    """
    if target is None or (isinstance(target, Integral) and not isinstance(target, bool)):
        return target
    if isinstance(target, tuple) and all(isinstance(t, Integral) and not isinstance(t, bool) for t in target):
        return target
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex() or target.ndim > 1:
            raise InvalidInputTypeError(
                f"target must be an integer tensor (one index, or one per example), got dtype {target.dtype} and "
                f"shape {tuple(target.shape)}.")
        return target
    if isinstance(target, list) and target:
        ints = all(isinstance(t, Integral) and not isinstance(t, bool) for t in target)
        tuples = all(isinstance(t, tuple) for t in target)
        if ints or tuples:
            return target
    raise InvalidInputTypeError(
        f"target={target!r} is not a Captum target: use an int (the output column), a tuple of ints, an integer "
        "tensor (one index, or one per example) or a list with an int or a tuple per example.")


def _output_tensor(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits  # a Hugging Face ModelOutput: its logits are what Captum's users explain
    raise AttentionCaptureError(
        f"forward_func returned {type(outputs).__name__}, not a tensor, so there is no output to differentiate; "
        "wrap the model so that it returns the output to explain, e.g. forward_func=lambda ids, mask: "
        "model(input_ids=ids, attention_mask=mask).pooler_output.sum(-1) (with model=model).")


def select_target_outputs(outputs: Any, target: Any, batch_size: int) -> torch.Tensor:
    """The ``(B,)`` outputs ``target`` picks, one scalar per example, as Captum picks them.

    ``outputs`` is the forward function's return value (a tensor, or a Hugging Face output with
    ``logits``). ``target=None`` needs one scalar per example (shape ``(B,)`` or ``(B, 1)``).
    """
    output = _output_tensor(outputs)
    if output.ndim == 0 or output.shape[0] != batch_size:
        raise AttentionCaptureError(
            f"forward_func returned shape {tuple(output.shape)}; gradient edge weights need the batch first "
            f"({batch_size} examples).")
    try:
        selected = select_targets(output, target)
    except (AssertionError, IndexError, RuntimeError, ValueError) as error:
        raise InvalidParameterError(
            f"target={target!r} cannot select from an output of shape {tuple(output.shape)} ({error}); see "
            "Captum's target conventions: an int picks output[:, target], a tuple output[(slice(None), *target)], "
            "a list or (B,) tensor one entry per example.") from error
    if selected.ndim == 2 and selected.shape[1] == 1:
        selected = selected[:, 0]
    if tuple(selected.shape) != (batch_size,):
        what = "the output itself" if target is None else f"target={target!r}"
        raise InvalidParameterError(
            f"{what} gives shape {tuple(selected.shape)} from an output of shape {tuple(output.shape)}, not one "
            f"scalar per example; the gradient edge weights explain one output per example: pass a target that "
            "picks it (e.g. target=class_index for (B, C) logits, target=(position, token) for (B, S, V)), or "
            "make forward_func return (B,) scores.")
    if not selected.is_floating_point():
        raise AttentionCaptureError(f"the selected outputs have dtype {selected.dtype}; they must be floating point "
                                    "to be differentiated.")
    return selected


def _check_batch_independence(model: Optional[nn.Module]) -> None:
    """One backward pass of the summed outputs is per-example exact only if examples do not interact."""
    if not isinstance(model, nn.Module):
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise UnsupportedModelError(
                f"{type(module).__name__} is in training mode: batch statistics couple the examples, so the gradient "
                "of one example's output would depend on the others. Call model.eval() first.")


@contextlib.contextmanager
def _graph_through_parameters(model: Optional[nn.Module]) -> Iterator[None]:
    """Gradients on for the call; frozen parameters (``requires_grad=False``) unfrozen and refrozen.

    Token ids carry no gradient, so with every parameter frozen no attention weight would be
    in the graph. Only ``torch.autograd.grad`` with respect to the weights runs, so no
    parameter's ``.grad`` is ever written.
    """
    if torch.is_inference_mode_enabled():
        raise AttentionCaptureError(
            "gradient edge weights need autograd, but torch.inference_mode() is active; call attribute outside it.")
    frozen = [] if not isinstance(model, nn.Module) else [p for p in model.parameters() if not p.requires_grad]
    try:
        for parameter in frozen:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


def _multiplied_tensor(weights: torch.Tensor) -> torch.Tensor:
    """The graph tensor to differentiate: ``weights``, or the tensor they merely reshape.

    ``nn.MultiheadAttention`` multiplies ``(B·H, S, S)`` probabilities with the values and returns
    a ``(B, H, S, S)`` view made afterwards, which the output does not depend on; the gradient is
    taken at the viewed tensor and reshaped (same elements, same order).
    """
    base = weights._base
    if (base is not None and base.requires_grad and base.numel() == weights.numel() and weights.is_contiguous()
            and base.is_contiguous() and base.storage_offset() == weights.storage_offset()):
        return base
    return weights


def _live_recording_hooks(adapter: AttentionAdapter, modules: Sequence[nn.Module], session: CaptureSession,
                          live: List[torch.Tensor]):
    """The capture's recording hooks, also keeping each layer's graph tensor (every head)."""

    def keep_live(weights: torch.Tensor, where: str) -> None:
        if not weights.requires_grad:
            raise AttentionCaptureError(
                f"{where} returned weights that are not part of the autograd graph (computed under no_grad or "
                "detached), so the output's gradient with respect to them cannot be taken; gradient edge weights "
                "need the weights the model multiplies the values with.")
        live.append(_multiplied_tensor(weights))

    return _recording_hooks(adapter, modules, session, on_weights=keep_live)


def _record_live(adapter: AttentionAdapter, forward_func: Callable, inputs: torch.Tensor, forward_args: Tuple,
                 session: CaptureSession, live: List[torch.Tensor]) -> Any:
    """:meth:`AttentionAdapter.record` with gradients: the same preparation and hooks, graph kept."""
    if type(adapter).record is not AttentionAdapter.record:
        raise UnsupportedModelError(
            f"The '{adapter.name}' adapter gets the attention weights apart from the model's forward pass "
            "(attention_fn=...), so the output's gradient with respect to them does not exist; gradient edge weights "
            "need hooks on the model's attention modules (attention_modules=[...] or a supported model).")
    with adapter.prepared(session):
        modules = adapter.attention_modules()
        if not modules:
            raise AttentionCaptureError(
                f"No attention layers found in {type(adapter.model).__name__} by the '{adapter.name}' adapter; "
                "name them with attention_modules=[...].")
        with adapter.mask_observers(session), _stack_counter(adapter.stack_module(), session), \
                _live_recording_hooks(adapter, modules, session, live), _graph_through_parameters(adapter.model):
            outputs = forward_func(inputs, *forward_args)
    if not session.recorded:
        raise AttentionCaptureError(
            f"The forward pass ran none of the {len(modules)} attention modules found by the '{adapter.name}' "
            "adapter; check that forward_func runs this model.")
    return outputs


def _gradients(selected: torch.Tensor, live: List[torch.Tensor], recorded_layers: List[torch.Tensor],
               retain_graph: bool) -> torch.Tensor:
    """``(L, B, H, S, S)``: the gradient of ``selected.sum()`` with respect to each live layer
    (reshaped like the recorded ``(B, H, S, S)`` weights)."""
    if not selected.requires_grad:
        raise AttentionCaptureError(
            "the selected outputs do not depend on the model through the autograd graph (computed under no_grad, "
            "detached, or from integers); gradient edge weights need a differentiable output.")
    grads = torch.autograd.grad(selected.sum(), live, retain_graph=retain_graph, allow_unused=True)
    missing = [layer for layer, grad in enumerate(grads, start=1) if grad is None]
    if missing:
        raise AttentionCaptureError(
            f"the selected output does not depend on the weights of attention layer(s) {missing} through the graph; "
            "the weights the model returns are not the ones it multiplies the values with, so their gradient "
            "cannot weigh the edges.")
    return torch.stack([grad.detach().reshape(recorded.shape) for grad, recorded in zip(grads, recorded_layers)])


def capture_attention_gradients_per_target(forward_func: Callable, inputs: torch.Tensor,
                                           additional_forward_args=None, *, targets: Sequence[Any],
                                           model: Optional[nn.Module] = None,
                                           adapter: Optional[AttentionAdapter] = None,
                                           attention_mask: Optional[torch.Tensor] = None,
                                           stack: StackChoice = None) -> List[CapturedAttentionGradients]:
    """One forward pass and one backward pass per target: a capture for each of ``targets``.

    The weights (every head) are shared by the captures; each target (Captum's forms, see
    :func:`select_target_outputs`) gets its own ``attention_grads``.
    """
    targets = [check_target(target) for target in targets]
    if not targets:
        raise InvalidParameterError("targets is empty; pass at least one target.")
    adapter, forward_args = _checked_call(forward_func, inputs, additional_forward_args, model, adapter, stack)
    _check_batch_independence(adapter.model)
    session = _new_session(adapter, inputs, forward_args, None, attention_mask)
    live: List[torch.Tensor] = []
    with model_lock(adapter.lock_key()):
        outputs = _record_live(adapter, forward_func, inputs, forward_args, session, live)
    _check_layer_count(adapter, session)
    attentions = torch.stack(session.recorded)
    mask = _observed_or_explicit_mask(adapter, session, attention_mask, attentions.shape[1], attentions.shape[-1])
    batch_size = attentions.shape[1]
    captures = []
    for number, target in enumerate(targets):
        selected = select_target_outputs(outputs, target, batch_size)
        grads = _gradients(selected, live, session.recorded, retain_graph=number < len(targets) - 1)
        if mask is not None and not bool(mask.all()):
            real = mask.to(grads.device)
            grads = grads.masked_fill(~(real[None, :, None, :, None] & real[None, :, None, None, :]), 0.0)
        captures.append(CapturedAttentionGradients(
            attentions=attentions, attention_mask=mask, head_fusion=None, checked=True, outputs=outputs,
            adapter=adapter, batch_first=session.batch_first, attention_grads=grads,
            target_outputs=selected.detach()))
    return captures


def capture_attention_gradients(forward_func: Callable, inputs: torch.Tensor, additional_forward_args=None, *,
                                target: Any = None, model: Optional[nn.Module] = None,
                                adapter: Optional[AttentionAdapter] = None,
                                attention_mask: Optional[torch.Tensor] = None,
                                stack: StackChoice = None) -> CapturedAttentionGradients:
    """Run ``forward_func(inputs, *additional_forward_args)`` once, differentiate the target once.

    The result can be handed to :func:`~captum_attnflow.functional.attention_rollout` and
    :func:`~captum_attnflow.functional.attention_flow` with ``edge_weights="gradient"`` or
    ``"grad_rollout"`` (the gradients travel with it).

    Args:
        forward_func, inputs, additional_forward_args, model, adapter, attention_mask, stack: as
            in :func:`~captum_attnflow.capture.capture_attention`.
        target: which output to explain, one scalar per example, in Captum's conventions
            (:func:`select_target_outputs`); None when ``forward_func`` returns ``(B,)`` scores.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...     num_attention_heads=2, intermediate_size=16, num_labels=3)).eval()
        >>> captured = capture_attention_gradients(model, torch.tensor([[1, 5, 7, 2]]), target=2)
        >>> tuple(captured.attentions.shape), tuple(captured.attention_grads.shape)
        ((2, 1, 2, 4, 4), (2, 1, 2, 4, 4))
        >>> any(p.grad is not None for p in model.parameters())     # parameters' .grad untouched
        False
    """
    return capture_attention_gradients_per_target(
        forward_func, inputs, additional_forward_args, targets=[target], model=model, adapter=adapter,
        attention_mask=attention_mask, stack=stack)[0]
