"""Encoder-decoder attribution (issue 21): capture of the three stacks, Chefer's rollout, flow on the
joint graph, and Seq2SeqAttentionAttribution, on tiny random T5, BART, Marian and Whisper models.

References are written here from the definitions, independently of the package: Chefer's rules
from the paper's equations in plain torch (one example at a time, cut to its real length), and
the joint graph built node by node for networkx's max-flow.
"""

import networkx as nx
import numpy as np
import pytest
import torch
import transformers as tf
from captum.attr import LLMAttributionResult

from captum_attnflow import Seq2SeqAttentionAttribution, capture_encoder_decoder_attention
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError, UnsupportedModelError
from captum_attnflow.functional.encoder_decoder import (
    EncoderDecoderAttentions,
    chefer_relevance,
    encoder_decoder_flow,
)
from captum_attnflow.toy import word_level_tokenizer

WORDS = "the cat sat on mat le chat est assis sur tapis".split()
TOKENIZER = word_level_tokenizer(WORDS)
SIZES = dict(d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2, decoder_attention_heads=2,
             encoder_ffn_dim=32, decoder_ffn_dim=32)
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    vocab = len(TOKENIZER)
    if kind == "t5":
        config = tf.T5Config(vocab_size=vocab, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=3,
                             num_heads=2, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
        return tf.T5ForConditionalGeneration(config).eval()
    if kind == "bart":
        return tf.BartForConditionalGeneration(tf.BartConfig(vocab_size=vocab, max_position_embeddings=16, **SIZES,
                                                             **SPECIAL)).eval()
    if kind == "marian":
        return tf.MarianMTModel(tf.MarianConfig(vocab_size=vocab, max_position_embeddings=16, **SIZES,
                                                **SPECIAL)).eval()
    assert kind == "whisper"
    return tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        vocab_size=vocab, num_mel_bins=4, max_source_positions=5, max_target_positions=16, **SIZES,
        **SPECIAL)).eval()


MODELS = {kind: tiny(kind) for kind in ("t5", "bart", "marian", "whisper")}
TEXT_KINDS = ("t5", "bart", "marian")


def captured(kind: str, padded: bool = True):
    """A padded batch of two examples: source lengths 5 and 3, decoder lengths 4 and 2."""
    model = MODELS[kind]
    decoder_ids = torch.tensor([[2, 5, 6, 7], [2, 9, 0, 0]])
    decoder_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]) if padded else None
    if kind == "whisper":
        inputs, mask = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(1)), None
    else:
        inputs = torch.tensor([[1, 4, 5, 6, 2], [1, 8, 2, 0, 0]])
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]) if padded else None
    return capture_encoder_decoder_attention(model, inputs, decoder_ids, attention_mask=mask,
                                             decoder_attention_mask=decoder_mask, head_fusion=None)


def example(attentions: EncoderDecoderAttentions, b: int):
    """Example b's mean-fused (L, Q, K) stacks cut to its real positions."""
    source_mask, target_mask = attentions.masks()
    s, t = int(source_mask[b].sum()), int(target_mask[b].sum())
    fuse = lambda weights: weights[:, b].double().mean(dim=1)  # noqa: E731
    return fuse(attentions.encoder)[:, :s, :s], fuse(attentions.decoder)[:, :t, :t], fuse(attentions.cross)[:, :t, :s]


# ------------------------------------------------------------------------------ independent references

def reference_chefer(encoder, decoder, cross, *, transpose=False):
    """Chefer et al. (2021) eqs. 6-7 (self-attention), 8-9 (normalisation), 10 (cross), raw attention."""
    s, t = encoder.shape[-1], decoder.shape[-1]

    def normalised(r):  # eqs. 8-9: (R - I) row-normalised, plus I
        hat = r - torch.eye(r.shape[0], dtype=r.dtype)
        return hat / hat.sum(dim=1, keepdim=True) + torch.eye(r.shape[0], dtype=r.dtype)

    r_ss = torch.eye(s, dtype=torch.float64)
    for a in encoder:
        r_ss = r_ss + a @ r_ss
    r_qq, r_qs = torch.eye(t, dtype=torch.float64), torch.zeros(t, s, dtype=torch.float64)
    for a_self, a_cross in zip(decoder, cross):
        r_qq, r_qs = r_qq + a_self @ r_qq, r_qs + a_self @ r_qs
        left = normalised(r_qq).T if transpose else normalised(r_qq)
        r_qs = r_qs + left @ a_cross @ normalised(r_ss)
    return r_qs, r_qq


def reference_flow(encoder, decoder, cross, residual=0.5, cross_weight=0.5):
    """The joint graph built node by node; max-flow from each top decoder node to each input."""
    s, t = encoder.shape[-1], decoder.shape[-1]
    graph = nx.DiGraph()

    def add_row(node, targets):
        total = sum(capacity for _, capacity in targets)
        for target, capacity in targets:
            if capacity > 0:
                previous = graph.get_edge_data(node, target, {"capacity": 0.0})["capacity"]
                graph.add_edge(node, target, capacity=previous + capacity / total)

    for layer in range(1, encoder.shape[0] + 1):
        for i in range(s):
            add_row(("enc", layer, i), [(("enc", layer - 1, i), residual)] +
                    [(("enc", layer - 1, k), (1 - residual) * float(encoder[layer - 1, i, k])) for k in range(s)])
    top = encoder.shape[0]
    for layer in range(1, decoder.shape[0] + 1):
        for i in range(t):
            add_row(("dec", layer, i), [(("dec", layer - 1, i), residual)] +
                    [(("dec", layer - 1, k), (1 - residual) * (1 - cross_weight) * float(decoder[layer - 1, i, k]))
                     for k in range(t)] +
                    [(("enc", top, j), (1 - residual) * cross_weight * float(cross[layer - 1, i, j]))
                     for j in range(s)])
    inputs = [("enc", 0, j) for j in range(s)] + [("dec", 0, k) for k in range(t)]
    flows = np.zeros((t, s + t))
    for i in range(t):
        for column, sink in enumerate(inputs):
            if sink in graph:
                flows[i, column] = nx.maximum_flow_value(graph, ("dec", decoder.shape[0], i), sink)
    return flows / flows.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ capture

@pytest.mark.parametrize("kind", MODELS)
def test_capture_records_every_stack_with_rows_summing_to_one(kind):
    attentions = captured(kind)
    model = MODELS[kind]
    source = 5 if kind == "t5" or kind != "whisper" else 5
    assert attentions.encoder.shape[:2] == (2, 2) and attentions.decoder.shape[:2] == (3, 2)
    assert attentions.cross.shape[-2:] == (4, source) and attentions.decoder.shape[-2:] == (4, 4)
    source_mask, target_mask = attentions.masks()
    for weights, rows in ((attentions.encoder, source_mask), (attentions.decoder, target_mask),
                          (attentions.cross, target_mask)):
        sums = weights.sum(-1)  # (L, B, H, Q)
        real = rows[None, :, None, :].expand_as(sums)
        assert torch.allclose(sums[real], torch.ones(int(real.sum())), atol=1e-5)
        assert bool((sums[~real] == 0).all())  # padded queries' rows are zeroed
    assert float(attentions.decoder.triu(1).abs().max()) == 0.0  # causal
    assert model.config._attn_implementation == "sdpa"  # restored


# ------------------------------------------------------------------------------ rollout

@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("transpose", [False, True])
def test_rollout_equals_an_independent_implementation_of_chefers_rules(kind, transpose):
    attentions = captured(kind)
    source, target = chefer_relevance(attentions, transpose_query_relevance=transpose)
    for b in range(2):
        encoder, decoder, cross = example(attentions, b)
        s, t = encoder.shape[-1], decoder.shape[-1]
        expected_source, expected_target = reference_chefer(encoder, decoder, cross, transpose=transpose)
        torch.testing.assert_close(source[b, :t, :s], expected_source)
        torch.testing.assert_close(target[b, :t, :t], expected_target)
        assert float(source[b, :t, s:].abs().sum()) == 0.0 and float(target[b, :t, t:].abs().sum()) == 0.0


def test_default_rollout_is_causal_and_the_literal_transposed_rule_is_not():
    attentions = captured("bart", padded=False)
    changed = EncoderDecoderAttentions(encoder=attentions.encoder, decoder=attentions.decoder,
                                       cross=attentions.cross.clone())
    changed.cross[:, :, :, -1] = torch.roll(changed.cross[:, :, :, -1], 1, dims=-1)  # last position's cross-attention
    for transpose, same in ((False, True), (True, False)):
        before = chefer_relevance(attentions, transpose_query_relevance=transpose)[0][:, :-1]
        after = chefer_relevance(changed, transpose_query_relevance=transpose)[0][:, :-1]
        assert torch.allclose(before, after) is same


def test_library_residual_convention_is_abnar_rollout_and_chefers_self_rule_its_multiple():
    attentions = captured("marian", padded=False)
    _, library = chefer_relevance(attentions, residual_weight=0.5)
    _, chefer = chefer_relevance(attentions)
    decoder = attentions.decoder.double().mean(dim=2)  # (L, B, T, T)
    expected = torch.eye(decoder.shape[-1], dtype=torch.float64).expand_as(decoder[0])
    for layer in decoder:
        step = 0.5 * torch.eye(layer.shape[-1], dtype=torch.float64) + 0.5 * layer
        expected = step / step.sum(-1, keepdim=True) @ expected
    torch.testing.assert_close(library, expected)
    torch.testing.assert_close(library.sum(-1), torch.ones_like(library.sum(-1)))
    # I + Ā = 2·(0.5·I + 0.5·Ā) when rows sum to 1: the additive rule scales each layer by 2.
    torch.testing.assert_close(chefer, 2.0 ** decoder.shape[0] * library)


def test_rollout_options_are_checked():
    attentions = captured("bart")
    with pytest.raises(InvalidParameterError, match="normalize_self"):
        chefer_relevance(attentions, residual_weight=0.5, normalize_self=True)
    with pytest.raises(InvalidParameterError, match="head_fusion"):
        chefer_relevance(attentions, head_fusion="median")
    with pytest.raises(InvalidParameterError, match="residual_weight"):
        chefer_relevance(attentions, residual_weight=1.5)


def test_a_non_causal_decoder_is_refused():
    attentions = captured("bart", padded=False)
    leaky = EncoderDecoderAttentions(encoder=attentions.encoder, decoder=torch.softmax(
        torch.randn(attentions.decoder.shape, generator=torch.Generator().manual_seed(0)), -1), cross=attentions.cross)
    with pytest.raises(InvalidInputError, match="not causal"):
        chefer_relevance(leaky)
    with pytest.raises(InvalidInputError, match="not causal"):
        encoder_decoder_flow(leaky)


# ------------------------------------------------------------------------------ flow

@pytest.mark.parametrize("kind", MODELS)
def test_flow_equals_networkx_max_flow_on_the_independently_built_joint_graph(kind):
    attentions = captured(kind)
    source, target = encoder_decoder_flow(attentions, show_progress=False)
    for b in range(2):
        encoder, decoder, cross = example(attentions, b)
        s, t = encoder.shape[-1], decoder.shape[-1]
        expected = reference_flow(encoder, decoder, cross)
        np.testing.assert_allclose(source[b, :t, :s].numpy(), expected[:, :s], atol=1e-9)
        np.testing.assert_allclose(target[b, :t, :t].numpy(), expected[:, s:], atol=1e-9)
        assert float(source[b, t:].abs().sum() + target[b, t:].abs().sum()) == 0.0  # padded outputs
        assert float(source[b, :, s:].abs().sum() + target[b, :, t:].abs().sum()) == 0.0  # padded inputs


def test_flow_weights_are_configurable_and_checked_against_networkx():
    attentions = captured("t5", padded=False)
    source, target = encoder_decoder_flow(attentions, residual_weight=0.3, cross_weight=0.8, show_progress=False)
    encoder, decoder, cross = example(attentions, 0)
    expected = reference_flow(encoder, decoder, cross, residual=0.3, cross_weight=0.8)
    np.testing.assert_allclose(torch.cat([source[0], target[0]], -1).numpy(), expected, atol=1e-9)
    no_cross, _ = encoder_decoder_flow(attentions, cross_weight=0.0, show_progress=False)
    assert float(no_cross.abs().max()) == 0.0  # no cross edge: nothing reaches the source
    with pytest.raises(InvalidParameterError, match="cross_weight"):
        encoder_decoder_flow(attentions, cross_weight=-0.1)


def test_flow_through_one_relay_may_reach_one_and_still_equals_networkx():
    """Cross-attention peaked on one source token: (almost) all of the flow crosses one relay chain."""
    generator = torch.Generator().manual_seed(3)
    causal = torch.tril(torch.ones(3, 3))
    decoder = torch.softmax(torch.randn(2, 1, 2, 3, 3, generator=generator), -1) * causal
    cross = torch.zeros(2, 1, 2, 3, 4)
    cross[..., 1] = 1.0
    attentions = EncoderDecoderAttentions(
        encoder=torch.softmax(torch.randn(2, 1, 2, 4, 4, generator=generator), -1),
        decoder=decoder / decoder.sum(-1, keepdim=True), cross=cross)
    source, target = encoder_decoder_flow(attentions, residual_weight=0.0, cross_weight=0.95, normalize=False,
                                          show_progress=False)
    encoder, decoder, cross = example(attentions, 0)
    expected = reference_flow(encoder, decoder, cross, residual=0.0, cross_weight=0.95)
    raw = torch.cat([source[0], target[0]], -1).numpy()
    np.testing.assert_allclose(raw / raw.sum(-1, keepdims=True), expected, atol=1e-9)
    assert raw[:, :4].max() > 0.9  # one source token receives nearly everything through its relays


def test_flow_rows_sum_to_one_and_never_reach_later_decoder_inputs():
    attentions = captured("bart")
    source, target = encoder_decoder_flow(attentions, show_progress=False)
    _, target_mask = attentions.masks()
    sums = source.sum(-1) + target.sum(-1)
    torch.testing.assert_close(sums[target_mask], torch.ones(int(target_mask.sum()), dtype=torch.float64))
    assert float(target.triu(1).abs().max()) == 0.0
    raw_source, raw_target = encoder_decoder_flow(attentions, normalize=False, show_progress=False)
    assert float(torch.cat([raw_source, raw_target], -1).max()) <= 1.0 + 1e-12  # out-capacity of a node is 1


# ------------------------------------------------------------------------------ the Captum-style class

@pytest.mark.parametrize("kind", TEXT_KINDS)
@pytest.mark.parametrize("method", ["rollout", "flow"])
def test_padded_batch_equals_each_example_alone(kind, method):
    explainer = Seq2SeqAttentionAttribution(MODELS[kind], TOKENIZER)
    sources, targets = ["the cat sat on the mat", "the cat"], ["le chat est assis", "chat"]
    batch = explainer.attribute_batch(sources, targets, method, show_progress=False) if method == "flow" else \
        explainer.attribute_batch(sources, targets, method)
    for source, target, together in zip(sources, targets, batch):
        options = {"show_progress": False} if method == "flow" else {}
        alone = explainer.attribute(source, target=target, method=method, **options)
        torch.testing.assert_close(together.source_attr, alone.source_attr)
        torch.testing.assert_close(together.target_attr, alone.target_attr)
        assert together.source_tokens == alone.source_tokens and together.output_tokens == alone.output_tokens


@pytest.mark.parametrize("method", ["rollout", "flow"])
def test_results_are_llm_attribution_results_with_rows_summing_to_one(method):
    explainer = Seq2SeqAttentionAttribution(MODELS["bart"], TOKENIZER)
    result = explainer.attribute("the cat sat", target="le chat est", method=method)
    assert isinstance(result, LLMAttributionResult)
    assert result.source_tokens == ["<s>", "the", "cat", "sat"] and result.output_tokens == ["le", "chat", "est"]
    assert result.decoder_tokens == ["</s>", "le", "chat"]
    assert result.input_tokens == result.source_tokens + result.decoder_tokens
    assert tuple(result.token_attr.shape) == (3, 4 + 3)
    torch.testing.assert_close(result.token_attr, torch.cat([result.source_attr, result.target_attr], 1))
    ones = torch.ones(3, dtype=torch.float64)
    if method == "flow":
        torch.testing.assert_close(result.token_attr.sum(-1), ones)
    else:
        torch.testing.assert_close(result.source_attr.sum(-1), ones)
        torch.testing.assert_close(result.target_attr.sum(-1), ones)
    assert float(result.target_attr.triu(1).abs().max()) == 0.0


def test_whisper_sources_are_input_features():
    model = MODELS["whisper"]
    explainer = Seq2SeqAttentionAttribution(model, TOKENIZER)
    features = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    result = explainer.attribute(features, target="le chat", method="flow", show_progress=False)
    assert result.source_tokens == [f"position {p}" for p in range(5)]
    torch.testing.assert_close(result.token_attr.sum(-1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="attention_mask"):
        capture_encoder_decoder_attention(model, features[None], torch.tensor([[2, 5]]),
                                          attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_generated_targets_are_explained():
    explainer = Seq2SeqAttentionAttribution(MODELS["bart"], TOKENIZER)
    result = explainer.attribute("the cat sat", gen_args={"max_new_tokens": 3, "do_sample": False})
    assert 1 <= len(result.output_tokens) <= 3
    assert result.decoder_tokens[0] == "</s>" and result.decoder_tokens[1:] == result.output_tokens[:-1]


# ------------------------------------------------------------------------------ errors and restoration

def test_wrong_models_and_inputs_get_clear_errors():
    torch.manual_seed(0)
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=16)).eval()
    bert = tf.BertModel(tf.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=16)).eval()
    with pytest.raises(UnsupportedModelError, match="decoder-only.*LLMAttentionAttribution"):
        Seq2SeqAttentionAttribution(gpt2, TOKENIZER)
    with pytest.raises(UnsupportedModelError, match="encoder-only.*AttentionRollout"):
        Seq2SeqAttentionAttribution(bert, TOKENIZER)
    with pytest.raises(InvalidInputError, match="decoder_input_ids is missing"):
        capture_encoder_decoder_attention(MODELS["t5"], torch.tensor([[1, 4, 2]]), None)
    explainer = Seq2SeqAttentionAttribution(MODELS["bart"], TOKENIZER)
    with pytest.raises(InvalidParameterError, match="method"):
        explainer.attribute("the cat", target="le", method="gradients")
    with pytest.raises(InvalidParameterError, match="cross_weight is not an option of method='rollout'"):
        explainer.attribute("the cat", target="le", cross_weight=0.5)
    with pytest.raises(InvalidInputError, match="token ids"):
        capture_encoder_decoder_attention(MODELS["bart"], torch.tensor([[1, 4, 2]]), torch.tensor([[2, 99]]))


def test_the_model_is_restored_when_its_forward_pass_raises():
    model = MODELS["bart"]
    too_long = torch.full((1, 40), 5)  # past max_position_embeddings: the model raises inside forward
    with pytest.raises(IndexError):
        capture_encoder_decoder_attention(model, torch.tensor([[1, 4, 2]]), too_long)
    assert model.config._attn_implementation == "sdpa"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not model.training
    # and it still captures afterwards
    assert capture_encoder_decoder_attention(model, torch.tensor([[1, 4, 2]]), torch.tensor([[2, 5]])).cross.shape[
        -2:] == (2, 3)


def test_the_docs_page_examples_run():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "encoder_decoder.md").read_text(encoding="utf-8")
    namespace: dict = {}
    exec(compile("\n".join(re.findall(r"```python\n(.*?)```", page, re.S)), "encoder_decoder.md", "exec"), namespace)
    assert namespace["flow"].output_tokens == ["le", "chat", "est", "assis"]
    torch.testing.assert_close(namespace["flow"].token_attr.sum(-1), torch.ones(4, dtype=torch.float64))
    assert tuple(namespace["source_flow"].shape) == (1, 3, 4)
