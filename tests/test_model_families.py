"""Every common Hugging Face Transformer family, unmodified: encoders, decoders, encoder-decoders.

Each family is a tiny random-initialised model built here (2 layers, 4 heads, hidden 32,
vocab 100), plus the real all-MiniLM-L6-v2. The reference weights come from an independent
eager copy run with ``output_attentions=True``; the functional API turns them into the
expected rollout/flow rows.
"""

import copy

import pytest
import torch
import transformers as T
from helpers import assert_unchanged, snapshot

from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention, UnsupportedModelError
from captum_attnflow.capture import capture_attention
from captum_attnflow.functional import attention_flow, attention_rollout, uniform_causal_attention

COMMON = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64, pad_token_id=0)
ENCODERS = {
    "bert": lambda: T.BertModel(T.BertConfig(**COMMON)),
    "distilbert": lambda: T.DistilBertModel(T.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64, pad_token_id=0)),
    "roberta": lambda: T.RobertaModel(T.RobertaConfig(**COMMON)),
    "albert": lambda: T.AlbertModel(T.AlbertConfig(**COMMON, embedding_size=16)),
    "electra": lambda: T.ElectraModel(T.ElectraConfig(**COMMON, embedding_size=16)),
    "xlm-roberta": lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**COMMON)),
    "deberta-v2": lambda: T.DebertaV2Model(T.DebertaV2Config(**COMMON)),
}
DECODERS = {
    "gpt2": lambda: T.GPT2Model(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=1, eos_token_id=2)),
    "llama": lambda: T.LlamaModel(T.LlamaConfig(**COMMON, num_key_value_heads=2)),
    "qwen2": lambda: T.Qwen2Model(T.Qwen2Config(**COMMON, num_key_value_heads=2)),
    "mistral": lambda: T.MistralModel(T.MistralConfig(**COMMON, num_key_value_heads=2)),
}
SEQ2SEQ = {
    "t5": lambda: T.T5Model(T.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)),
    "bart": lambda: T.BartModel(T.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64)),
}
LENGTHS = (6, 4)  # the second example is padded


def build(factory, implementation):
    torch.manual_seed(0)
    model = factory().eval()
    if implementation == "eager":
        model.set_attn_implementation("eager")
    return model


def padded_batch(padding_side="right"):
    torch.manual_seed(1)
    width = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    mask = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    for b, length in enumerate(LENGTHS):
        span = slice(width - length, width) if padding_side == "left" else slice(0, length)
        ids[b, span] = torch.randint(3, 100, (length,))
        mask[b, span] = 1
    return ids, mask


def position_ids(attention_mask):
    """Positions counted over real tokens, so left padding does not shift them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def decoder_forward(model):
    def forward(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask,
                     position_ids=position_ids(attention_mask)).last_hidden_state
    return forward


def seq2seq_forward(model):
    def forward(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask,
                     decoder_input_ids=torch.ones_like(input_ids[:, :3])).last_hidden_state
    return forward


def forward_for(kind, model):
    return {"encoder": model, "decoder": decoder_forward(model), "seq2seq": seq2seq_forward(model)}[kind]


def reference_attentions(model, kind, ids, mask):
    """Weights from an independent eager copy, as users get them with output_attentions=True."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    kwargs = dict(input_ids=ids, attention_mask=mask, output_attentions=True)
    if kind == "decoder":
        kwargs["position_ids"] = position_ids(mask)
    if kind == "seq2seq":
        kwargs["decoder_input_ids"] = torch.ones_like(ids[:, :3])
    with torch.no_grad():
        outputs = eager(**kwargs)
    attentions = outputs.encoder_attentions if kind == "seq2seq" else outputs.attentions
    return torch.stack(attentions)


CASES = ([(name, "encoder", f) for name, f in ENCODERS.items()]
         + [(name, "decoder", f) for name, f in DECODERS.items()]
         + [(name, "seq2seq", f) for name, f in SEQ2SEQ.items()])
CASE_IDS = [name for name, _, _ in CASES]


def explained_position(kind, mask, b):
    return int(mask[b].nonzero().max()) if kind == "decoder" else int(mask[b].nonzero().min())


@pytest.mark.parametrize("implementation", ["default", "eager"])
@pytest.mark.parametrize("name,kind,factory", CASES, ids=CASE_IDS)
def test_rollout_and_flow_match_functional_and_leave_model_as_found(name, kind, factory, implementation):
    model = build(factory, implementation)
    padding_side = "left" if kind == "decoder" else "right"
    ids, mask = padded_batch(padding_side)
    token_index = "last" if kind == "decoder" else 0
    attentions = reference_attentions(model, kind, ids, mask)
    before = snapshot(model)
    forward = forward_for(kind, model)

    rollout = AttentionRollout(forward, model=model).attribute(
        ids, additional_forward_args=(mask,), token_index=token_index)
    flow = AttentionFlow(forward, model=model).attribute(
        ids, additional_forward_args=(mask,), token_index=token_index)

    assert rollout.shape == flow.shape == ids.shape
    assert torch.isfinite(rollout).all() and torch.isfinite(flow).all()
    expected_rollout = attention_rollout(attentions, attention_mask=mask)[-1]
    for b in range(len(LENGTHS)):
        position = explained_position(kind, mask, b)
        torch.testing.assert_close(rollout[b], expected_rollout[b, position].float(), atol=1e-5, rtol=0)
        expected_flow = attention_flow(attentions[:, b:b + 1], token_index=position,
                                       attention_mask=mask[b:b + 1])[0]
        torch.testing.assert_close(flow[b], expected_flow.float(), atol=1e-5, rtol=0)
    assert (rollout[mask == 0] == 0).all() and (flow[mask == 0] == 0).all()
    assert_unchanged(model, before)


def unpadded(ids, mask, b):
    real = mask[b].bool()
    return ids[b:b + 1, real], mask[b:b + 1, real]


PADDING_CASES = [(name, kind, factory, side) for name, kind, factory in CASES
                 for side in (("right", "left") if kind == "decoder" else ("right",))]


@pytest.mark.parametrize("name,kind,factory,padding_side", PADDING_CASES,
                         ids=[f"{case[0]}-{case[3]}" for case in PADDING_CASES])
def test_padded_batch_equals_per_example_calls(name, kind, factory, padding_side):
    model = build(factory, "default")
    ids, mask = padded_batch(padding_side)
    token_index = "last" if kind == "decoder" else 0
    forward = forward_for(kind, model)
    for method in (AttentionRollout(forward, model=model), AttentionFlow(forward, model=model)):
        batched = method.attribute(ids, additional_forward_args=(mask,), token_index=token_index)
        for b in range(len(LENGTHS)):
            single_ids, single_mask = unpadded(ids, mask, b)
            single = method.attribute(single_ids, additional_forward_args=(single_mask,), token_index=token_index)
            torch.testing.assert_close(batched[b, mask[b].bool()], single[0], atol=1e-5, rtol=0)


def test_albert_shared_layer_is_recorded_once_per_call():
    model = build(ENCODERS["albert"], "default")
    ids, mask = padded_batch()
    captured = capture_attention(model, ids, (mask,))
    assert len(captured.adapter.attention_modules()) == 1  # one module, shared by both layers
    assert captured.num_layers == model.config.num_hidden_layers
    reference = reference_attentions(model, "encoder", ids, mask).mean(dim=2, keepdim=True)
    # Rows of padded queries are zeroed by the capture (they may see only padding).
    reference = reference.masked_fill(mask[None, :, None, :, None] == 0, 0.0)
    torch.testing.assert_close(captured.attentions, reference, atol=1e-6, rtol=0)
    assert not torch.allclose(captured.attentions[0], captured.attentions[1])


def test_deberta_v2_outputs_are_unchanged_by_forcing_weights():
    model = build(ENCODERS["deberta-v2"], "default")
    ids, mask = padded_batch()
    with torch.no_grad():
        plain = model(ids, attention_mask=mask)
    captured = capture_attention(model, ids, (mask,))
    assert captured.outputs.attentions is None  # the model's own flag was left alone
    torch.testing.assert_close(captured.outputs.last_hidden_state, plain.last_hidden_state)


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_seq2seq_captures_only_the_encoder_stack(name):
    model = build(SEQ2SEQ[name], "default")
    ids, mask = padded_batch()
    captured = capture_attention(seq2seq_forward(model), ids, (mask,), model=model)
    encoder_modules = {id(m) for m in model.get_encoder().modules()}
    assert all(id(m) in encoder_modules for m in captured.adapter.attention_modules())
    assert tuple(captured.attentions.shape[-2:]) == tuple(ids.shape[-1:]) * 2


def test_raw_attention_works_across_families():
    model = build(DECODERS["llama"], "default")
    ids, mask = padded_batch("left")
    scores = RawAttention(decoder_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), token_index="last", return_all_layers=True)
    expected = reference_attentions(model, "decoder", ids, mask).mean(dim=2)[:, [0, 1], [5, 5]]
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


def test_real_minilm_rollout_and_flow(minilm, minilm_tokenizer):
    batch = minilm_tokenizer(["attention flow", "a much longer second one"], return_tensors="pt", padding=True)
    before = snapshot(minilm)
    args = (batch["attention_mask"],)
    rollout = AttentionRollout(minilm).attribute(batch["input_ids"], additional_forward_args=args)
    flow = AttentionFlow(minilm).attribute(batch["input_ids"], additional_forward_args=args)
    attentions = reference_attentions(minilm, "encoder", batch["input_ids"], batch["attention_mask"])
    expected = attention_rollout(attentions, attention_mask=batch["attention_mask"])[-1, :, 0]
    torch.testing.assert_close(rollout, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(flow, attention_flow(attentions, attention_mask=batch["attention_mask"]),
                               atol=1e-5, rtol=0)
    assert_unchanged(minilm, before)


def test_unsupported_model_error_lists_what_is_supported():
    with pytest.raises(UnsupportedModelError, match="huggingface.*torch-mha|attention_modules"):
        AttentionRollout(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)))


# ---- causal (decoder) receptive-field normalization -------------------------------------------

def favouring(token, seq_len=6, num_layers=3, boost=1.5):
    """Causal attention uniform over the visible positions except ``token``, weighted ``boost``×."""
    weights = torch.ones(seq_len, seq_len).tril()
    weights[token:, token] *= boost
    weights = weights / weights.sum(-1, keepdim=True)
    return weights.expand(num_layers, 1, 1, seq_len, seq_len)


@pytest.mark.parametrize("residual_weight", [0.0, 0.5])
def test_causal_normalization_flattens_uniform_causal_attention(residual_weight):
    uniform = uniform_causal_attention(3, 1, 6)
    rollout = attention_rollout(uniform, residual_weight=residual_weight, causal_normalization=True)
    for row in range(6):  # row i sees positions 0..i, each with the same normalized score
        torch.testing.assert_close(rollout[-1, 0, row, :row + 1], torch.full((row + 1,), 1 / (row + 1)))
        assert (rollout[-1, 0, row, row + 1:] == 0).all()
    flow = attention_flow(uniform, token_index=5, residual_weight=residual_weight, causal_normalization=True)
    torch.testing.assert_close(flow[0], torch.full((6,), 1 / 6, dtype=flow.dtype))
    assert not torch.allclose(attention_rollout(uniform)[-1, 0, -1], torch.full((6,), 1 / 6))  # bias exists


def test_causal_normalization_removes_the_positional_bias_toward_early_tokens():
    attentions = favouring(token=3)
    assert attention_rollout(attentions)[-1, 0, -1].argmax() == 0  # raw rollout credits the first token
    assert attention_rollout(attentions, causal_normalization=True)[-1, 0, -1].argmax() == 3
    assert attention_flow(attentions, token_index=5, causal_normalization=True)[0].argmax() == 3


def test_causal_normalization_ignores_left_padding():
    attentions = favouring(token=2, seq_len=4)
    padded = torch.zeros(3, 1, 1, 6, 6)
    padded[..., 2:, 2:] = attentions
    padded[..., :2, 0] = 1.0  # rows of padding positions: anything
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    expected = attention_rollout(attentions, causal_normalization=True)[-1, 0, -1]
    got = attention_rollout(padded, attention_mask=mask, causal_normalization=True)[-1, 0, -1]
    torch.testing.assert_close(got[2:], expected)
    assert (got[:2] == 0).all()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_causal_normalization_option_of_the_classes(padding_side):
    model = build(DECODERS["gpt2"], "default")
    ids, mask = padded_batch(padding_side)
    attentions = reference_attentions(model, "decoder", ids, mask)
    forward = decoder_forward(model)
    rollout = AttentionRollout(forward, model=model).attribute(
        ids, additional_forward_args=(mask,), token_index="last", causal_normalization=True)
    flow = AttentionFlow(forward, model=model).attribute(
        ids, additional_forward_args=(mask,), token_index="last", causal_normalization=True)
    expected = attention_rollout(attentions, attention_mask=mask, causal_normalization=True)[-1]
    plain = AttentionRollout(forward, model=model).attribute(ids, additional_forward_args=(mask,), token_index="last")
    for b in range(len(LENGTHS)):
        position = explained_position("decoder", mask, b)
        torch.testing.assert_close(rollout[b], expected[b, position].float(), atol=1e-5, rtol=0)
        expected_flow = attention_flow(attentions[:, b:b + 1], token_index=position,
                                       attention_mask=mask[b:b + 1], causal_normalization=True)[0]
        torch.testing.assert_close(flow[b], expected_flow.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(len(LENGTHS)))
    assert not torch.allclose(rollout, plain)
