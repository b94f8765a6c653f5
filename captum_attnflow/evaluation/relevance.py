"""Token relevance from the attributions of several output positions: one row, the mean, or the max.

Attention rollout and flow give one attribution vector per *output* position. Which of them
is "the" relevance of the inputs is a protocol choice that moves correlations: Abnar &
Zuidema's subject–verb agreement code explains the ``[CLS]`` row, their SST-2 code takes the
maximum over all output positions of every row-normalised matrix
(``samiraabnar/attention_flow``, ``compute_corel_distilbert_sst.py``, lines 49, 95 and 103).

* :func:`reduce_output_positions` reduces precomputed ``(..., P, S)`` scores;
* :class:`OutputPositionsRelevance` wraps a Captum attribution that takes ``token_index``
  (:class:`~captum_attnflow.AttentionRollout`, :class:`~captum_attnflow.AttentionFlow`,
  :class:`~captum_attnflow.RawAttention`) so the harness can use the reduced scores as a method.
"""

from typing import Optional

import torch
from captum.attr import Attribution

from captum_attnflow._args import format_forward_args
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

#: ``"row"``: one output position's vector; ``"mean"`` / ``"max"``: over the real output positions.
OUTPUT_REDUCTIONS = ("row", "mean", "max")


def reduce_output_positions(scores: torch.Tensor, reduction: str = "row", *, token_index: int = 0,
                            output_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reduce per-output-position token scores ``(..., B, P, S)`` to ``(..., B, S)``.

    Args:
        scores: ``scores[..., b, p, j]`` = attribution of input ``j`` when explaining output
            position ``p`` of example ``b`` (e.g. ``attention_rollout(...)`` or
            ``attention_flow(..., token_index="all")``; leading dims such as layers
            are kept).
        reduction: one of :data:`OUTPUT_REDUCTIONS`.
        token_index: the output position used by ``"row"`` (0 = ``[CLS]``).
        output_mask: ``(B, P)`` bool, the output positions that take part in ``"mean"`` and
            ``"max"`` (real tokens); None uses every position. Each example needs at least one.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[[0.6, 0.4, 0.0], [0.1, 0.8, 0.1], [0.5, 0.0, 0.5]]])
        >>> reduce_output_positions(scores, "max", output_mask=torch.tensor([[True, True, False]]))
        tensor([[0.6000, 0.8000, 0.1000]])
        >>> reduce_output_positions(scores, "row", token_index=2)
        tensor([[0.5000, 0.0000, 0.5000]])
    """
    if reduction not in OUTPUT_REDUCTIONS:
        raise InvalidParameterError(f"reduction={reduction!r}; use one of {OUTPUT_REDUCTIONS}.")
    if not isinstance(scores, torch.Tensor) or scores.ndim < 3:
        raise InvalidInputError("scores must be a tensor (..., B, P, S) of per-output-position attributions.")
    batch_size, num_outputs = scores.shape[-3], scores.shape[-2]
    if reduction == "row":
        if not -num_outputs <= token_index < num_outputs:
            raise InvalidParameterError(
                f"token_index={token_index} is out of range for {num_outputs} output positions.")
        return scores[..., token_index, :]
    if output_mask is None:
        output_mask = torch.ones(batch_size, num_outputs, dtype=torch.bool, device=scores.device)
    if not isinstance(output_mask, torch.Tensor) or tuple(output_mask.shape) != (batch_size, num_outputs):
        raise InvalidInputError(f"output_mask must be a ({batch_size}, {num_outputs}) bool tensor.")
    output_mask = output_mask.to(scores.device).bool()
    if not bool(output_mask.any(dim=1).all()):
        raise InvalidInputError("every example needs at least one output position in output_mask.")
    keep = output_mask[..., None]  # broadcasts over the input dimension (and leading dims)
    if reduction == "max":
        return scores.masked_fill(~keep, float("-inf")).amax(dim=-2)
    return scores.masked_fill(~keep, 0.0).sum(dim=-2) / keep.sum(dim=-2)


class OutputPositionsRelevance(Attribution):
    r"""Relevance of each input as one row, the mean or the max over the output positions.

    ``attribute`` calls ``method.attribute(..., token_index=...)`` once per output position
    (the k-th real token of every example, so left and right padding both work) and
    reduces the stacked scores with :func:`reduce_output_positions` over the real positions.

    Args:
        method: a Captum attribution whose ``attribute`` takes ``token_index`` (an int or a
            ``(B,)`` tensor of positions), e.g. :class:`~captum_attnflow.AttentionFlow`.
        reduction: one of :data:`OUTPUT_REDUCTIONS`; ``"row"`` simply forwards ``token_index``.
        token_index: the explained position for ``"row"``.

    Example:
        >>> import torch
        >>> from captum_attnflow import AttentionRollout
        >>> layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.TransformerEncoder(layer, 2)).eval()
        >>> ids = torch.tensor([[1, 4, 2, 7]])
        >>> by_max = OutputPositionsRelevance(AttentionRollout(model), "max").attribute(ids)
        >>> by_row = [AttentionRollout(model).attribute(ids, token_index=p) for p in range(4)]
        >>> torch.allclose(by_max, torch.stack(by_row).amax(dim=0))
        True
    """

    def __init__(self, method: Attribution, reduction: str = "max", *, token_index: int = 0) -> None:
        if not isinstance(method, Attribution):
            raise InvalidParameterError(f"method must be a Captum Attribution, got {type(method).__name__}.")
        if reduction not in OUTPUT_REDUCTIONS:
            raise InvalidParameterError(f"reduction={reduction!r}; use one of {OUTPUT_REDUCTIONS}.")
        super().__init__(method.forward_func)
        self.method = method
        self.reduction = reduction
        self.token_index = token_index

    def attribute(self, inputs: torch.Tensor, target=None, additional_forward_args=None, **kwargs) -> torch.Tensor:
        r"""
        Args:
            inputs (Tensor): token ids ``(B, S)``.
            target: passed through (attention methods ignore it).
            additional_forward_args (tuple, optional): ``(attention_mask, ...)``; the mask (a
                ``(B, S)`` tensor in first place) marks the real tokens, else all are real.
            **kwargs: ``attribute`` options of ``method`` (``layer``, ``return_all_layers`` ...).

        Returns:
            ``(B, S)``, or ``(L, B, S)`` with ``return_all_layers=True``.
        """
        if "token_index" in kwargs:
            raise InvalidParameterError("token_index is chosen by OutputPositionsRelevance (pass it to its constructor "
                                        "with reduction='row'), not to attribute.")
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2:
            raise InvalidInputError("inputs must be a (B, S) tensor of token ids.")
        call = dict(target=target, additional_forward_args=additional_forward_args, **kwargs)
        if self.reduction == "row":
            return self.method.attribute(inputs, token_index=self.token_index, **call)
        real = _real_tokens(inputs, additional_forward_args)
        positions, taken = _kth_real_positions(real)
        per_position = [self.method.attribute(inputs, token_index=positions[:, k], **call)
                        for k in range(positions.shape[1])]
        stacked = torch.stack(per_position, dim=-2)  # (..., B, K, S)
        return reduce_output_positions(stacked, self.reduction, output_mask=taken)

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


def _real_tokens(inputs: torch.Tensor, additional_forward_args) -> torch.Tensor:
    args = format_forward_args(additional_forward_args)
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and first.shape == inputs.shape:
        return first.bool()
    return torch.ones_like(inputs, dtype=torch.bool)


def _kth_real_positions(real: torch.Tensor):
    """``(B, K)`` position of each example's k-th real token (clamped to its last) and its validity."""
    counts = real.sum(dim=1)
    if bool((counts == 0).any()):
        raise InvalidInputError("an example has no real token (its attention mask is all 0).")
    seq_len = real.shape[1]
    # Stable sort puts the real positions first, in order.
    order = torch.sort((~real).int(), dim=1, stable=True).indices
    k = torch.arange(int(counts.max()), device=real.device)
    taken = k[None, :] < counts[:, None]
    index = torch.minimum(k[None, :], counts[:, None] - 1)
    return order.gather(1, index).clamp(max=seq_len - 1), taken
