"""Explain the output of an encoder-decoder (T5, BART, Marian, mBART, Whisper ...) with
Chefer et al.'s encoder-decoder rollout or with attention flow on the joint graph."""

import inspect
from numbers import Integral
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import Attribution, LLMAttributionResult, TextTokenInput
from captum.log import log_usage
from torch import nn

from captum_attnflow._compat import pretty_tokens
from captum_attnflow._validation import check_choice, check_flag
from captum_attnflow.capture.llm import DEFAULT_GEN_ARGS, _until_end_of_text, end_of_text_ids, pad_token_id
from captum_attnflow.capture.seq2seq import capture_encoder_decoder_attention, check_encoder_decoder
from captum_attnflow.exceptions import InvalidInputError, InvalidInputTypeError, InvalidParameterError
from captum_attnflow.functional.encoder_decoder import chefer_relevance, encoder_decoder_flow, normalized_rows

METHODS = ("rollout", "flow")
#: Options of each method (besides ``normalize``, which both take).
_OPTIONS = {"rollout": ("head_fusion", "residual_weight", "normalize_self", "transpose_query_relevance"),
            "flow": ("head_fusion", "residual_weight", "cross_weight", "backend", "allow_large", "show_progress")}

Source = Union[str, torch.Tensor, TextTokenInput]
Target = Union[str, torch.Tensor]


class Seq2SeqAttributionResult(LLMAttributionResult):
    """A :class:`captum.attr.LLMAttributionResult` with the source and target-prefix parts kept apart.

    ``token_attr`` is ``[source_attr | target_attr]`` (one row per target token), and
    ``input_tokens`` the source tokens followed by the decoder inputs, so Captum's
    ``plot_token_attr()`` shows both.

    Attributes:
        source_attr: ``(T, S)`` attribution of each source token (or encoder position) to
            each target token.
        target_attr: ``(T, T)``: of each decoder input (start token, then the target prefix);
            row ``t`` is 0 beyond column ``t`` (the decoder is causal).
        source_tokens, decoder_tokens: the column labels of the two parts.
        method: ``"rollout"`` or ``"flow"``.
    """

    def __init__(self, *, source_attr: torch.Tensor, target_attr: torch.Tensor, source_tokens: List[str],
                 decoder_tokens: List[str], output_tokens: List[str], method: str) -> None:
        token_attr = torch.cat([source_attr, target_attr], dim=1)
        super().__init__(seq_attr=token_attr.sum(0), token_attr=token_attr,
                         input_tokens=list(source_tokens) + list(decoder_tokens), output_tokens=list(output_tokens))
        self.source_attr = source_attr
        self.target_attr = target_attr
        self.source_tokens = list(source_tokens)
        self.decoder_tokens = list(decoder_tokens)
        self.method = method


class Seq2SeqAttentionAttribution(Attribution):
    r"""Attention rollout with Chefer et al.'s encoder-decoder rules, or attention flow on the joint
    encoder → cross-attention → decoder graph, for each target token of an encoder-decoder model.

    References: Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers", ICCV 2021, https://arxiv.org/abs/2103.15679;
    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
    https://arxiv.org/abs/2005.00928 (flow on the joint graph answers their repository's open
    question, samiraabnar/attention_flow issue 6). The rules, the graph and the default
    variants are defined in :mod:`captum_attnflow.functional.encoder_decoder`.

    **Teacher forcing.** One forward pass over the source and the decoder inputs (the
    model's decoder start token followed by the target shifted right) captures the encoder's
    self-attention, the decoder's self-attention and the cross-attention
    (:func:`~captum_attnflow.capture.seq2seq.capture_encoder_decoder_attention`); decoder
    position ``t`` predicts target token ``t``, so its row explains that token. Several
    examples (:meth:`attribute_batch`) are right-padded into one pass; each result equals the
    one of the example alone.

    **Results.** A :class:`Seq2SeqAttributionResult` (a Captum ``LLMAttributionResult``) with
    ``source_attr`` ``(T, S)`` and ``target_attr`` ``(T, T)``. With ``normalize=True`` (default):
    for ``"flow"`` each row of ``[source | target]`` sums to 1 (flows to all inputs, divided
    by their sum: the source part's sum is the share reaching the source); for ``"rollout"``
    the source part and the target part are each divided by their own row sum (Chefer's maps
    ``R^{qs}`` and ``R^{qq}`` start from 0 and from ``I``: their relative scale means nothing).

    Args:
        model: a Hugging Face encoder-decoder (``T5ForConditionalGeneration``,
            ``BartForConditionalGeneration``, ``MarianMTModel``, ``WhisperForConditionalGeneration`` ...).
        tokenizer: its tokenizer (for text sources, string targets and token labels); may be
            None when sources and targets are given as ids or features.

    Example:
        >>> import torch
        >>> from transformers import BartConfig, BartForConditionalGeneration
        >>> from captum_attnflow import Seq2SeqAttentionAttribution
        >>> from captum_attnflow.toy import word_level_tokenizer
        >>> tokenizer = word_level_tokenizer("the cat sat le chat assis".split())
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = BartForConditionalGeneration(BartConfig(
        ...     vocab_size=len(tokenizer), d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        ...     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
        ...     pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)).eval()
        >>> explainer = Seq2SeqAttentionAttribution(model, tokenizer)
        >>> result = explainer.attribute("the cat sat", target="le chat assis", method="flow")
        >>> result.source_tokens, result.decoder_tokens, result.output_tokens
        (['<s>', 'the', 'cat', 'sat'], ['</s>', 'le', 'chat'], ['le', 'chat', 'assis'])
        >>> tuple(result.source_attr.shape), tuple(result.target_attr.shape)
        ((3, 4), (3, 3))
        >>> torch.allclose(result.token_attr.sum(-1), torch.ones(3, dtype=torch.float64))
        True
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        self.model: nn.Module = check_encoder_decoder(model)
        super().__init__(self.model)
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @log_usage()
    def attribute(self, inputs: Source, target: Optional[Target] = None, method: str = "rollout", *,
                  gen_args: Optional[Dict[str, Any]] = None, normalize: bool = True,
                  **options: Any) -> Seq2SeqAttributionResult:
        r"""
        Args:
            inputs: the source: a string (tokenized with special tokens), a
                :class:`~captum.attr.TextTokenInput`, 1-D token ids, or for speech models the
                input features of one example (e.g. ``(mel bins, frames)`` for Whisper).
            target: the target text (tokenized without special tokens, as Captum does) or
                1-D token ids; None generates it with ``model.generate(**gen_args)``.
            method: ``"rollout"`` (Chefer's rules) or ``"flow"`` (max-flow on the joint graph).
            gen_args: generation arguments when ``target`` is None (default: Captum's).
            normalize: see the class docstring.
            **options: ``head_fusion``, ``residual_weight``; for rollout ``normalize_self``,
                ``transpose_query_relevance``; for flow ``cross_weight``, ``backend``,
                ``allow_large``, ``show_progress`` (see
                :func:`~captum_attnflow.functional.encoder_decoder.chefer_relevance` and
                :func:`~captum_attnflow.functional.encoder_decoder.encoder_decoder_flow`).
        """
        targets = None if target is None else [target]
        return self.attribute_batch([inputs], targets, method, gen_args=gen_args, normalize=normalize,
                                    **options)[0]

    @log_usage()
    def attribute_batch(self, inputs: Sequence[Source], targets: Optional[Sequence[Target]] = None,
                        method: str = "rollout", *, gen_args: Optional[Dict[str, Any]] = None,
                        normalize: bool = True, **options: Any) -> List[Seq2SeqAttributionResult]:
        """:meth:`attribute` for several sources in one padded forward pass; one result each."""
        method = check_choice("method", method, METHODS)
        check_flag("normalize", normalize)
        unknown = sorted(set(options) - set(_OPTIONS[method]))
        if unknown:
            raise InvalidParameterError(
                f"{unknown[0]} is not an option of method={method!r}; use one of {sorted(_OPTIONS[method])}.")
        if isinstance(inputs, (str, torch.Tensor, TextTokenInput)) or not isinstance(inputs, (list, tuple)) \
                or not inputs:
            raise InvalidInputTypeError("inputs must be a non-empty list of sources; use attribute() for one.")
        sources = [self._source(inp) for inp in inputs]
        if targets is None:
            target_ids = self._generate(sources, gen_args)
        else:
            if gen_args is not None:
                raise InvalidParameterError("gen_args is only used to generate a target; leave it out when a "
                                            "target is given.")
            if isinstance(targets, (str, torch.Tensor)) or len(targets) != len(sources):
                raise InvalidParameterError(f"targets must be a list of {len(sources)} targets, one per source.")
            target_ids = [self._target(target) for target in targets]
        decoder_ids = [torch.cat([torch.tensor([self._start_id()]), target[:-1]]) for target in target_ids]
        source_scores, target_scores, source_lengths = self._scores(sources, decoder_ids, method, normalize, options)
        return [self._result(b, source, target, decoder, source_scores, target_scores, source_lengths[b], method)
                for b, (source, target, decoder) in enumerate(zip(sources, target_ids, decoder_ids))]

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    # ------------------------------------------------------------------ inputs

    def _is_text_model(self) -> bool:
        return getattr(self.model, "main_input_name", "input_ids") == "input_ids"

    def _needs_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise InvalidParameterError(f"{what} needs the tokenizer: Seq2SeqAttentionAttribution(model, tokenizer).")
        return self.tokenizer

    def _source(self, inp: Source) -> torch.Tensor:
        if not self._is_text_model():
            if not isinstance(inp, torch.Tensor) or not inp.is_floating_point():
                raise InvalidInputTypeError(
                    f"{type(self.model).__name__} reads {self.model.main_input_name}: pass each source as a float "
                    f"tensor of one example's features (e.g. (mel bins, frames)), got {type(inp).__name__}.")
            return inp[0] if inp.ndim >= 3 and inp.shape[0] == 1 else inp
        if isinstance(inp, str):
            return torch.tensor(self._needs_tokenizer("A text source")(inp)["input_ids"], dtype=torch.long)
        if isinstance(inp, TextTokenInput):
            if inp.itp_mask is not None:
                raise InvalidInputError("TextTokenInput with skip_tokens is not supported here: every source token "
                                        "gets a column. Pass the TextTokenInput without skip_tokens.")
            return inp.inp_tensor.reshape(-1).long()
        return self._ids(inp, "a source")

    def _target(self, target: Target) -> torch.Tensor:
        if isinstance(target, str):
            tokenizer = self._needs_tokenizer("A string target")
            # text_target: tokenizers with a separate target vocabulary (Marian) encode targets with it.
            accepts_target = "text_target" in inspect.signature(tokenizer.__call__).parameters
            encoded = tokenizer(text_target=target, add_special_tokens=False) if accepts_target else \
                tokenizer(target, add_special_tokens=False)
            ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
        else:
            ids = self._ids(target, "the target")
        if ids.numel() == 0:
            raise InvalidInputError("target has no tokens; pass at least one token to explain.")
        return ids

    @staticmethod
    def _ids(value: Any, what: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise InvalidInputTypeError(
                f"{what} must be a str or a 1-D tensor of token ids, got {type(value).__name__}.")
        if value.is_floating_point() or value.dtype == torch.bool or value.is_complex():
            raise InvalidInputTypeError(f"{what}: token ids must be integers, got dtype {value.dtype}.")
        if value.ndim == 2 and value.shape[0] == 1:
            value = value[0]
        if value.ndim != 1 or value.numel() == 0:
            raise InvalidInputError(f"{what}: token ids must be a non-empty 1-D tensor, got {tuple(value.shape)}.")
        return value.detach().cpu().long()

    def _start_id(self) -> int:
        for config in (getattr(self.model, "generation_config", None), self.model.config):
            start = getattr(config, "decoder_start_token_id", None)
            if isinstance(start, Integral):
                return int(start)
        raise InvalidParameterError(
            f"{type(self.model).__name__}'s config has no decoder_start_token_id, so the decoder inputs of teacher "
            "forcing are unknown; set model.config.decoder_start_token_id.")

    def _pad_id(self) -> int:
        if self.tokenizer is not None:
            return pad_token_id(self.tokenizer)
        pad = getattr(self.model.config, "pad_token_id", None)
        return int(pad) if isinstance(pad, Integral) else 0

    def _encoder_batch(self, sources: List[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Right-padded ids and mask (text), or stacked features (speech: same length, no mask)."""
        if not self._is_text_model():
            shapes = {tuple(s.shape) for s in sources}
            if len(shapes) != 1:
                raise InvalidInputError(f"the sources' features have different shapes {sorted(shapes)}; pad them "
                                        "with the model's feature extractor to one length.")
            return torch.stack(sources), None
        ids, mask = right_padded(sources, self._pad_id())
        return ids, mask

    # ------------------------------------------------------------------ generation and scores

    def _generate(self, sources: List[torch.Tensor], gen_args: Optional[Dict[str, Any]]) -> List[torch.Tensor]:
        if gen_args is not None and not isinstance(gen_args, dict):
            raise InvalidParameterError(
                f"gen_args must be a dict of generate() arguments, got {type(gen_args).__name__}.")
        inputs, mask = self._encoder_batch(sources)
        model: Any = self.model
        call: Dict[str, Any] = {model.main_input_name: inputs.to(self.device)}
        if mask is not None:
            call["attention_mask"] = mask.to(self.device)
        with torch.no_grad():
            output = model.generate(**call, **dict(gen_args or DEFAULT_GEN_ARGS)).cpu()
        if output.shape[0] != len(sources):
            raise InvalidParameterError(f"gen_args produced {output.shape[0]} sequences for {len(sources)} sources; "
                                        "explain one sequence per source (num_return_sequences=1).")
        end_ids = end_of_text_ids(self.model, self.tokenizer)
        targets = []
        for row in output:
            tokens = row[1:] if int(row[0]) == self._start_id() else row  # generate() starts with the start token
            tokens = _until_end_of_text(tokens, end_ids)
            if tokens.numel() == 0:
                raise InvalidInputError("the model generated no token to explain; pass a target.")
            targets.append(tokens)
        return targets

    def _scores(self, sources: List[torch.Tensor], decoder_ids: List[torch.Tensor], method: str, normalize: bool,
                options: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        inputs, mask = self._encoder_batch(sources)
        decoder_input_ids, decoder_mask = right_padded(decoder_ids, self._pad_id())
        fusion = options.get("head_fusion", "mean")
        captured = capture_encoder_decoder_attention(
            self.model, inputs.to(self.device), decoder_input_ids.to(self.device),
            attention_mask=None if mask is None else mask.to(self.device),
            decoder_attention_mask=decoder_mask.to(self.device), head_fusion=fusion)
        if method == "flow":
            source_scores, target_scores = encoder_decoder_flow(captured, normalize=normalize, **options)
        else:
            source_scores, target_scores = chefer_relevance(captured, **options)
            if normalize:
                source_scores, target_scores = normalized_rows(source_scores), normalized_rows(target_scores)
        length = captured.encoder.shape[-1]
        source_lengths = [int(m.sum()) for m in mask] if mask is not None else [length] * len(sources)
        return source_scores.cpu(), target_scores.cpu(), source_lengths

    def _result(self, b: int, source: torch.Tensor, target: torch.Tensor, decoder: torch.Tensor,
                source_scores: torch.Tensor, target_scores: torch.Tensor, source_length: int,
                method: str) -> Seq2SeqAttributionResult:
        steps = len(target)
        if self._is_text_model():
            source_tokens = self._tokens(source)
        else:
            source_tokens = [f"position {p}" for p in range(source_length)]
        return Seq2SeqAttributionResult(
            source_attr=source_scores[b, :steps, :source_length], target_attr=target_scores[b, :steps, :steps],
            source_tokens=source_tokens, decoder_tokens=self._tokens(decoder), output_tokens=self._tokens(target),
            method=method)

    def _tokens(self, ids: torch.Tensor) -> List[str]:
        if self.tokenizer is None:
            return [str(int(i)) for i in ids]
        return pretty_tokens(ids, self.tokenizer)


def right_padded(sequences: Sequence[torch.Tensor], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors left-aligned: ``(ids, mask)`` (encoders and teacher-forced decoders
    read positions from the start, so padding goes on the right).

    Example:
        >>> ids, mask = right_padded([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = sequence
        mask[row, :len(sequence)] = 1
    return ids, mask
