"""Toy pieces for examples, tests, tutorials and benchmarks: a whitespace tokenizer for small
randomly initialised language models (no download)."""

from typing import Sequence


def word_level_tokenizer(words: Sequence[str], *, bos_token: str = "<s>", eos_token: str = "</s>",
                         unk_token: str = "<unk>", pad_token: str = "<pad>"):
    """A fast Hugging Face tokenizer that splits on whitespace, for toy language models.

    Ids: ``pad_token`` 0, ``bos_token`` 1, ``eos_token`` 2, ``unk_token`` 3, then ``words`` in
    order. Encoding prepends ``bos_token`` (as Llama's tokenizers do); character offsets are
    available, so it works with ``TextTemplateInput``.

    Example:
        >>> tokenizer = word_level_tokenizer(["the", "keys", "are"])
        >>> tokenizer.encode("the keys are"), tokenizer.encode("are", add_special_tokens=False)
        ([1, 4, 5, 6], [6])
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: index for index, token in
                  enumerate(dict.fromkeys([pad_token, bos_token, eos_token, unk_token, *words]))}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A", special_tokens=[(bos_token, vocabulary[bos_token])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos_token, eos_token=eos_token,
                                   unk_token=unk_token, pad_token=pad_token)
