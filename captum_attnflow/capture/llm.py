"""Teacher forcing for Hugging Face causal language models: prompts left-padded into one
forward pass with positions counted over real tokens, batched generation cut at the end of
text, and teacher-forced log-probabilities.

The model plumbing of :class:`~captum_attnflow.LLMAttentionAttribution` and of the harness's
LLM mode (:mod:`captum_attnflow.evaluation.llm`).
"""

import inspect
from numbers import Integral
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import nn

from captum_attnflow.exceptions import InvalidParameterError

#: Captum's default generation arguments (``captum.attr._core.llm_attr.DEFAULT_GEN_ARGS``).
DEFAULT_GEN_ARGS: Dict[str, Any] = {"max_new_tokens": 25, "do_sample": False, "temperature": None, "top_p": None}


def causal_lm_forward(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``forward(input_ids, attention_mask) -> logits`` with positions counted over real tokens.

    Hugging Face decoders number positions from the first column unless told otherwise, so a
    left-padded prompt would be read at shifted positions; ``generate`` passes the same
    ``position_ids`` as here.
    """
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"position_ids": position_ids_from_mask(attention_mask)} if takes_positions else {}
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits

    return forward


def generate_targets(model: nn.Module, prompts: Sequence[torch.Tensor], gen_args: Optional[Dict[str, Any]], *,
                     pad_id: int, end_ids: Sequence[int]) -> List[torch.Tensor]:
    """Generate a continuation of each 1-D prompt in one left-padded ``model.generate`` call.

    ``gen_args`` default to Captum's; each row is cut after its first end-of-text token (a
    batched ``generate`` pads the rows that finished early), so it equals the prompt's own
    generation.
    """
    if gen_args is not None and not isinstance(gen_args, dict):
        raise InvalidParameterError(f"gen_args must be a dict of generate() arguments, got {type(gen_args).__name__}.")
    gen_args = dict(gen_args or DEFAULT_GEN_ARGS)
    limit, new_tokens = max_positions(model), gen_args.get("max_new_tokens")
    longest = max(len(p) for p in prompts)
    if limit is not None and isinstance(new_tokens, Integral) and longest + int(new_tokens) > limit:
        raise InvalidParameterError(
            f"gen_args['max_new_tokens']={new_tokens} after a {longest}-token prompt goes past the model's "
            f"maximum length of {limit}; generate at most {max(limit - longest, 0)} tokens.")
    input_ids, attention_mask, _ = left_padded(prompts, pad_id)
    device = next(model.parameters()).device
    # nn.Module types its attributes as Tensor | Module; a causal LM's generate is a method.
    generate = cast(Callable[..., torch.Tensor], model.generate)
    with torch.no_grad():
        output = generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **gen_args)
    if output.shape[0] != len(prompts):
        raise InvalidParameterError(
            f"gen_args produced {output.shape[0]} sequences for {len(prompts)} prompts; explain one sequence "
            "per prompt (num_return_sequences=1).")
    return [_until_end_of_text(row, end_ids) for row in output[:, input_ids.shape[1]:].cpu()]


def prompt_token_ids(inp, tokenizer) -> torch.Tensor:
    """The 1-D token ids the model reads for ``inp``, formed as Captum's LLM classes form them."""
    model_input = inp.to_model_input()
    if isinstance(model_input, str):
        return torch.tensor(tokenizer.encode(model_input), dtype=torch.long)
    return model_input.reshape(-1)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding (else end-of-text) id; any id would do since padding is masked."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, Integral):
            return int(candidate)
    return 0


def end_of_text_ids(model: nn.Module, tokenizer) -> List[int]:
    """The ids that end a generation (the model's generation config, else the tokenizer's EOS)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    return [] if eos is None else ([int(eos)] if isinstance(eos, Integral) else [int(e) for e in eos])


def target_log_probs(model: nn.Module, prompts: Sequence[torch.Tensor], target: torch.Tensor, *,
                     pad_id: int) -> torch.Tensor:
    """``(N, T)`` teacher-forced ``log p(target_t | prompt_n, target_<t)`` in one left-padded pass."""
    input_ids, attention_mask, _ = left_padded([torch.cat([p, target]) for p in prompts], pad_id)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = causal_lm_forward(model)(input_ids.to(device), attention_mask.to(device))
    # Right-aligned rows: the same columns predict the target in every row.
    width, length = input_ids.shape[1], len(target)
    log_probs = torch.log_softmax(logits[:, width - length - 1:width - 1].float(), dim=-1)
    return log_probs.gather(-1, target.to(device)[None, :, None].expand(len(prompts), -1, 1))[..., 0].cpu()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row (padding gets 0).

    Example:
        >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]]))
        tensor([[0, 0, 0, 1, 2]])
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_padded(sequences: Sequence[torch.Tensor], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """Stack 1-D id tensors right-aligned: ``(input_ids, attention_mask, offsets)``.

    ``offsets[b]`` is the column of the first real token of row ``b``.

    Example:
        >>> ids, mask, offsets = left_padded([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=0)
        >>> ids.tolist(), mask.tolist(), offsets
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [0, 2])
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = []
    for row, sequence in enumerate(sequences):
        offset = width - len(sequence)
        input_ids[row, offset:] = sequence
        attention_mask[row, offset:] = 1
        offsets.append(offset)
    return input_ids, attention_mask, offsets


def max_positions(model: nn.Module) -> Optional[int]:
    """The longest sequence the model reads (its config's position limit), None if it has none."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, Integral) and int(value) > 0:
            return int(value)
    return None


def _until_end_of_text(generated: torch.Tensor, end_ids: Sequence[int]) -> torch.Tensor:
    """A row of a batched ``generate`` cut after its first end-of-text token (padding follows it)."""
    for index, token in enumerate(generated.tolist()):
        if token in end_ids:
            return generated[:index + 1]
    return generated
