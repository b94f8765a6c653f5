"""Canary for the private transformers and Captum internals that captum_attnflow/_compat.py wraps.

Each test names the function to update when a release changes what it relies on, so a new
transformers or Captum fails here, loudly, instead of capture quietly returning no weights or
leaving a user's model switched to eager attention.
"""

import captum
import pytest
import torch
import transformers as T
from packaging.version import Version
from test_model_families import DECODERS, ENCODERS, SEQ2SEQ

from captum_attnflow import _compat
from captum_attnflow.capture import HuggingFaceAdapter
from captum_attnflow.capture.llm import DEFAULT_GEN_ARGS

VIT = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=37)
FAMILIES = {**{name: ("tokens", f) for name, f in {**ENCODERS, **DECODERS}.items()},
            **{name: ("seq2seq", f) for name, f in SEQ2SEQ.items()},
            "vit": ("pixels", lambda: T.ViTModel(T.ViTConfig(**VIT)))}
#: Older-style models that declare no recorders and are asked with ``output_attentions=True``.
LEGACY = {"deberta-v2"}
NUM_LAYERS, NUM_HEADS = 2, 4


def changed(library: str, what: str, function: str) -> str:
    """The failure message: what changed, and where captum-attnflow relies on it (a function of _compat.py)."""
    version = {"transformers": T.__version__, "captum": captum.__version__}[library]
    where = function if "." in function else f"captum_attnflow/_compat.py:{function}"
    return (f"{library} {version} changed {what}, which captum-attnflow relies on in {where}. Update it "
            f"(and this canary) before allowing this {library} release in setup.cfg.")


def build(family: str):
    torch.manual_seed(0)
    return FAMILIES[family][1]().eval()


def attentions_of(model, family: str, seq_len: int = 5) -> tuple:
    """The weights the model returns when asked with ``output_attentions=True`` (the encoder's for seq2seq)."""
    kind = FAMILIES[family][0]
    generator = torch.Generator().manual_seed(1)
    if kind == "pixels":
        inputs = {"pixel_values": torch.randn(1, 3, 16, 16, generator=generator)}
    else:
        inputs = {"input_ids": torch.randint(3, 100, (1, seq_len), generator=generator)}
    if kind == "seq2seq":
        inputs["decoder_input_ids"] = torch.ones(1, 2, dtype=torch.long)
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True)
    return tuple(outputs.encoder_attentions if kind == "seq2seq" else outputs.attentions)


def configs_of(model) -> list:
    return list({id(m.config): m.config for m in model.modules() if isinstance(m, T.PreTrainedModel)}.values())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_stored_attention_implementation_is_what_the_model_runs(family):
    model = build(family)
    configs = configs_of(model)
    for config in configs:
        assert "_attn_implementation_internal" in vars(config), changed(
            "transformers", "where a config stores its attention implementation (_attn_implementation_internal)",
            "saved_attn_implementation")
        assert _compat.attn_implementation(config) == _compat.saved_attn_implementation(config), changed(
            "transformers", "config._attn_implementation (no longer the stored _attn_implementation_internal)",
            "attn_implementation")
    saved = [_compat.saved_attn_implementation(config) for config in configs]

    _compat.set_attn_implementation(model, "eager")
    assert [_compat.saved_attn_implementation(config) for config in configs] == ["eager"] * len(configs), changed(
        "transformers", "what set_attn_implementation('eager') stores", "set_attn_implementation")
    weights = attentions_of(model, family)
    assert len(weights) == NUM_LAYERS and all(w.ndim == 4 and w.shape[1] == NUM_HEADS for w in weights), changed(
        "transformers", "eager attention's output_attentions=True weights", "set_attn_implementation")
    assert all(torch.allclose(w.sum(-1), torch.ones(())) for w in weights)

    for config, value in zip(configs, saved):
        _compat.restore_attn_implementation(config, value)
    assert [_compat.attn_implementation(config) for config in configs] == saved, changed(
        "transformers", "how the stored attention implementation is written back", "restore_attn_implementation")
    if saved[0] != "eager":
        # The model runs the restored fused kernel again: it returns no weights.
        assert attentions_of(model, family) == (), changed(
            "transformers", "the kernel a restored config selects", "restore_attn_implementation")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in LEGACY])
def test_models_declare_their_attention_modules(family):
    model = build(family)
    # The outermost model, or a stack inside it (BART declares them on its encoder and decoder).
    declared = [_compat.output_recorders(m).get("attentions") for m in model.modules()
                if isinstance(m, T.PreTrainedModel)]
    declared = [spec for spec in declared if spec is not None]
    assert declared, changed(
        "transformers", "PreTrainedModel._can_record_outputs (no 'attentions' entry)", "output_recorders")
    for spec in (s for specs in declared for s in (specs if isinstance(specs, list) else [specs])):
        assert isinstance(spec, (str, type)) or all(
            hasattr(spec, field) for field in ("target_class", "index", "layer_name", "class_name")), changed(
            "transformers", f"the form of an attention recorder ({spec!r})", "output_recorders")
    # The self-attention modules of the (encoder) stack, found through the declaration (ALBERT shares one).
    assert 1 <= len(HuggingFaceAdapter(model).attention_modules()) <= NUM_LAYERS


def test_legacy_families_still_return_weights_when_asked():
    model = build("deberta-v2")
    assert "attentions" not in _compat.output_recorders(model)
    assert len(attentions_of(model, "deberta-v2")) == NUM_LAYERS


def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer trained on a few words (its tokens carry 'Ġ' markers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(["the keys to the cabinet are on the table"] * 4, trainer)
    return T.PreTrainedTokenizerFast(tokenizer_object=backend)


def test_captum_pretty_tokens_helper():
    tokenizer = byte_level_tokenizer()
    ids = torch.tensor(tokenizer.encode("the keys are"))
    raw = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert any(token.startswith("Ġ") for token in raw)  # what the pretty form removes
    tokens = _compat.pretty_tokens(ids, tokenizer)
    if Version(captum.__version__) < Version("0.8"):  # before Captum had the helper: the raw tokens
        assert tokens == raw
        return
    from captum.attr._core import llm_attr

    assert hasattr(llm_attr, "_convert_ids_to_pretty_tokens"), changed(
        "captum", "captum.attr._core.llm_attr._convert_ids_to_pretty_tokens (gone)", "pretty_tokens")
    assert isinstance(tokens, list) and all(isinstance(t, str) for t in tokens), changed(
        "captum", "what _convert_ids_to_pretty_tokens returns", "pretty_tokens")
    # Each token as the text it decodes to, without the marker (Captum strips the spaces too).
    assert tokens == [tokenizer.decode([i]).strip() for i in ids.tolist()], changed(
        "captum", "the pretty form of byte-level tokens", "pretty_tokens")
    assert not any("Ġ" in token for token in tokens)


def test_default_generation_arguments_are_captums():
    from captum.attr._core import llm_attr

    captum_defaults = getattr(llm_attr, "DEFAULT_GEN_ARGS", None)
    assert isinstance(captum_defaults, dict), changed(
        "captum", "captum.attr._core.llm_attr.DEFAULT_GEN_ARGS (gone)",
        "captum_attnflow/capture/llm.py:DEFAULT_GEN_ARGS")
    # Captum 0.7 had no temperature / top_p entries; ours set them to None (generate's own defaults).
    assert {k: DEFAULT_GEN_ARGS[k] for k in captum_defaults if k in DEFAULT_GEN_ARGS} == captum_defaults, changed(
        "captum", "its default generation arguments", "captum_attnflow/capture/llm.py:DEFAULT_GEN_ARGS")
    assert all(DEFAULT_GEN_ARGS[k] is None for k in set(DEFAULT_GEN_ARGS) - set(captum_defaults))
