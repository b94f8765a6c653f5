"""PyTorch's own attention (nn.TransformerEncoder / EncoderLayer / MultiheadAttention inside user
modules) and the documented routes for any other model: attention_modules=, attention_fn=."""

import pytest
import torch
import transformers as T
from helpers import assert_unchanged, snapshot
from torch import nn

from captum_attnflow import (
    AttentionFlow,
    AttentionRollout,
    InvalidParameterError,
    RawAttention,
    UnsupportedModelError,
)
from captum_attnflow.capture import (
    ModuleAttentionAdapter,
    TorchMultiheadAttentionAdapter,
    capture_attention,
    find_adapter,
)
from captum_attnflow.functional import attention_flow, attention_rollout

DIM, HEADS, VOCAB = 16, 4, 50


class TextEncoder(nn.Module):
    """A user model: embedding + nn.TransformerEncoder, padding mask in torch's convention."""

    def __init__(self, batch_first=True, layers=2):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(VOCAB, DIM)
        layer = nn.TransformerEncoderLayer(DIM, HEADS, dim_feedforward=32, dropout=0.1, batch_first=batch_first)
        # Nested tensors (a fast-path feature) only exist for batch_first encoders.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=batch_first)
        self.head = nn.Linear(DIM, 3)

    def forward(self, input_ids, src_key_padding_mask=None):
        x = self.embed(input_ids)
        x = x if self.batch_first else x.transpose(0, 1)
        x = self.encoder(x, src_key_padding_mask=src_key_padding_mask)
        x = x if self.batch_first else x.transpose(0, 1)
        return self.head(x[:, 0])


def build(batch_first=True):
    torch.manual_seed(0)
    return TextEncoder(batch_first).eval()


def batch():
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])  # True = padding (torch)
    return ids, pad


def weights_by_hand(model, ids, pad):
    """Reference: run the layers one by one, asking each attention for its per-head weights."""
    x = model.embed(ids)
    x = x if model.batch_first else x.transpose(0, 1)
    weights = []
    with torch.no_grad():
        for layer in model.encoder.layers:
            _, w = layer.self_attn(x, x, x, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
            weights.append(w)
            x = layer(x, src_key_padding_mask=pad)
    return torch.stack(weights)


@pytest.mark.parametrize("fastpath", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_matches_hand_captured_weights(batch_first, fastpath):
    model = build(batch_first)
    ids, pad = batch()
    valid = ~pad
    reference = weights_by_hand(model, ids, pad)
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        before = snapshot(model)  # the fast-path switch as set here is part of it
        rollout = AttentionRollout(model).attribute(ids, additional_forward_args=(pad,))
        flow = AttentionFlow(model).attribute(ids, additional_forward_args=(pad,))
        assert_unchanged(model, before)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)

    torch.testing.assert_close(rollout, attention_rollout(reference, attention_mask=valid)[-1, :, 0],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(flow, attention_flow(reference, attention_mask=valid).float(), atol=1e-5, rtol=0)
    assert (rollout[pad] == 0).all() and (flow[pad] == 0).all()


def test_padded_batch_equals_per_example_calls():
    model = build()
    ids, pad = batch()
    for method in (AttentionRollout(model), AttentionFlow(model)):
        batched = method.attribute(ids, additional_forward_args=(pad,))
        single = method.attribute(ids[1:, :4], additional_forward_args=(pad[1:, :4],))
        torch.testing.assert_close(batched[1, :4], single[0], atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_capture_does_not_change_the_model_output():
    model = build()
    ids, pad = batch()
    with torch.no_grad():
        expected = model(ids, pad)
    captured = capture_attention(model, ids, (pad,))
    torch.testing.assert_close(captured.outputs, expected, atol=1e-5, rtol=1e-5)
    assert isinstance(captured.adapter, TorchMultiheadAttentionAdapter)
    torch.testing.assert_close(captured.attention_mask, ~pad)


def test_float_padding_mask_is_understood():
    model = build()
    ids, pad = batch()
    additive = torch.zeros(pad.shape).masked_fill(pad, float("-inf"))
    from_bool = AttentionRollout(model).attribute(ids, additional_forward_args=(pad,))
    from_float = AttentionRollout(model).attribute(ids, additional_forward_args=(additive,))
    torch.testing.assert_close(from_float, from_bool)


def test_standalone_encoder_layer_on_embeddings_keeps_the_input_shape():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(DIM, HEADS, dim_feedforward=32, batch_first=False).eval()
    embeddings = torch.randn(5, 2, DIM)  # (S, B, D)
    scores = AttentionRollout(layer).attribute(embeddings)
    assert scores.shape == embeddings.shape
    assert torch.equal(scores[..., 0], scores[..., -1])  # one value per token, in every feature
    _, w = layer.self_attn(embeddings, embeddings, embeddings, average_attn_weights=False)
    torch.testing.assert_close(scores[..., 0].T, attention_rollout(w[None])[-1, :, 0], atol=1e-5, rtol=0)


def test_full_nn_transformer_explains_the_encoder_self_attention():
    torch.manual_seed(0)
    model = nn.Transformer(DIM, HEADS, num_encoder_layers=3, num_decoder_layers=1, dim_feedforward=32,
                           batch_first=True).eval()
    source, target = torch.randn(2, 5, DIM), torch.randn(2, 3, DIM)
    captured = capture_attention(model, source, (target,))
    assert captured.num_layers == 3 and captured.attentions.shape[-1] == 5
    encoder_attention = {id(layer.self_attn) for layer in model.encoder.layers}
    assert {id(m) for m in captured.adapter.attention_modules()} == encoder_attention


class PositionalMHA(nn.Module):
    """nn.MultiheadAttention called positionally with need_weights=False."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, ids):
        x = self.embed(ids)
        return self.attn(x, x, x, None, False)[0].sum(-1)


def test_multihead_attention_called_positionally_without_weights():
    torch.manual_seed(0)
    model = PositionalMHA().eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    scores = RawAttention(model).attribute(ids)
    x = model.embed(ids)
    _, w = model.attn(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(scores, w.mean(1)[:, 0], atol=1e-6, rtol=0)


# ---- any other model ------------------------------------------------------------------------------

class DictAttention(nn.Module):
    """A custom attention block returning a dict: needs weights_from_output."""

    def __init__(self):
        super().__init__()
        self.qk = nn.Linear(DIM, 2 * DIM)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, dim=-1)
        probs = torch.softmax(q @ k.transpose(-1, -2) / DIM ** 0.5, dim=-1)[:, None]  # (B, 1, S, S)
        return {"hidden": x + probs[:, 0] @ x, "probs": probs}


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList([DictAttention(), DictAttention()])

    def forward(self, ids, attention_mask=None):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)["hidden"]
        return x


def test_named_attention_modules_with_custom_reader():
    torch.manual_seed(0)
    model = DictModel().eval()
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    rollout = AttentionRollout(model, attention_modules=list(model.blocks),
                               weights_from_output=lambda module, output: output["probs"])
    scores = rollout.attribute(ids)
    with torch.no_grad():
        x, weights = model.embed(ids), []
        for block in model.blocks:
            out = block(x)
            weights.append(out["probs"])
            x = out["hidden"]
    torch.testing.assert_close(scores, attention_rollout(weights)[-1, :, 0], atol=1e-6, rtol=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_named_shared_module_counts_once_per_call():
    torch.manual_seed(0)
    model = DictModel().eval()
    model.blocks[1] = model.blocks[0]  # ALBERT-style sharing: one module, two calls
    adapter = ModuleAttentionAdapter(model, [model.blocks[0], model.blocks[1]],
                                     weights_from_output=lambda module, output: output["probs"])
    captured = capture_attention(model, torch.tensor([[1, 2, 3]]), adapter=adapter)
    assert captured.num_layers == 2
    assert not torch.allclose(captured.attentions[0], captured.attentions[1])


def test_attention_fn_on_a_plain_function_equals_the_automatic_adapter():
    torch.manual_seed(0)
    bert = T.BertModel(T.BertConfig(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS,
                                    intermediate_size=32, attn_implementation="eager")).eval()
    ids = torch.tensor([[2, 5, 7, 9, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()

    def weights(input_ids, attention_mask):
        return bert(input_ids, attention_mask=attention_mask, output_attentions=True).attentions

    def logits(input_ids, attention_mask):
        return bert(input_ids, attention_mask=attention_mask).pooler_output

    for method in (AttentionRollout, AttentionFlow):
        by_function = method(logits, attention_fn=weights).attribute(ids, additional_forward_args=(mask,))
        automatic = method(bert).attribute(ids, additional_forward_args=(mask,))
        torch.testing.assert_close(by_function, automatic, atol=1e-6, rtol=0)
        assert (by_function[1, 3:] == 0).all()


def test_constructor_routes_are_exclusive_and_explained():
    model = DictModel()
    with pytest.raises(InvalidParameterError, match="only one"):
        AttentionRollout(model, attention_modules=list(model.blocks), attention_fn=lambda ids: None)
    with pytest.raises(InvalidParameterError, match="weights_from_output"):
        AttentionRollout(model, weights_from_output=lambda module, output: None)
    with pytest.raises(UnsupportedModelError, match="attention_modules=.*attention_fn="):
        find_adapter(model)
    with pytest.raises(UnsupportedModelError, match="model="):
        AttentionRollout(lambda ids: ids)
