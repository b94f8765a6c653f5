"""Which attention stack is explained, and whether it received ``inputs``.

A model may hold several attention stacks: the two towers of CLIP, SigLIP or a sentence
dual encoder, the encoder and the decoder of T5 or BART. An attribution explains exactly one:
the one named with ``stack=`` (a submodule or its dotted name, e.g. ``stack="text_model"``),
or the model's only one. Several candidate stacks and no ``stack=`` is an error that lists
them, never a guess. (Encoder-decoder models keep their encoder as the default, since the
decoder cannot be explained by these classes; see below.)

Each capture then checks that the hooked stack received ``inputs``, in a forward pre-hook on
the stack (:func:`check_received`): same values, same order, same batch, so a wrapper that
explains one tower while ``inputs`` feed the other, sorts the batch, truncates, or feeds
``inputs`` to the decoder of an encoder-decoder is refused with the stack named. The check is
cheap: identity or the same storage first, then one ``torch.equal``.

Where the stack receives something computed from ``inputs`` inside the forward function,
the match cannot be established by value; the rules are conservative:

* Hugging Face stacks receiving ``inputs_embeds`` while ``inputs`` are token ids: the
  embeddings must equal the model's input-embedding lookup of ``inputs``, else refused.
* Pixels must reach a vision stack unchanged (move resizing or normalisation out of the
  forward function and attribute over the transformed pixels).
* ``nn.MultiheadAttention`` stacks: embeddings passed as ``inputs`` must be the first
  layer's query (or its transpose, which fixes the layout); embeddings computed inside the
  model (token ids as ``inputs``) are checked by their ``(batch, positions)`` shape only,
  so a wrapper permuting the batch *after* embedding cannot be seen there.
* User-named modules (``attention_modules=``) and ``attention_fn=`` are not checked.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from captum_attnflow.exceptions import AttentionCaptureError, InvalidParameterError

StackChoice = Union[str, nn.Module, None]

#: Where a decoder of an encoder-decoder model is explained.
SEQ2SEQ_CLASS = "captum_attnflow.attr.Seq2SeqAttentionAttribution"
SEQ2SEQ_HINT = (f"A decoder reads the encoder through cross-attention, so explaining it needs the encoder-decoder "
                f"class ({SEQ2SEQ_CLASS}); these classes explain the encoder (stack='encoder') only.")


def resolve_stack(model: nn.Module, stack: StackChoice) -> Optional[nn.Module]:
    """The submodule ``stack`` names (a dotted name or the module itself), checked to be inside ``model``."""
    if stack is None:
        return None
    if isinstance(stack, str):
        try:
            return model.get_submodule(stack) if stack else model
        except AttributeError:
            children = [name for name, _ in model.named_children()]
            raise InvalidParameterError(
                f"stack={stack!r} is not a submodule of {type(model).__name__}; pass a dotted module name "
                f"(its children: {children}) or the module itself.") from None
    if isinstance(stack, nn.Module):
        if not any(module is stack for module in model.modules()):
            raise InvalidParameterError(
                f"stack={type(stack).__name__} is not a submodule of {type(model).__name__}; pass a module of the "
                "model being explained (or its dotted name).")
        return stack
    raise InvalidParameterError(
        f"stack must be a submodule of the model or its dotted name (str), got {type(stack).__name__}.")


def module_name(model: Optional[nn.Module], module: nn.Module) -> str:
    """``module``'s dotted name inside ``model`` (for messages)."""
    if model is not None:
        for name, candidate in model.named_modules():
            if candidate is module:
                return repr(name) if name else f"the whole {type(model).__name__}"
    return type(module).__name__


def _attention_counts(root: nn.Module, targets: set) -> Dict[int, int]:
    """Attention modules inside each module of ``root`` (one walk)."""
    counts: Dict[int, int] = {}

    def visit(module: nn.Module) -> int:
        if id(module) in counts:
            return counts[id(module)]
        counts[id(module)] = 0  # shared submodules: counted once
        total = int(id(module) in targets) + sum(visit(child) for child in module.children())
        counts[id(module)] = total
        return total

    visit(root)
    return counts


def _is_tower(module: nn.Module, counts: Dict[int, int]) -> bool:
    """A module that holds a stack of its own: a layer list with attention, or a whole pretrained model."""
    if hasattr(module, "config") and hasattr(module, "base_model_prefix"):
        return True  # a Hugging Face PreTrainedModel (not imported here)
    return any(isinstance(m, (nn.ModuleList, nn.Sequential)) and counts.get(id(m), 0) for m in module.modules())


def candidate_stacks(root: nn.Module, attention_modules: Sequence[nn.Module]) -> List[Tuple[str, nn.Module]]:
    """The separate attention stacks inside ``root``: ``[(dotted name, module)]``.

    Walks down from ``root`` while one child holds every attention module. At the first
    module whose attention is spread over several children: the children of a layer list
    (``ModuleList``/``Sequential``) are the layers of one stack; otherwise each child that
    holds a stack of its own (a layer list with attention, or a pretrained model) is a
    tower (CLIP's ``text_model`` and ``vision_model``, a dual encoder's two encoders). A
    model without such a split has one stack, returned as ``[(name, root-most holder)]``.

    Example:
        >>> enc = lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2), 2, enable_nested_tensor=False)
        >>> two = nn.ModuleDict({"query": enc(), "doc": enc()})
        >>> attention = [m for m in two.modules() if isinstance(m, nn.MultiheadAttention)]
        >>> [name for name, _ in candidate_stacks(two, attention)]
        ['query', 'doc']
        >>> [name for name, _ in candidate_stacks(two["query"], attention)]  # one stack: its layer list
        ['layers']
    """
    targets = {id(m) for m in attention_modules}
    counts = _attention_counts(root, targets)
    name, module = "", root
    while id(module) not in targets:
        holders = [(f"{name}.{child_name}" if name else child_name, child)
                   for child_name, child in module.named_children() if counts.get(id(child), 0)]
        if len(holders) == 1 and counts[id(holders[0][1])] == counts[id(module)]:
            name, module = holders[0]
            continue
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            break
        towers = [(child_name, child) for child_name, child in holders if _is_tower(child, counts)]
        if len(towers) >= 2:
            return towers
        break
    return [(name, module)]


def refuse_ambiguous(model: nn.Module, candidates: List[Tuple[str, nn.Module]]) -> None:
    """Several stacks and no ``stack=``: an error listing them (never a guess)."""
    names = ", ".join(f"{name!r} ({type(module).__name__})" for name, module in candidates)
    first = candidates[0][0]
    raise InvalidParameterError(
        f"{type(model).__name__} holds {len(candidates)} attention stacks: {names}. Choose the one that receives "
        f"`inputs` with stack=..., e.g. AttentionRollout(forward_func, model=model, stack={first!r}); explain each "
        "tower of a two-tower model in its own call.")


# ---------------------------------------------------------------------------- did the stack receive inputs?

def same_tensor(received: torch.Tensor, inputs: torch.Tensor) -> bool:
    """``received`` holds the values of ``inputs`` in the same order (device and dtype casts allowed).

    Cheap first: the same object, or the same storage, shape and strides; then one ``torch.equal``.
    """
    if received is inputs:
        return True
    if tuple(received.shape) != tuple(inputs.shape):
        return False
    if (received.device == inputs.device and received.dtype == inputs.dtype
            and received.data_ptr() == inputs.data_ptr() and received.stride() == inputs.stride()):
        return True
    if received.is_floating_point() != inputs.is_floating_point():
        return False
    return torch.equal(received, inputs.to(device=received.device, dtype=received.dtype))


def check_received(received: Optional[torch.Tensor], inputs: Optional[torch.Tensor], *,
                   stack: Callable[[], str], argument: str, hint: str = "") -> None:
    """Refuse when the stack was called with something other than ``inputs``.

    ``stack()`` names the stack for the message (only called when refusing: naming walks the model).
    """
    if inputs is None:
        return  # capture_attention called without a tensor to compare: nothing to check
    if isinstance(received, torch.Tensor) and same_tensor(received, inputs):
        return
    got = "nothing" if not isinstance(received, torch.Tensor) else f"a tensor of shape {tuple(received.shape)}"
    if isinstance(received, torch.Tensor) and tuple(received.shape) == tuple(inputs.shape):
        got += " with other values (or in another order)"
    raise AttentionCaptureError(
        f"The explained attention stack {stack()} received {got} as {argument}, not `inputs` (shape "
        f"{tuple(inputs.shape)}), so its attention would not explain `inputs`. " + (hint or
        "Pass the tensor that reaches this stack as inputs, unchanged and in the same batch order, or choose "
        "the stack that receives `inputs` with stack=... (a submodule or its dotted name)."))


def looks_like_padding_mask(value, shape: Tuple[int, int], *, bool_only: bool) -> bool:
    """A ``(B, S)`` bool or 0/1 tensor that marks some positions differently from others."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.is_floating_point():
        return False
    if value.dtype != torch.bool and (bool_only or bool(((value != 0) & (value != 1)).any())):
        return False
    return bool((value != value.flatten()[0]).any())


def refuse_dropped_mask(forward_args: Sequence, shape: Tuple[int, int], reached: Sequence, *,
                        stack: Callable[[], str], bool_only: bool) -> None:
    """A padding-mask-like extra argument that never reached the unmasked stack: the wrapper dropped it.

    Without it the model attends to padding and ``token_index="last"``/``"mean"`` would read
    padding as real tokens, silently. Only called when the stack received no padding mask.
    """
    for position, value in enumerate(forward_args):
        if not looks_like_padding_mask(value, shape, bool_only=bool_only):
            continue
        if any(isinstance(r, torch.Tensor) and same_tensor(r, value) for r in reached):
            continue  # it reached the stack under another name (token_type_ids, say)
        raise AttentionCaptureError(
            f"additional_forward_args[{position}] looks like a padding mask (shape {tuple(shape)}, two values) but "
            f"the explained stack {stack()} received no padding mask, so the model attended to every position "
            "(padding included). Pass the mask to the model in forward_func (e.g. attention_mask=... / "
            "src_key_padding_mask=...); if the tensor is no padding mask, pass it through a closure instead of "
            "additional_forward_args.")
