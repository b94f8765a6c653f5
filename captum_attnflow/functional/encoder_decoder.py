"""Rollout and flow for encoder-decoder transformers (T5, BART, Marian, Whisper ...).

An encoder-decoder runs three attention stacks in one teacher-forced pass: the encoder's
self-attention ``E_1 … E_{L_e}`` over the ``S`` source positions, the decoder's causal
self-attention ``D_1 … D_{L_d}`` over the ``T`` decoder-input positions, and the decoder's
cross-attention ``C_1 … C_{L_d}`` (decoder queries × final-encoder keys, ``(T, S)``). Output
position ``t`` predicts target token ``t``; its explanation is a vector over the source
tokens and one over the decoder inputs ``0 … t`` (the start token and the target prefix).

Two methods, both pure tensor math (no model, no transformers):

**Rollout with Chefer's rules** (:func:`chefer_relevance`). Chefer, Gur & Wolf (ICCV 2021,
"Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers", https://arxiv.org/abs/2103.15679, Sec. 3) keep relevance maps ``R^{ss}``
(source × source), ``R^{qq}`` (decoder × decoder) and ``R^{qs}`` (decoder × source),
initialised ``I``, ``I``, ``0``, and update them layer by layer (their repository
hila-chefer/Transformer-MM-Explainability, commit 58eaea8, ``DETR/modules/ExplanationGenerator.py``):

* head averaging, rule 5 (``avg_heads``, lines 19–24): ``Ā = E_h[(∇A ⊙ A)^+]``. Here the
  edge weights are the raw attention weights, no gradients, so ``Ā = fuse_h(A)`` (their rule
  with ``∇A = 1``; ``head_fusion="mean"`` is exactly their mean, the clamp is a no-op on
  post-softmax weights);
* self-attention rules 6–7 (``apply_self_attention_rules``, lines 27–30; encoder:
  ``handle_self_attention_image``, lines 110–118; decoder: ``handle_co_attn_self_query``,
  lines 120–129): ``R^{ss} += Ē_l·R^{ss}``; ``R^{qq} += D̄_l·R^{qq}``, ``R^{qs} += D̄_l·R^{qs}``;
* the normalisation of eqs. 8–9 (``handle_residual``, lines 46–53): ``R̂ = R − I``, each row
  divided by its sum, ``R̄ = R̂ + I``;
* the cross-attention rule 10 (``apply_mm_attention_rules``, lines 33–43, called from
  ``handle_co_attn_query``, lines 131–140): ``R^{qs} += R̄^{qq} · C̄_l · R̄^{ss}``. Their code
  multiplies by the *transpose* ``(R̄^{qq})ᵀ`` (line 39). DETR's object queries attend to each
  other freely; a text decoder is causal, and ``(R̄^{qq})ᵀ[t, t'] = R̄^{qq}[t', t]`` is nonzero
  for ``t' > t``: position ``t`` would be credited with the cross-attention of later
  positions, which its prediction never saw. So the default multiplies by ``R̄^{qq}`` itself
  (row ``t`` gathers the cross-attention of the positions ``t`` reads); the literal
  transposed rule is available as ``transpose_query_relevance=True``. The companion update
  ``R^{qq} += C̄·R^{sq}`` of the bi-modal rule (``lxmert/lxmert/src/ExplanationGenerator.py``,
  ``apply_mm_attention_rules``, lines 32–43: line 41; the same transpose on line 38) vanishes
  here: the encoder never reads the decoder, so ``R^{sq} = 0``.

Default variant, and why: raw attention (no gradients: the library explains attention
without a backward pass), ``head_fusion="mean"`` (their ``avg_heads``), Chefer's additive
residual (``R += Ā·R``, i.e. ``R ← (I + Ā)·R``) and the eq. 8–9 normalisation, so the default
is their method with the gradient set to one. ``residual_weight=w`` switches to this
library's convention instead: each self-attention step is ``R ← Â·R`` with
``Â = w·I + (1 − w)·Ā`` rows renormalised (:func:`~captum_attnflow.functional.transition_matrices`),
i.e. Abnar & Zuidema's rollout for ``R^{ss}``, ``R^{qq}``; those maps are row-stochastic
already, so eqs. 8–9 (undefined for them: ``R − I`` has a negative diagonal) are skipped and
``R̄ = R``. With mean fusion and no padding, ``I + Ā = 2·Â_{0.5}``, so the two self-attention
conventions differ only by a scale per layer; they differ in the cross rule's normalisation.

**Flow on the joint graph** (:func:`encoder_decoder_flow`), the open question of the
authors' repository (samiraabnar/attention_flow, issue 6, "Attention Flow in Decoder
models"). Nodes: ``(enc, l, j)`` for ``l = 0 … L_e``, ``(dec, l, i)`` for ``l = 0 … L_d``.
Edges (capacities):

* ``(enc, l, j) → (enc, l−1, k)``: ``Â^{enc}_l[j, k] = w·δ_jk + (1 − w)·Ē_l[j, k]`` (rows
  renormalised), as in the encoder-only graph;
* ``(dec, l, i) → (dec, l−1, k)``: ``w·δ_ik + (1 − w)·(1 − c)·D̄_l[i, k]``;
* ``(dec, l, i) → (enc, L_e, j)``: ``(1 − w)·c·C̄_l[i, j]``;

with ``w = residual_weight`` (0.5) and ``c = cross_weight`` (0.5), each decoder row
renormalised to 1 (it sums to 1 already for mean-fused weights). Why this split: a decoder
layer adds the outputs of two attention sublayers to its residual stream, and without
gradients or value norms nothing says which one matters more, so the attention share
``1 − w`` is split evenly by default; ``cross_weight`` sets it. (The layer is one node, not
two sublayer nodes: the same graph shape as the encoder's, one node per layer and position.)
The flow of source token ``j`` (decoder input ``k``) to output ``t`` is the max-flow from
``(dec, L_d, t)`` to ``(enc, 0, j)`` (to ``(dec, 0, k)``), each solved separately, exactly;
with ``normalize=True`` (the paper's choice) the vector over all ``S + T`` inputs is divided
by its sum, so each row of ``[source | target]`` sums to 1 and the source part's sum is the
share of the output that reaches the source.

Exact solver: the joint graph is not layered (cross edges skip from every decoder layer to the
top encoder layer), so it is embedded into a layered graph of ``L_e + L_d`` layers and width
``S + T`` that the library's exact engine solves (:func:`joint_layered_transitions`): relay
nodes with capacity-1 edges carry the final-encoder positions up through the decoder levels
and the decoder inputs down through the encoder levels. A source's out-capacity is 1, so no
flow ever exceeds 1 and a capacity-1 relay edge never binds: every max-flow is unchanged. The
tests check this against networkx on the joint graph built independently.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from captum_attnflow._validation import check_attention_values, check_flag, check_fraction, check_head_fusion
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError
from captum_attnflow.functional import _maxflow
from captum_attnflow.functional._cost import check_flow_budget, estimate_flow_cost
from captum_attnflow.functional.fusion import fuse_heads

#: Attention a decoder position may put on later positions before the decoder counts as non-causal.
CAUSAL_TOLERANCE = 1e-6


@dataclass
class EncoderDecoderAttentions:
    """The three attention stacks of one teacher-forced encoder-decoder pass.

    Attributes:
        encoder: ``(L_e, B, H, S, S)`` encoder self-attention.
        decoder: ``(L_d, B, H, T, T)`` decoder (causal) self-attention.
        cross: ``(L_d, B, H, T, S)`` cross-attention, decoder queries × final-encoder keys.
        source_mask: ``(B, S)`` bool, real source positions, or None (nothing padded).
        target_mask: ``(B, T)`` bool, real decoder positions, or None.
        head_fusion: the fusion already applied (then ``H == 1``), or None (every head kept).
    """

    encoder: torch.Tensor
    decoder: torch.Tensor
    cross: torch.Tensor
    source_mask: Optional[torch.Tensor] = None
    target_mask: Optional[torch.Tensor] = None
    head_fusion: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("encoder", "decoder", "cross"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.ndim != 5 or not value.is_floating_point():
                raise InvalidInputError(
                    f"{name} attention must be one floating (L, B, H, queries, keys) tensor, got "
                    f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}.")
        _, batch, _, source, source_keys = self.encoder.shape
        decoder_layers, dec_batch, _, target, target_keys = self.decoder.shape
        expected_cross = (decoder_layers, batch, target, source)
        got_cross = (self.cross.shape[0], self.cross.shape[1], *self.cross.shape[3:])
        if source != source_keys or target != target_keys or dec_batch != batch or got_cross != expected_cross:
            raise InvalidInputError(
                f"inconsistent stacks: encoder {tuple(self.encoder.shape)}, decoder {tuple(self.decoder.shape)}, "
                f"cross {tuple(self.cross.shape)}; expected (L_e, B, H, S, S), (L_d, B, H, T, T) and "
                "(L_d, B, H, T, S).")
        for name, mask, length in (("source_mask", self.source_mask, source), ("target_mask", self.target_mask,
                                                                                target)):
            if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (batch, length)):
                raise InvalidInputError(f"{name} must be a bool ({batch}, {length}) tensor of real positions, got "
                                        f"{mask.dtype} {tuple(mask.shape)}.")

    @property
    def batch_size(self) -> int:
        return self.encoder.shape[1]

    def masks(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(source_mask, target_mask)`` with None replaced by all-True masks."""
        batch, source, target = self.batch_size, self.encoder.shape[-1], self.decoder.shape[-1]
        device = self.encoder.device
        source_mask = self.source_mask if self.source_mask is not None else torch.ones(batch, source, dtype=torch.bool)
        target_mask = self.target_mask if self.target_mask is not None else torch.ones(batch, target, dtype=torch.bool)
        return source_mask.to(device), target_mask.to(device)


# ------------------------------------------------------------------------------- fused weights

def _fused(weights: torch.Tensor, stored_fusion: Optional[str], head_fusion: str) -> torch.Tensor:
    """``(L, B, Q, K)`` head-fused float weights."""
    if stored_fusion is not None:
        if stored_fusion != head_fusion:
            raise InvalidParameterError(
                f"head_fusion={head_fusion!r}, but these attentions were captured with heads fused by "
                f"{stored_fusion!r}; capture with head_fusion=None or with the fusion you want.")
        return weights[:, :, 0].float()
    return fuse_heads(weights.float(), head_fusion)


def fused_stacks(attentions: EncoderDecoderAttentions, head_fusion: str = "mean"
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Ē, D̄, C̄)``: head-fused ``(L_e, B, S, S)``, ``(L_d, B, T, T)``, ``(L_d, B, T, S)``, masked.

    Weights on padded keys and rows of padded queries are zeroed, so padding never carries
    relevance or flow; a decoder whose self-attention reaches later positions is refused.
    """
    check_head_fusion(head_fusion)
    if not isinstance(attentions, EncoderDecoderAttentions):
        raise InvalidInputError(
            f"attentions must be EncoderDecoderAttentions (what capture_encoder_decoder_attention returns), got "
            f"{type(attentions).__name__}.")
    source_mask, target_mask = attentions.masks()
    encoder = _fused(attentions.encoder, attentions.head_fusion, head_fusion)
    decoder = _fused(attentions.decoder, attentions.head_fusion, head_fusion)
    cross = _fused(attentions.cross, attentions.head_fusion, head_fusion)
    source_pairs = (source_mask[:, :, None] & source_mask[:, None, :])[None]
    target_pairs = (target_mask[:, :, None] & target_mask[:, None, :])[None]
    cross_pairs = (target_mask[:, :, None] & source_mask[:, None, :])[None]
    encoder, decoder, cross = (encoder * source_pairs, decoder * target_pairs, cross * cross_pairs)
    for name, weights in (("encoder", encoder), ("decoder", decoder), ("cross", cross)):
        check_attention_values(weights, f"{name} attention", check_row_sums=False)
    future = torch.triu(torch.ones(decoder.shape[-2:], dtype=torch.bool, device=decoder.device), diagonal=1)
    leak = float(decoder.masked_select(future).max()) if bool(future.any()) else 0.0
    if leak > CAUSAL_TOLERANCE:
        raise InvalidInputError(
            f"the decoder self-attention puts {leak:.3g} on later positions: it is not causal, so teacher forcing "
            "would explain each target token with tokens it has not seen. Pass the decoder's causal attention.")
    return encoder, decoder, cross


def _normalize_rows(matrices: torch.Tensor) -> torch.Tensor:
    """Rows divided by their sums; all-zero rows stay zero."""
    sums = matrices.sum(dim=-1, keepdim=True)
    return torch.where(sums > 0, matrices / torch.where(sums > 0, sums, torch.ones_like(sums)),
                       torch.zeros_like(matrices))


def _with_residual(fused: torch.Tensor, residual_weight: float, mask: torch.Tensor) -> torch.Tensor:
    """``w·I + (1 − w)·Ā``, rows renormalised; padded rows (and empty ones) become identity rows."""
    identity = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    mixed = _normalize_rows(residual_weight * identity + (1.0 - residual_weight) * fused)
    keep_self = (~mask)[None, :, :, None] | (mixed.sum(dim=-1, keepdim=True) <= 0)
    return torch.where(keep_self, identity.expand_as(mixed), mixed)


# ------------------------------------------------------------------------------- Chefer rollout

def chefer_normalization(relevance: torch.Tensor) -> torch.Tensor:
    """Eqs. 8–9 of Chefer et al.: ``R̄ = I + rownorm(R − I)`` (``handle_residual``, DETR lines 46–53).

    Rows where ``R − I`` sums to 0 (nothing was added: padded positions) keep ``R̄ = I``;
    their code would divide by zero there (DETR has no padding).

    Example:
        >>> chefer_normalization(torch.tensor([[3.0, 2.0], [0.0, 1.0]]))
        tensor([[1.5000, 0.5000],
                [0.0000, 1.0000]])
    """
    identity = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    return _normalize_rows(relevance - identity) + identity


def chefer_relevance(attentions: EncoderDecoderAttentions, *, head_fusion: str = "mean",
                     residual_weight: Optional[float] = None, normalize_self: Optional[bool] = None,
                     transpose_query_relevance: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chefer et al.'s encoder-decoder relevance maps ``(R^{qs}, R^{qq})``: ``(B, T, S)``, ``(B, T, T)``.

    Row ``t`` of ``R^{qs}`` is the relevance of each source token for output position ``t``,
    row ``t`` of ``R^{qq}`` that of each decoder input; see the module docstring for the rules.

    Args:
        attentions: the captured stacks (:class:`EncoderDecoderAttentions`).
        head_fusion: ``"mean"`` (their ``avg_heads``), ``"max"`` or ``"min"``.
        residual_weight: None (default) for Chefer's additive self-attention rule
            ``R += Ā·R``; a float ``w`` in [0, 1] for this library's ``R ← Â·R`` with
            ``Â = w·I + (1 − w)·Ā`` rows renormalised.
        normalize_self: apply eqs. 8–9 to ``R^{ss}``, ``R^{qq}`` before the cross rule
            (default: True for Chefer's rule; not available with ``residual_weight``, whose
            maps are row-stochastic already). False is their ``apply_normalization=False``.
        transpose_query_relevance: use ``(R̄^{qq})ᵀ`` in the cross rule, literally as their
            code does (credits later decoder positions; off by default for causal decoders).

    Example:
        >>> import torch
        >>> from captum_attnflow.functional.encoder_decoder import EncoderDecoderAttentions, chefer_relevance
        >>> causal = torch.tril(torch.ones(3, 3))
        >>> attentions = EncoderDecoderAttentions(
        ...     encoder=torch.full((2, 1, 1, 4, 4), 0.25), decoder=(causal / causal.sum(-1, keepdim=True)).expand(
        ...         2, 1, 1, 3, 3), cross=torch.full((2, 1, 1, 3, 4), 0.25))
        >>> source, target = chefer_relevance(attentions)
        >>> tuple(source.shape), tuple(target.shape), bool((target.triu(1) == 0).all())
        ((1, 3, 4), (1, 3, 3), True)
    """
    check_flag("transpose_query_relevance", transpose_query_relevance)
    chefer_residual = residual_weight is None
    weight = 0.0 if residual_weight is None else check_fraction("residual_weight", residual_weight)
    if normalize_self is None:
        normalize_self = chefer_residual
    check_flag("normalize_self", normalize_self)
    if normalize_self and not chefer_residual:
        raise InvalidParameterError(
            "normalize_self=True (Chefer's eqs. 8-9) applies to the additive rule R += A·R; with residual_weight "
            "the maps are row-stochastic rollouts already. Leave normalize_self out, or residual_weight=None.")
    encoder, decoder, cross = fused_stacks(attentions, head_fusion)
    source_mask, target_mask = attentions.masks()
    batch, source, target = attentions.batch_size, encoder.shape[-1], decoder.shape[-1]
    dtype = torch.float64  # products of up to L_e + L_d layers of (I + Ā): keep the rounding small
    eye_s = torch.eye(source, dtype=dtype, device=encoder.device).expand(batch, source, source)
    eye_t = torch.eye(target, dtype=dtype, device=encoder.device).expand(batch, target, target)
    if chefer_residual:
        encoder_steps = eye_s + encoder.to(dtype)
        decoder_steps = eye_t + decoder.to(dtype)
    else:
        encoder_steps = _with_residual(encoder.to(dtype), weight, source_mask)
        decoder_steps = _with_residual(decoder.to(dtype), weight, target_mask)

    r_ss = eye_s.clone()
    for step in encoder_steps:  # R_ss += Ā·R_ss  (or R_ss ← Â·R_ss)
        r_ss = step @ r_ss
    r_qq = eye_t.clone()
    r_qs = torch.zeros(batch, target, source, dtype=dtype, device=encoder.device)
    for step, cross_layer in zip(decoder_steps, cross):
        r_qq, r_qs = step @ r_qq, step @ r_qs  # rules 6-7 on the decoder's maps
        context_q = chefer_normalization(r_qq) if normalize_self else r_qq
        context_s = chefer_normalization(r_ss) if normalize_self else r_ss
        if transpose_query_relevance:
            context_q = context_q.transpose(-1, -2)
        r_qs = r_qs + context_q @ cross_layer.to(dtype) @ context_s  # rule 10
    return r_qs, r_qq


# ------------------------------------------------------------------------------- joint graph

def joint_transitions(attentions: EncoderDecoderAttentions, *, head_fusion: str = "mean",
                      residual_weight: float = 0.5, cross_weight: float = 0.5
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Capacities of the joint graph: ``(Â^{enc}, decoder part, cross part)``.

    Shapes ``(L_e, B, S, S)``, ``(L_d, B, T, T)`` and ``(L_d, B, T, S)``, float64; for each
    decoder layer the rows of ``[decoder part | cross part]`` sum to 1 (padded decoder rows are
    identity rows with no cross edge). See the module docstring for the definition.
    """
    residual_weight = check_fraction("residual_weight", residual_weight)
    cross_weight = check_fraction("cross_weight", cross_weight)
    encoder, decoder, cross = fused_stacks(attentions, head_fusion)
    source_mask, target_mask = attentions.masks()
    encoder_steps = _with_residual(encoder.double(), residual_weight, source_mask)
    target = decoder.shape[-1]
    identity = torch.eye(target, dtype=torch.float64, device=decoder.device)
    attention_share = 1.0 - residual_weight
    self_part = residual_weight * identity + attention_share * (1.0 - cross_weight) * decoder.double()
    cross_part = attention_share * cross_weight * cross.double()
    sums = self_part.sum(-1, keepdim=True) + cross_part.sum(-1, keepdim=True)
    empty = sums <= 0  # a row with no residual and no attention keeps itself
    real_rows = target_mask[None, :, :, None] & ~empty
    safe = torch.where(empty, torch.ones_like(sums), sums)
    self_part = torch.where(real_rows, self_part / safe, identity.expand_as(self_part))
    cross_part = torch.where(real_rows, cross_part / safe, torch.zeros_like(cross_part))
    return encoder_steps, self_part, cross_part


def joint_layered_transitions(encoder_steps: torch.Tensor, decoder_part: torch.Tensor,
                              cross_part: torch.Tensor) -> np.ndarray:
    """Embed the joint graph in a layered graph: ``(B, L_e + L_d, S + T, S + T)`` float64.

    Level ``n`` holds ``S + T`` nodes. For ``n ≤ L_e``, positions ``0 … S−1`` are encoder layer
    ``n`` and ``S + k`` relays decoder input ``k`` (the node ``(dec, 0, k)`` is position
    ``S + k`` of level ``L_e``). For ``n = L_e + m``, positions ``S + i`` are decoder layer ``m``
    and ``j`` relays the final-encoder node ``(enc, L_e, j)``. Relay edges have capacity 1,
    which no flow from one source (out-capacity 1) can exceed, so every max-flow from a decoder
    output to an input equals the joint graph's; sinks are the level-0 positions: source token
    ``j`` at ``j``, decoder input ``k`` at ``S + k``.

    Example:
        >>> import torch
        >>> layered = joint_layered_transitions(torch.eye(2).expand(1, 1, 2, 2), torch.eye(1).expand(1, 1, 1, 1) / 2,
        ...                                      torch.full((1, 1, 1, 2), 0.25))
        >>> layered.shape, layered[0, 1, 2].tolist()   # (decoder 1, position 0) -> [enc 0, enc 1, decoder input 0]
        ((1, 2, 3, 3), [0.25, 0.25, 0.5])
    """
    encoder_layers, batch, source, _ = encoder_steps.shape
    decoder_layers, _, target, _ = decoder_part.shape
    width = source + target
    layered = np.zeros((batch, encoder_layers + decoder_layers, width, width))
    relay_t = np.eye(target)
    relay_s = np.eye(source)
    for level in range(encoder_layers):
        layered[:, level, :source, :source] = encoder_steps[level].cpu().numpy()
        layered[:, level, source:, source:] = relay_t
    for layer in range(decoder_layers):
        level = encoder_layers + layer
        layered[:, level, :source, :source] = relay_s
        layered[:, level, source:, source:] = decoder_part[layer].cpu().numpy()
        layered[:, level, source:, :source] = cross_part[layer].cpu().numpy()
    return layered


def encoder_decoder_flow(attentions: EncoderDecoderAttentions, *, head_fusion: str = "mean",
                         residual_weight: float = 0.5, cross_weight: float = 0.5, normalize: bool = True,
                         backend: str = "auto", allow_large: bool = False,
                         show_progress: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max-flow from every output position to every input of the joint graph: ``(B, T, S)``, ``(B, T, T)``.

    ``result[0][b, t, j]`` is the flow from ``(dec, L_d, t)`` to source token ``j``,
    ``result[1][b, t, k]`` the flow to decoder input ``k`` (0 for ``k > t``: the decoder is
    causal), each an exact max-flow solved separately. With ``normalize=True`` each row of
    ``[source | target]`` is divided by its sum (Abnar & Zuidema's normalisation over the
    inputs); rows of padded decoder positions are 0, and padded inputs get 0.

    Args:
        attentions: the captured stacks (:class:`EncoderDecoderAttentions`).
        head_fusion: ``"mean"`` | ``"max"`` | ``"min"``.
        residual_weight: ``w`` of the identity in every layer (0.5, as in the paper).
        cross_weight: ``c``: the share of a decoder layer's attention edges given to
            cross-attention (the rest to its self-attention); 0.5 by default.
        normalize: divide each row by its sum over all ``S + T`` inputs.
        backend: max-flow engine (:data:`~captum_attnflow.functional.FLOW_BACKENDS`).
        allow_large: run problems above the time/memory budget.
        show_progress: progress bar (None: shown once the call has run for 2 s).

    Example:
        >>> import torch
        >>> from captum_attnflow.functional.encoder_decoder import EncoderDecoderAttentions, encoder_decoder_flow
        >>> causal = torch.tril(torch.ones(2, 2))
        >>> attentions = EncoderDecoderAttentions(
        ...     encoder=torch.full((1, 1, 1, 3, 3), 1 / 3), decoder=(causal / causal.sum(-1, keepdim=True)).expand(
        ...         1, 1, 1, 2, 2), cross=torch.full((1, 1, 1, 2, 3), 1 / 3))
        >>> source, target = encoder_decoder_flow(attentions)
        >>> rows = torch.cat([source, target], dim=-1).sum(-1)
        >>> torch.allclose(rows, torch.ones(1, 2, dtype=torch.float64)), float(target[0, 0, 1])
        (True, 0.0)
    """
    check_flag("normalize", normalize)
    _maxflow.check_backend(backend)
    encoder_steps, decoder_part, cross_part = joint_transitions(
        attentions, head_fusion=head_fusion, residual_weight=residual_weight, cross_weight=cross_weight)
    source_mask, target_mask = attentions.masks()
    batch, source, target = attentions.batch_size, encoder_steps.shape[-1], decoder_part.shape[-1]
    depth = encoder_steps.shape[0] + decoder_part.shape[0]
    check_flow_budget(estimate_flow_cost(depth, source + target, batch, target, backend=backend,
                                         residual_weight=residual_weight), allow_large)
    layered = joint_layered_transitions(encoder_steps, decoder_part, cross_part)
    valid = torch.cat([source_mask, target_mask], dim=1).cpu().numpy()
    examples = np.repeat(np.arange(batch), target)
    outputs = np.tile(source + np.arange(target), batch)
    flows = _maxflow.max_flows_for_tasks(layered, examples.tolist(), outputs.tolist(), valid=valid, backend=backend,
                                         show_progress=show_progress)
    flows = flows.reshape(batch, target, source + target)
    flows[~target_mask.cpu().numpy()] = 0.0  # padded outputs explain nothing
    if normalize:
        totals = flows.sum(axis=-1, keepdims=True)
        flows = np.divide(flows, totals, out=np.zeros_like(flows), where=totals > 0)
    result = torch.from_numpy(flows)
    return result[..., :source], result[..., source:]


def normalized_rows(scores: torch.Tensor) -> torch.Tensor:
    """Each last-axis row divided by its sum (all-zero rows stay zero)."""
    return _normalize_rows(scores)
