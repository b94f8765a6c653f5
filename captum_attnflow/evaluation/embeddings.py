"""Gradient methods on token embeddings, callable with token ids.

Captum's ``Saliency``, ``InputXGradient``, ``IntegratedGradients``, ``DeepLift`` ... need float
inputs, but a text model takes integer ids. :class:`EmbeddingAttribution` runs any such
method on the *output of the embedding layer* while taking ids like every other method of
an evaluation, so all methods can be compared on the same ``(input_ids, attention_mask)``
batches. (``LayerIntegratedGradients`` and ``LayerGradientXActivation`` do the same for
their own algorithms; this wrapper covers the rest.)
"""

from typing import Callable, Optional

import torch
from captum.attr import Attribution, InputXGradient, Saliency
from torch import nn

from captum_attnflow._args import format_forward_args
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

TOKEN_REDUCTIONS = (None, "sum", "sum_abs", "norm")
#: Token scores from input gradients, see :class:`InputGradients`.
GRADIENT_REDUCERS = ("l2", "sum_abs", "grad_x_input")


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the embedding layer needs to run."""


class EmbeddingAttribution(Attribution):
    r"""Run a Captum attribution method on the embeddings of token ids.

    ``attribute(input_ids, ...)`` (1) runs the model up to ``embedding_layer`` to get the
    embeddings ``E`` ``(B, S, D)``, then (2) calls ``method_class(f).attribute(E, ...)`` where
    ``f(E', input_ids, *args)`` runs the full model with the layer's output replaced by
    ``E'``. Positional extra arguments (the attention mask ...) travel with ``input_ids``, so
    methods that expand the batch (integrated gradients, noise tunnels) expand them too.

    Args:
        method_class: a Captum attribution class taking ``forward_func`` first, e.g.
            ``Saliency``, ``InputXGradient``, ``IntegratedGradients``.
        forward_func: model or function of ``(input_ids, *additional_forward_args)`` returning
            ``(B, C)`` scores; it must call ``embedding_layer`` exactly once per forward.
        embedding_layer: the module whose output is attributed, e.g. ``model.bert.embeddings``
            (word + position + type embeddings) or ``model.bert.embeddings.word_embeddings``;
            its output must be a tensor whose first two dimensions are ``(B, S)``.
        token_reduction: ``None`` returns ``(B, S, D)`` like Captum; ``"sum"`` sums over ``D``
            (Captum's usual token score); ``"sum_abs"`` is the absolute value of that sum;
            ``"norm"`` takes the L2 norm over ``D`` (the usual token score of saliency).
        **method_kwargs: passed to ``method_class`` (e.g. ``multiply_by_inputs=False``).

    Example:
        >>> import torch
        >>> from captum.attr import InputXGradient
        >>> embedding = torch.nn.Embedding(5, 2)
        >>> def logits(ids):  # class 1 scores the sum of the first embedding coordinate
        ...     first = embedding(ids)[..., 0].sum(1)
        ...     return torch.stack([torch.zeros_like(first), first], 1)
        >>> ixg = EmbeddingAttribution(InputXGradient, logits, embedding, token_reduction="sum")
        >>> ids = torch.tensor([[1, 3, 4]])
        >>> torch.allclose(ixg.attribute(ids, target=1), embedding.weight[ids][..., 0])
        True
    """

    def __init__(self, method_class: Callable[..., Attribution], forward_func: Callable,
                 embedding_layer: nn.Module, *, token_reduction: Optional[str] = None, **method_kwargs) -> None:
        if not isinstance(embedding_layer, nn.Module):
            raise InvalidParameterError(
                f"embedding_layer must be the torch.nn.Module producing the token embeddings, got "
                f"{type(embedding_layer).__name__}.")
        if token_reduction not in TOKEN_REDUCTIONS:
            raise InvalidParameterError(f"token_reduction={token_reduction!r}; use one of {TOKEN_REDUCTIONS}.")
        super().__init__(forward_func)
        self.embedding_layer = embedding_layer
        self.token_reduction = token_reduction
        self.method = method_class(self._forward_from_embeddings, **method_kwargs)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.method.has_convergence_delta()

    def embed(self, input_ids: torch.Tensor, additional_forward_args=None) -> torch.Tensor:
        """The output of ``embedding_layer`` for ``input_ids`` as a new leaf tensor; the rest of the
        model is skipped."""
        captured = []

        def capture(module, inputs, output):
            captured.append(output)
            raise _StopForward

        handle = self.embedding_layer.register_forward_hook(capture)
        try:
            with torch.no_grad():
                self.forward_func(input_ids, *format_forward_args(additional_forward_args))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise InvalidInputError("the forward function never called embedding_layer; pass the module "
                                    "that turns the token ids into embeddings.")
        (embeddings,) = captured
        if not isinstance(embeddings, torch.Tensor) or tuple(embeddings.shape[:2]) != tuple(input_ids.shape):
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise InvalidInputError(
                f"embedding_layer must output a (B, S, ...) tensor for ids of shape {tuple(input_ids.shape)}, "
                f"got {shape}.")
        # A fresh leaf that requires grad: Captum would otherwise set it, with a warning.
        return embeddings.detach().requires_grad_()

    def _forward_from_embeddings(self, embeddings: torch.Tensor, input_ids: torch.Tensor, *args):
        def replace(module, inputs, output):
            return embeddings

        handle = self.embedding_layer.register_forward_hook(replace)
        try:
            return self.forward_func(input_ids, *args)
        finally:
            handle.remove()

    def attribute(self, inputs, target=None, additional_forward_args=None, **kwargs):
        r"""
        Args:
            inputs (Tensor): token ids ``(B, S)`` (or a 1-tuple of it; the result is then a 1-tuple).
            target: as in Captum.
            additional_forward_args (tuple, optional): e.g. ``(attention_mask,)``.
            **kwargs: options of the wrapped method's ``attribute`` (``abs``, ``n_steps``,
                ``baselines`` in embedding space ...).

        Returns:
            ``(B, S, D)`` attributions of the embeddings, or ``(B, S)`` with ``token_reduction``
            (with ``return_convergence_delta=True``: ``(attributions, delta)``).
        """
        is_tuple = isinstance(inputs, tuple) and len(inputs) == 1
        input_ids = inputs[0] if is_tuple else inputs
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
            raise InvalidInputError("inputs must be a (B, S) integer tensor of token ids.")
        args = format_forward_args(additional_forward_args)
        embeddings = self.embed(input_ids, args)
        output = self.method.attribute(embeddings, target=target, additional_forward_args=(input_ids, *args),
                                       **kwargs)
        delta = None
        if kwargs.get("return_convergence_delta", False):
            output, delta = output
        scores = self._reduce(output)
        scores = (scores,) if is_tuple else scores
        return scores if delta is None else (scores, delta)

    def _reduce(self, attributions: torch.Tensor) -> torch.Tensor:
        if self.token_reduction is None:
            return attributions
        flat = attributions.reshape(*attributions.shape[:2], -1)
        if self.token_reduction == "norm":
            return flat.norm(dim=-1)
        summed = flat.sum(-1)
        return summed.abs() if self.token_reduction == "sum_abs" else summed


class InputGradients(EmbeddingAttribution):
    r"""Token importance from the gradient of the output with respect to the token embeddings.

    With ``g_i = ∂f_target/∂e_i`` the gradient at token ``i``'s embedding ``e_i`` (the output of
    ``embedding_layer``), the ``reducer`` turns it into one score per token:

    * ``"l2"``: ``‖g_i‖₂``, the usual saliency norm;
    * ``"sum_abs"``: ``|Σ_d g_{i,d}|``, the "input gradients" of Abnar & Zuidema's code for
      their Table 2 (their ``grad_scores``);
    * ``"grad_x_input"``: ``|Σ_d g_{i,d} e_{i,d}|``, gradient × input (their ``inputgrad``).

    Which embedding is "the input" matters only for ``"grad_x_input"``: the authors' model
    multiplies by the sum of token and position embeddings, so pass the layer that outputs
    that sum to follow them.

    Args:
        forward_func: model or function of ``(input_ids, *additional_forward_args)``.
        embedding_layer: the module whose output is differentiated (see
            :class:`EmbeddingAttribution`).
        reducer: one of :data:`GRADIENT_REDUCERS`.

    Example:
        >>> import torch
        >>> embedding = torch.nn.Embedding(4, 2)
        >>> with torch.no_grad():
        ...     _ = embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]))
        >>> def logits(ids):  # class-1 logit: 2·(first coordinate) − 3·(second), summed over tokens
        ...     e = embedding(ids)
        ...     return torch.stack([torch.zeros(len(ids)), (2 * e[..., 0] - 3 * e[..., 1]).sum(1)], 1)
        >>> ids = torch.tensor([[1, 2]])
        >>> InputGradients(logits, embedding, reducer="sum_abs").attribute(ids, target=1)  # |2 − 3|
        tensor([[1., 1.]])
        >>> InputGradients(logits, embedding, reducer="grad_x_input").attribute(ids, target=1)
        tensor([[4., 9.]])
    """

    def __init__(self, forward_func: Callable, embedding_layer: nn.Module, *, reducer: str = "l2") -> None:
        if reducer not in GRADIENT_REDUCERS:
            raise InvalidParameterError(f"reducer={reducer!r}; use one of {GRADIENT_REDUCERS}.")
        method_class = InputXGradient if reducer == "grad_x_input" else Saliency
        super().__init__(method_class, forward_func, embedding_layer,
                         token_reduction="norm" if reducer == "l2" else "sum_abs")
        self.reducer = reducer

    def attribute(self, inputs, target=None, additional_forward_args=None, **kwargs):
        r"""
        Args:
            inputs (Tensor): token ids ``(B, S)`` (or a 1-tuple of it).
            target: as in Captum (e.g. the gold or the predicted class).
            additional_forward_args (tuple, optional): e.g. ``(attention_mask,)``.

        Returns:
            ``(B, S)`` token scores, ``≥ 0``.
        """
        if isinstance(self.method, Saliency):
            kwargs.setdefault("abs", False)  # signed gradients; the reducer decides on signs
        scores = super().attribute(inputs, target=target, additional_forward_args=additional_forward_args,
                                   **kwargs)
        return tuple(score.detach() for score in scores) if isinstance(scores, tuple) else scores.detach()
