"""Capture per-layer attention weights from a model while it runs.

The pipeline's first stage. An *adapter* knows, for one family of models, which
modules compute attention, how to read the ``(B, H, S, S)`` weights from their
outputs, how to prepare the model so the weights exist (for example switching
Hugging Face models from SDPA to eager attention) and how to see the padding mask the
model receives. :func:`capture_attention` runs the forward pass with hooks on those
modules, checks each layer's weights head by head and fuses the heads as soon as the
layer has run, so only ``L·B·S²`` values are kept (``head_fusion=None`` keeps every head).

Guarantees of a capture:

* **The padding mask is the one the model received**, read by a forward pre-hook from the
  model's own call (the ``attention_mask`` argument of a Hugging Face model, bound to its
  signature; the ``key_padding_mask`` reaching ``nn.MultiheadAttention``), whatever the
  wrapper's parameter names or order. Nothing is looked up by name in the caller's
  arguments. Adapters that cannot see the mask (``attention_fn=``, user-named modules) take
  an explicit ``attention_mask=``.
* **Only the calling thread's forward pass is recorded.** Other threads running the same
  model meanwhile are neither recorded nor changed by the hooks. One capture per model runs
  at a time (a per-model lock, since preparing the model changes its state); captures of
  different models run concurrently.
* **One pass of the attention stack.** A forward function that runs the model twice is an
  error, not 2·L layers.
* **The stack that received ``inputs``.** A model with several attention stacks (two towers,
  a dual encoder) needs ``stack=``; the hooked stack must receive ``inputs`` (same values,
  order and batch), and cross-attention is never recorded as self-attention; see
  :mod:`captum_attnflow.capture.stacks`.
* **Values are checked per head, before fusion**: NaN/inf, negative weights and weights
  above 1 raise :class:`~captum_attnflow.exceptions.InvalidInputError` (rows of padded
  queries, which may see nothing but padding, are zeroed first).

Nothing here does graph math. Adapters: ``huggingface`` (text), ``vision`` (ViT/DeiT,
timm), ``torch_nn`` (``nn.MultiheadAttention``) and ``custom`` (user-named modules or a
function returning the weights).
"""

import contextlib
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from captum_attnflow._args import format_forward_args
from captum_attnflow._validation import (
    check_attention_mask,
    check_attention_values,
    check_head_fusion,
    check_token_ids,
    padding_mask_to_valid,
    warn_if_rows_do_not_sum_to_one,
)
from captum_attnflow.capture.stacks import StackChoice, resolve_stack
from captum_attnflow.exceptions import (
    AttentionCaptureError,
    InvalidInputError,
    InvalidParameterError,
    UnsupportedModelError,
)
from captum_attnflow.functional.fusion import AttentionWeights, fuse_heads


@dataclass
class CapturedAttention(AttentionWeights):
    """What one forward pass revealed; the functional API takes it as ``attentions``.

    Attributes:
        attentions: ``(L, B, H, S, S)`` weights; ``H == 1`` when heads were fused during
            capture (``head_fusion`` says how), else every head.
        attention_mask: ``(B, S)`` bool mask of real tokens, or None when unpadded.
        head_fusion: the fusion already applied, or None when every head was kept.
        outputs: the forward function's return value.
        adapter: the adapter that captured the weights.
    """

    outputs: Any = None
    adapter: Optional["AttentionAdapter"] = None
    #: Whether ``inputs`` are batch-first as the stack received them (None: the adapter's default).
    batch_first: Optional[bool] = None


@dataclass
class CaptureSession:
    """State of one capture: filled by the hooks of the calling thread only."""

    head_fusion: Optional[str]
    training: bool
    thread_id: int = field(default_factory=threading.get_ident)
    #: ``(B, S)`` bool mask of real tokens seen in the model's call (None: no padding seen).
    observed_mask: Optional[torch.Tensor] = None
    #: Calls of the module that runs the attention stack.
    stack_calls: int = 0
    recorded: List[torch.Tensor] = field(default_factory=list)
    #: The attributed inputs and extra arguments, for the check that the stack received them.
    inputs: Optional[torch.Tensor] = None
    forward_args: Tuple = ()
    #: Set by the adapter's hook once the stack's call was checked against ``inputs``.
    stack_checked: bool = False
    #: Layout of ``inputs`` as the stack received them (None: the adapter's default).
    batch_first: Optional[bool] = None
    #: Pending calls of attention modules that are cross-attention (not recorded), per module.
    cross_calls: Dict[int, int] = field(default_factory=dict)

    def is_mine(self) -> bool:
        """Hooks act only on the forward pass of the thread that installed them."""
        return threading.get_ident() == self.thread_id

    def record_layer(self, weights: torch.Tensor, where: str) -> None:
        """Check a layer's per-head ``(B, H, S, S)`` weights and keep them (heads fused on the spot)."""
        weights = weights.detach()
        if weights.ndim != 4 or weights.shape[-1] != weights.shape[-2]:
            raise AttentionCaptureError(
                f"{where} returned attention weights of shape {tuple(weights.shape)}; expected (B, H, S, S).")
        valid = self.observed_mask
        if valid is not None and tuple(valid.shape) == (weights.shape[0], weights.shape[-1]) and not bool(valid.all()):
            # A query that sees only padding gets NaN from a softmax; its row is never used.
            weights = weights.masked_fill(~valid.to(weights.device)[:, None, :, None], 0.0)
        by_mean = self.head_fusion == "mean"
        # Dropout (training mode) scales kept weights by 1/(1-p) and breaks the row sums.
        check_attention_values(weights, where, allow_above_one=self.training,
                               check_row_sums=not by_mean and not self.training)
        fused = fuse_heads(weights, self.head_fusion)[:, None] if self.head_fusion else weights
        if by_mean and not self.training:
            # The fused rows' sums are the mean of the heads' sums: one pass over B·S² instead of B·H·S².
            warn_if_rows_do_not_sum_to_one(fused[:, 0].sum(dim=-1), where)
        self.recorded.append(fused)


class AttentionAdapter:
    """Base class of per-family capture adapters.

    Subclasses implement :meth:`supports`, :meth:`attention_modules` and, where the
    defaults do not fit, :meth:`weights_from_output`, :meth:`prepared`,
    :meth:`mask_observers` (with ``observes_padding_mask = True``), :meth:`stack_module`
    and :meth:`expected_num_layers`. Register them with :func:`register_adapter`.
    """

    #: Short name shown in errors and reprs.
    name = "base"
    #: True when the adapter reads the padding mask from the model's own call; False when the
    #: caller must pass it as ``attention_mask=`` (user functions, user-named modules).
    observes_padding_mask = False

    def __init__(self, model: Optional[nn.Module], stack: Optional[nn.Module] = None):
        self.model = model
        #: The attention stack chosen with ``stack=`` (a submodule of ``model``), or None.
        self.stack = stack

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    @classmethod
    def supports_stack(cls, model: nn.Module, stack: nn.Module) -> bool:
        """Whether the adapter explains the submodule ``stack`` of ``model`` (default: it supports ``stack``)."""
        return cls.supports(stack)

    def check_stack(self) -> None:
        """Refuse a model holding several attention stacks when none was chosen (see :mod:`.stacks`)."""

    def stack_root(self) -> nn.Module:
        """Where the attention modules are looked for: the chosen stack, else the model."""
        root = self.stack if self.stack is not None else self.model
        if root is None:
            raise AttentionCaptureError(f"The '{self.name}' adapter has no model to look for attention in.")
        return root

    def attention_modules(self) -> List[nn.Module]:
        """Modules whose forward output carries one layer's attention weights, in layer order."""
        raise NotImplementedError

    def weights_from_output(self, module: nn.Module, output: Any) -> Optional[torch.Tensor]:
        """Read ``(B, H, S, S)`` weights from a module's output (default: ``output[1]``)."""
        if isinstance(output, (tuple, list)) and len(output) > 1:
            return output[1]
        return None

    def check_inputs(self, inputs: Any) -> torch.Tensor:
        """Validate ``inputs`` for this family (default: integer token ids of shape ``(B, S)``)."""
        return check_token_ids(inputs)

    def sequence_length(self, inputs: torch.Tensor) -> Optional[int]:
        """Positions the model will attend over, when the inputs tell (token ids: ``S``)."""
        return inputs.shape[1] if inputs.ndim == 2 else None

    def expected_num_layers(self) -> Optional[int]:
        """Attention layers one forward pass records, when known before it runs."""
        return None

    def vocabulary_size(self) -> Optional[int]:
        """Rows of the model's input embedding, when it exposes one."""
        get_embeddings = getattr(self.model, "get_input_embeddings", None)
        if not callable(get_embeddings):
            return None
        try:
            return getattr(get_embeddings(), "num_embeddings", None)
        except (NotImplementedError, AttributeError):
            return None

    def check_forward_args(self, forward_func: Callable, inputs: torch.Tensor, forward_args: Tuple) -> None:
        """Refuse, before the forward pass, extra arguments the model would misread (default: none)."""

    def lock_key(self) -> Any:
        """What two captures must not prepare at once: the attention stack they share."""
        modules = self.attention_modules()
        return modules[0] if modules else self

    def stack_module(self) -> Optional[nn.Module]:
        """The module that runs the whole attention stack once per forward pass (calls are counted)."""
        return self.stack if self.stack is not None else (self.model if isinstance(self.model, nn.Module) else None)

    def record(self, forward_func: Callable, inputs: torch.Tensor, forward_args: Tuple,
               session: CaptureSession) -> Any:
        """Run ``forward_func`` once; the hooks fill ``session.recorded``. Returns the output.

        The default hooks :meth:`attention_modules` inside :meth:`prepared`; adapters that get
        the weights another way (a user function, say) override this.
        """
        with self.prepared(session):
            modules = self.attention_modules()
            if not modules:
                raise AttentionCaptureError(
                    f"No attention layers found in {type(self.model).__name__} by the "
                    f"'{self.name}' adapter; name them with attention_modules=[...].")
            with self.mask_observers(session), _stack_counter(self.stack_module(), session), \
                    _recording_hooks(self, modules, session), torch.no_grad():
                outputs = forward_func(inputs, *forward_args)
        if not session.recorded:
            raise AttentionCaptureError(
                f"The forward pass ran none of the {len(modules)} attention modules found by the "
                f"'{self.name}' adapter; check that forward_func runs this model.")
        return outputs

    def prepared(self, session: CaptureSession) -> ContextManager:
        """Context in which the model returns attention weights; restores the model on exit."""
        return contextlib.nullcontext()

    def mask_observers(self, session: CaptureSession) -> ContextManager:
        """Context with hooks that set ``session.observed_mask`` from the model's own call."""
        return contextlib.nullcontext()

    def scores_to_inputs(self, scores: torch.Tensor, inputs: torch.Tensor, **options) -> torch.Tensor:
        """Map ``(n_layers, B, S)`` token scores onto the shape of ``inputs``.

        Token models attend over exactly the input tokens, so this only checks the shapes;
        vision adapters override it (drop special tokens, upsample patches to pixels).
        """
        if options.get("return_patch_grid"):
            raise InvalidParameterError(
                f"return_patch_grid=True needs a vision model; the '{self.name}' adapter explains tokens.")
        if tuple(scores.shape[1:]) != tuple(inputs.shape):
            raise AttentionCaptureError(
                f"The model attended over {tuple(scores.shape[1:])} (batch, positions) but the inputs "
                f"have shape {tuple(inputs.shape)}; the '{self.name}' adapter cannot map scores "
                "back to inputs of this shape.")
        return scores.to(inputs.device)


_ADAPTERS: List[Type[AttentionAdapter]] = []


def register_adapter(adapter_cls: Type[AttentionAdapter], *, first: bool = False):
    """Make ``adapter_cls`` available to :func:`find_adapter` (``first`` gives it priority)."""
    if adapter_cls in _ADAPTERS:
        _ADAPTERS.remove(adapter_cls)
    _ADAPTERS.insert(0, adapter_cls) if first else _ADAPTERS.append(adapter_cls)
    return adapter_cls


def registered_adapters() -> List[Type[AttentionAdapter]]:
    return list(_ADAPTERS)


def find_adapter(model: nn.Module, stack: Optional[nn.Module] = None) -> AttentionAdapter:
    """The first registered adapter that supports ``model`` (or its submodule ``stack``).

    A model with several attention stacks and no ``stack`` is refused (the error lists them).
    """
    for adapter_cls in _ADAPTERS:
        if stack is None and adapter_cls.supports(model):
            adapter = adapter_cls(model)
        elif stack is not None and adapter_cls.supports_stack(model, stack):
            adapter = adapter_cls(model, stack=stack)
        else:
            continue
        adapter.check_stack()
        return adapter
    if stack is not None:
        raise UnsupportedModelError(
            f"No attention adapter supports the stack {type(stack).__name__} of {type(model).__name__}; choose a "
            "stack holding Hugging Face or nn.MultiheadAttention attention layers, or name its attention modules "
            "with attention_modules=[...].")
    names = ", ".join(a.name for a in _ADAPTERS)
    raise UnsupportedModelError(
        f"No attention adapter supports {type(model).__name__}. Supported automatically: Hugging Face "
        "transformers models (encoders, decoders, the encoder of encoder-decoders, ViT/DeiT), timm "
        "ViTs and torch nn.MultiheadAttention / nn.TransformerEncoder (adapters: "
        f"{names}). For a custom model pass attention_modules=[...] (modules returning (output, "
        "weights); weights_from_output=callable for other formats) or attention_fn=callable "
        "returning the per-layer (B, H, S, S) weights."
    )


def resolve_model(forward_func: Callable, model: Optional[nn.Module] = None) -> nn.Module:
    """The ``nn.Module`` behind a Captum ``forward_func`` (itself, or a bound method's owner)."""
    if model is not None:
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        return model
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    raise UnsupportedModelError(
        "forward_func is a plain function, so the model whose attention to capture is unknown; "
        "pass it as model=..., e.g. AttentionFlow(lambda ids, mask: clf(ids, mask).logits, model=clf)."
    )


@contextlib.contextmanager
def _recording_hooks(adapter: AttentionAdapter, modules: Sequence[nn.Module], session: CaptureSession,
                     on_weights: Optional[Callable[[torch.Tensor, str], None]] = None):
    """Forward hooks that check and record each layer of the calling thread's forward pass;
    ``on_weights(weights, where)`` sees each layer's weights first (gradient capture keeps them)."""

    def record(module, _args, output):
        if not session.is_mine():
            return  # another thread using the model: neither recorded nor disturbed
        if session.cross_calls.get(id(module)):
            session.cross_calls[id(module)] -= 1  # cross-attention: never a layer of the self-attention stack
            return
        weights = adapter.weights_from_output(module, output)
        if weights is None:
            raise AttentionCaptureError(
                f"{type(module).__name__} returned no attention weights (fused or flash kernel). "
                f"Load the model with attn_implementation='eager' or use a model the "
                f"'{adapter.name}' adapter can switch to eager attention."
            )
        where = f"attention layer {len(session.recorded) + 1} ({type(module).__name__})"
        if on_weights is not None:
            on_weights(weights, where)
        session.record_layer(weights, where)

    handles = [module.register_forward_hook(record) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _stack_counter(stack: Optional[nn.Module], session: CaptureSession):
    """Count the calling thread's calls of the attention stack; a second call is refused."""
    if stack is None:
        yield
        return

    def count(module, _args):
        if session.is_mine():
            session.stack_calls += 1
            if session.stack_calls > 1:
                raise AttentionCaptureError(
                    f"forward_func ran {type(module).__name__} more than once in one call, so its attention layers "
                    "would be recorded twice. Explain one forward pass: wrap the model so that it runs once "
                    "(e.g. compare outputs outside forward_func).")

    handle = stack.register_forward_pre_hook(count)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------- locks and restore

_LOCKS_GUARD = threading.Lock()
_MODEL_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_OTHER_LOCKS: Dict[int, threading.RLock] = {}


def model_lock(key: Any) -> threading.RLock:
    """One lock per attention stack: captures of the same model take turns, others run at once."""
    with _LOCKS_GUARD:
        try:
            return _MODEL_LOCKS.setdefault(key, threading.RLock())
        except TypeError:  # not weak-referenceable
            return _OTHER_LOCKS.setdefault(id(key), threading.RLock())


def _in_training_mode(model: Optional[nn.Module]) -> bool:
    return isinstance(model, nn.Module) and any(module.training for module in model.modules())


def _warn_if_training(model: Optional[nn.Module]) -> bool:
    if not _in_training_mode(model):
        return False
    warnings.warn(
        "Part of the model is in training mode (dropout makes attention weights random and breaks "
        "their row sums). Call model.eval() for reproducible attributions.", UserWarning, stacklevel=4)
    return True


def _observed_or_explicit_mask(adapter: AttentionAdapter, session: CaptureSession,
                               attention_mask: Optional[torch.Tensor], batch_size: int,
                               seq_len: int) -> Optional[torch.Tensor]:
    """The padding mask: the one the model received, or the caller's where the adapter cannot see it."""
    explicit = check_attention_mask(attention_mask, batch_size, seq_len)
    if not adapter.observes_padding_mask:
        return explicit
    observed = check_attention_mask(session.observed_mask, batch_size, seq_len)
    if explicit is None:
        return observed
    observed_or_all = observed if observed is not None else torch.ones_like(explicit)
    if not torch.equal(explicit.cpu(), observed_or_all.cpu()):
        raise InvalidInputError(
            "attention_mask differs from the padding mask the model received in its own call "
            f"({'none' if observed is None else 'a different one'}); the model attended accordingly. Pass the "
            "same mask to the model (through additional_forward_args), or leave attention_mask out.")
    return observed


def capture_attention(forward_func: Callable, inputs: torch.Tensor, additional_forward_args=None, *,
                      model: Optional[nn.Module] = None, adapter: Optional[AttentionAdapter] = None,
                      head_fusion: Optional[str] = "mean",
                      attention_mask: Optional[torch.Tensor] = None, stack: StackChoice = None) -> CapturedAttention:
    """Run ``forward_func(inputs, *additional_forward_args)`` once and capture its attention.

    The result can be handed to :func:`~captum_attnflow.functional.attention_rollout`,
    :func:`~captum_attnflow.functional.attention_flow` and
    :func:`~captum_attnflow.functional.raw_attention` as ``attentions``; it carries the
    padding mask the model received.

    Args:
        forward_func: the model, or any function of ``(inputs, *additional_forward_args)``
            that runs it (then pass ``model=``).
        inputs: the model's first positional input (token ids ``(B, S)``, pixels ...).
        additional_forward_args: extra positional arguments, as in Captum.
        model: the ``nn.Module`` holding the attention layers, if ``forward_func`` is not it.
        adapter: an :class:`AttentionAdapter` instance; default: the registered one for the model.
        head_fusion: fuse heads while capturing (``"mean"``, ``"max"``, ``"min"``) or None to keep
            every head.
        attention_mask: the ``(B, S)`` padding mask, for adapters that cannot see the one the model
            receives (``attention_fn=``, user-named modules); elsewhere it must equal that one.
        stack: the attention stack to explain when the model holds several (a submodule or its
            dotted name, e.g. ``"text_model"``); see :mod:`captum_attnflow.capture.stacks`.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
        ...                              num_attention_heads=2, intermediate_size=16)).eval()
        >>> ids, mask = torch.tensor([[1, 5, 7, 2], [1, 6, 2, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        >>> captured = capture_attention(lambda i, m: model(input_ids=i, attention_mask=m), ids, (mask,), model=model)
        >>> tuple(captured.attentions.shape), captured.attention_mask.tolist()
        ((2, 2, 1, 4, 4), [[True, True, True, True], [True, True, True, False]])
    """
    if head_fusion is not None:
        check_head_fusion(head_fusion)
    adapter, forward_args = _checked_call(forward_func, inputs, additional_forward_args, model, adapter, stack)
    session = _new_session(adapter, inputs, forward_args, head_fusion, attention_mask)
    with model_lock(adapter.lock_key()):
        outputs = adapter.record(forward_func, inputs, forward_args, session)
    _check_layer_count(adapter, session)
    attentions = torch.stack(session.recorded)
    mask = _observed_or_explicit_mask(adapter, session, attention_mask, attentions.shape[1], attentions.shape[-1])
    return CapturedAttention(attentions=attentions, attention_mask=mask, head_fusion=head_fusion, checked=True,
                             outputs=outputs, adapter=adapter, batch_first=session.batch_first)


def _checked_call(forward_func: Callable, inputs: Any, additional_forward_args: Any, model: Optional[nn.Module],
                  adapter: Optional[AttentionAdapter], stack: StackChoice) -> Tuple[AttentionAdapter, Tuple]:
    """The adapter of the stack to capture and the call's extra arguments, checked before any forward pass."""
    if adapter is None:
        owner = resolve_model(forward_func, model)
        adapter = find_adapter(owner, resolve_stack(owner, stack))
    elif stack is not None:
        raise InvalidParameterError("Pass stack= or adapter=, not both: an adapter already knows its stack.")
    forward_args = format_forward_args(additional_forward_args)
    adapter.check_forward_args(forward_func, inputs, forward_args)
    return adapter, forward_args


def _new_session(adapter: AttentionAdapter, inputs: Any, forward_args: Tuple, head_fusion: Optional[str],
                 attention_mask: Optional[torch.Tensor]) -> CaptureSession:
    session = CaptureSession(head_fusion=head_fusion, training=_warn_if_training(adapter.model),
                             inputs=inputs if isinstance(inputs, torch.Tensor) else None, forward_args=forward_args)
    if attention_mask is not None and not adapter.observes_padding_mask:
        # Known before the forward pass: the hooks zero the rows of padded queries with it.
        session.observed_mask = padding_mask_to_valid(attention_mask)
    return session


def _check_layer_count(adapter: AttentionAdapter, session: CaptureSession) -> None:
    shapes = {tuple(w.shape) for w in session.recorded}
    if len(shapes) != 1:
        raise AttentionCaptureError(
            f"Captured attention layers have different shapes {sorted(shapes)}; capture one "
            "attention stack at a time (e.g. the encoder of an encoder-decoder model).")
    expected = adapter.expected_num_layers()
    if expected is not None and len(session.recorded) != expected:
        raise AttentionCaptureError(
            f"One forward pass recorded {len(session.recorded)} attention layers but the model has {expected}: "
            "forward_func ran the attention stack more (or less) than once. Explain one forward pass of the model.")
