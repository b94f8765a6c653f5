"""Capture all three attention stacks of a Hugging Face encoder-decoder in one teacher-forced pass.

T5, BART, Marian, mBART, Pegasus, Whisper ... declare their attention modules per stack in
``_can_record_outputs`` (``"attentions"`` on the encoder and the decoder, ``"cross_attentions"``
on the decoder). One forward pass with ``decoder_input_ids`` runs the encoder's self-attention
(``L_e`` layers), the decoder's causal self-attention and its cross-attention (``L_d`` layers
each); forward hooks record each module's weights, found by the same recorder specs as
:class:`~captum_attnflow.capture.HuggingFaceAdapter` (encoder and decoder are told apart by
the stack a module sits in, so T5's shared ``T5LayerSelfAttention`` class is no problem).

The model is switched to eager attention for the call (:func:`~captum_attnflow.capture.eager_attention`)
and restored afterwards, hooks included, also when the forward pass raises. The padding masks
are the ``attention_mask`` / ``decoder_attention_mask`` this function itself passes to the model.
"""

import contextlib
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from captum_attnflow._compat import output_recorders
from captum_attnflow._validation import (
    check_attention_mask,
    check_attention_values,
    check_head_fusion,
    check_model_inputs,
    check_token_ids,
)
from captum_attnflow.capture.base import _warn_if_training, model_lock
from captum_attnflow.capture.huggingface import _attention_specs, _matches, eager_attention
from captum_attnflow.exceptions import (
    AttentionCaptureError,
    InvalidInputError,
    InvalidInputTypeError,
    UnsupportedModelError,
)
from captum_attnflow.functional.encoder_decoder import EncoderDecoderAttentions
from captum_attnflow.functional.fusion import fuse_heads

#: The three stacks, as ``(name, stack, recorder key)``.
STACKS = (("encoder", "encoder", "attentions"), ("decoder", "decoder", "attentions"),
          ("cross", "decoder", "cross_attentions"))


@dataclass
class CapturedEncoderDecoder(EncoderDecoderAttentions):
    """:class:`~captum_attnflow.functional.encoder_decoder.EncoderDecoderAttentions` and the model's output."""

    outputs: Any = None


def check_encoder_decoder(model: Any) -> PreTrainedModel:
    """Refuse, before anything runs, a model that is not a Hugging Face encoder-decoder."""
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"encoder-decoder attribution needs a Hugging Face encoder-decoder model (T5, BART, Marian, mBART, "
            f"Whisper ...), got {type(model).__name__}.")
    config = model.config
    if not getattr(config, "is_encoder_decoder", False):
        if getattr(config, "is_decoder", False) or model.can_generate():
            raise UnsupportedModelError(
                f"{type(model).__name__} is a decoder-only model: it has no encoder and no cross-attention. Explain "
                "its generations with LLMAttentionAttribution(AttentionRollout(model), tokenizer).")
        raise UnsupportedModelError(
            f"{type(model).__name__} is an encoder-only model: it has no decoder and no cross-attention. Explain it "
            "with AttentionRollout(model) or AttentionFlow(model).")
    for getter in ("get_encoder", "get_decoder"):
        if not callable(getattr(model, getter, None)):
            raise UnsupportedModelError(f"{type(model).__name__} has no {getter}(); pass the full encoder-decoder "
                                        "model (e.g. BartForConditionalGeneration).")
    return model


def _stack(model: PreTrainedModel, which: str) -> nn.Module:
    stack = model.get_encoder() if which == "encoder" else model.get_decoder()
    if stack is model or not isinstance(stack, nn.Module):
        raise UnsupportedModelError(f"{type(model).__name__}.get_{which}() does not return its {which} stack.")
    return stack


def _declared(stack: nn.Module, key: str) -> List[Tuple[Any, int, Optional[str], Optional[str]]]:
    """Recorder specs of ``stack`` (or of the model it belongs to) for ``key``."""
    owners = [stack] + [m for m in stack.modules() if isinstance(m, PreTrainedModel) and m is not stack]
    for owner in owners:
        declared = output_recorders(owner).get(key)
        if declared is not None:
            # The adapter's parser reads the "attentions" entry of an object's _can_record_outputs.
            return _attention_specs(cast(nn.Module, SimpleNamespace(_can_record_outputs={"attentions": declared})))
    return []


def attention_modules(model: PreTrainedModel) -> Dict[str, List[Tuple[nn.Module, int]]]:
    """Per stack (``"encoder"``, ``"decoder"``, ``"cross"``), its attention modules in layer order
    and where their output holds the weights."""
    found: Dict[str, List[Tuple[nn.Module, int]]] = {}
    for name, which, key in STACKS:
        stack = _stack(model, which)
        specs = _declared(stack, key)
        modules: List[Tuple[nn.Module, int]] = []
        seen = set()
        for spec in specs:
            for module_name, module in stack.named_modules():
                if id(module) not in seen and _matches(module_name, module, spec):
                    seen.add(id(module))
                    modules.append((module, spec[1]))
        if not modules:
            raise AttentionCaptureError(
                f"{type(model).__name__}: no {name} attention modules found ({type(stack).__name__} declares no "
                f"'{key}' recorder in _can_record_outputs); this transformers model cannot be captured per stack.")
        found[name] = modules
    return found


def _check_inputs(model: PreTrainedModel, inputs: Any, decoder_input_ids: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if decoder_input_ids is None:
        raise InvalidInputError(
            "decoder_input_ids is missing: an encoder-decoder is explained by teacher forcing, one forward pass "
            "over the source and the decoder inputs (the start token followed by the target shifted right). "
            "Pass decoder_input_ids, or use Seq2SeqAttentionAttribution with a target.")
    decoder_input_ids = check_token_ids(decoder_input_ids)
    vocabulary = getattr(model.get_decoder().get_input_embeddings(), "num_embeddings", None) \
        if callable(getattr(model.get_decoder(), "get_input_embeddings", None)) else None
    check_model_inputs(decoder_input_ids, vocabulary)
    if getattr(model, "main_input_name", "input_ids") == "input_ids":
        inputs = check_token_ids(inputs)
        check_model_inputs(inputs, model.get_encoder().get_input_embeddings().num_embeddings)
    else:
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise InvalidInputTypeError(
                f"{type(model).__name__} reads {model.main_input_name} (float features, e.g. (B, mel bins, frames) "
                f"for Whisper), got {type(inputs).__name__} {getattr(inputs, 'dtype', '')}; prepare them with the "
                "model's feature extractor.")
        check_model_inputs(inputs)
    if inputs.shape[0] != decoder_input_ids.shape[0]:
        raise InvalidInputError(f"inputs hold {inputs.shape[0]} examples but decoder_input_ids hold "
                                f"{decoder_input_ids.shape[0]}; pass one row of decoder inputs per example.")
    return inputs, decoder_input_ids


def _source_mask(model: PreTrainedModel, attention_mask: Optional[torch.Tensor], inputs: torch.Tensor
                 ) -> Optional[torch.Tensor]:
    if attention_mask is None:
        return None
    if getattr(model, "main_input_name", "input_ids") != "input_ids":
        raise InvalidInputError(
            f"{type(model).__name__}'s encoder reads {model.main_input_name} and attends to every position of them "
            "(its attention_mask is not applied to the encoder's self-attention); leave attention_mask out.")
    return check_attention_mask(attention_mask, inputs.shape[0], inputs.shape[1], convention="hugging-face")


@contextlib.contextmanager
def _recording(modules: Dict[str, List[Tuple[nn.Module, int]]], recorded: Dict[str, List], thread_id: int):
    """Forward hooks keeping ``(layer, weights)`` per stack, for the calling thread only."""

    def hook_for(name: str, layer: int, index: int):
        def record(module, _args, output):
            if threading.get_ident() != thread_id:
                return
            weights = output[index] if isinstance(output, (tuple, list)) and len(output) > abs(index) else None
            if not isinstance(weights, torch.Tensor) or weights.ndim != 4:
                raise AttentionCaptureError(
                    f"{name} attention layer {layer + 1} ({type(module).__name__}) returned no attention weights; "
                    "load the model with attn_implementation='eager'.")
            recorded[name].append((layer, weights.detach()))
        return record

    handles = [module.register_forward_hook(hook_for(name, layer, index))
               for name, stack in modules.items() for layer, (module, index) in enumerate(stack)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _stacked(name: str, layers: List[Tuple[int, torch.Tensor]], num_modules: int,
             query_mask: Optional[torch.Tensor], head_fusion: Optional[str], training: bool) -> torch.Tensor:
    """Check one stack's recorded layers (each module once, in order) and stack them ``(L, B, H, Q, K)``."""
    if [layer for layer, _ in layers] != list(range(num_modules)):
        raise AttentionCaptureError(
            f"the forward pass ran the {name} attention layers {[layer + 1 for layer, _ in layers]} (expected "
            f"1..{num_modules}, each once): run the model once per capture.")
    checked = []
    for layer, weights in layers:
        if query_mask is not None:
            # A padded query may see only padding (NaN from the softmax); its row is never used.
            weights = weights.masked_fill(~query_mask.to(weights.device)[:, None, :, None], 0.0)
        check_attention_values(weights, f"{name} attention layer {layer + 1}", allow_above_one=training,
                               check_row_sums=not training)
        checked.append(fuse_heads(weights, head_fusion)[:, None] if head_fusion else weights)
    return torch.stack(checked)


def capture_encoder_decoder_attention(model: nn.Module, inputs: torch.Tensor, decoder_input_ids: torch.Tensor, *,
                                      attention_mask: Optional[torch.Tensor] = None,
                                      decoder_attention_mask: Optional[torch.Tensor] = None,
                                      head_fusion: Optional[str] = "mean") -> CapturedEncoderDecoder:
    """Run ``model`` once (teacher forcing) and capture encoder, decoder and cross-attention.

    Args:
        model: a Hugging Face encoder-decoder (``T5ForConditionalGeneration``,
            ``BartForConditionalGeneration``, ``MarianMTModel``, ``WhisperForConditionalGeneration`` ...).
        inputs: the encoder's input: token ids ``(B, S)``, or ``input_features`` for Whisper.
        decoder_input_ids: ``(B, T)`` decoder inputs: the start token, then the target shifted right.
        attention_mask: ``(B, S)`` 0/1 source padding mask (not for Whisper, whose encoder
            attends to every frame).
        decoder_attention_mask: ``(B, T)`` 0/1 mask of real decoder inputs (right padding).
        head_fusion: fuse heads while capturing (``"mean"``, ``"max"``, ``"min"``) or None.

    Returns:
        :class:`CapturedEncoderDecoder` with ``encoder`` ``(L_e, B, H, S, S)``, ``decoder``
        ``(L_d, B, H, T, T)``, ``cross`` ``(L_d, B, H, T, S)`` (``H == 1`` when fused), the masks
        and the model's output.

    Example:
        >>> import torch
        >>> from transformers import BartConfig, BartForConditionalGeneration
        >>> model = BartForConditionalGeneration(BartConfig(
        ...     vocab_size=20, d_model=8, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
        ...     decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32)).eval()
        >>> captured = capture_encoder_decoder_attention(model, torch.tensor([[0, 5, 6, 2]]), torch.tensor([[2, 0, 7]]))
        >>> tuple(captured.encoder.shape), tuple(captured.decoder.shape), tuple(captured.cross.shape)
        ((2, 1, 1, 4, 4), (3, 1, 1, 3, 3), (3, 1, 1, 3, 4))
        >>> model.config._attn_implementation   # restored
        'sdpa'
    """
    if head_fusion is not None:
        check_head_fusion(head_fusion)
    model = check_encoder_decoder(model)
    inputs, decoder_input_ids = _check_inputs(model, inputs, decoder_input_ids)
    source_mask = _source_mask(model, attention_mask, inputs)
    target_mask = check_attention_mask(decoder_attention_mask, *decoder_input_ids.shape, convention="hugging-face",
                                       name="decoder_attention_mask")
    training = _warn_if_training(model)
    modules = attention_modules(model)
    recorded: Dict[str, List] = {name: [] for name in modules}
    call: Dict[str, Any] = {model.main_input_name: inputs, "decoder_input_ids": decoder_input_ids,
                            "use_cache": False}
    if attention_mask is not None:
        call["attention_mask"] = attention_mask
    if decoder_attention_mask is not None:
        call["decoder_attention_mask"] = decoder_attention_mask
    # The existing adapter locks on the encoder's first attention module: the same key serialises both.
    with model_lock(modules["encoder"][0][0]), eager_attention(model), \
            _recording(modules, recorded, threading.get_ident()), torch.no_grad():
        outputs = model(**call)
    encoder = _stacked("encoder", recorded["encoder"], len(modules["encoder"]), source_mask, head_fusion, training)
    decoder = _stacked("decoder", recorded["decoder"], len(modules["decoder"]), target_mask, head_fusion, training)
    cross = _stacked("cross", recorded["cross"], len(modules["cross"]), target_mask, head_fusion, training)
    if source_mask is not None and source_mask.shape[1] != encoder.shape[-1]:
        raise AttentionCaptureError(
            f"the encoder attended over {encoder.shape[-1]} positions but attention_mask has {source_mask.shape[1]}.")
    return CapturedEncoderDecoder(encoder=encoder, decoder=decoder, cross=cross, source_mask=source_mask,
                                  target_mask=target_mask, head_fusion=head_fusion, outputs=outputs)
