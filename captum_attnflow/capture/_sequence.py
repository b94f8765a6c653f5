"""Inputs of hand-built sequence models: token ids ``(B, S)`` or embeddings ``(B, S, D)`` /
``(S, B, D)``, shared by the PyTorch and custom adapters."""

import torch

from captum_attnflow._validation import check_sequence_inputs
from captum_attnflow.exceptions import AttentionCaptureError

__all__ = ["check_sequence_inputs", "scores_to_sequence_inputs"]


def scores_to_sequence_inputs(scores: torch.Tensor, inputs: torch.Tensor, *, batch_first: bool = True,
                              adapter_name: str = "custom") -> torch.Tensor:
    """Map ``(n, B, S)`` scores onto ``inputs``: ids ``(B, S)`` as they are, embeddings ``(B, S, D)``
    or ``(S, B, D)`` with the token's score in every feature (Captum's same-shape convention).

    ``batch_first`` only breaks the tie when ``B == S``.
    """
    batch_size, seq_len = scores.shape[1:]
    leading = tuple(inputs.shape[:2])
    if leading == (batch_size, seq_len) and (batch_first or batch_size != seq_len):
        mapped = scores
    elif leading == (seq_len, batch_size):
        mapped = scores.transpose(1, 2)
    else:
        raise AttentionCaptureError(
            f"The model attended over (batch, positions) = ({batch_size}, {seq_len}) but the inputs have "
            f"shape {tuple(inputs.shape)}; the '{adapter_name}' adapter cannot map scores onto them.")
    if inputs.ndim == 3:
        mapped = mapped[..., None].expand(*mapped.shape, inputs.shape[-1]).contiguous()
    return mapped.to(inputs.device)
