"""Issue 21: the explained attention stack is the one that received ``inputs``, or a clear error.

Each of the eight silent wrong answers found by trying the library as a new user is
reproduced here on a tiny random model and must now give the right answer (checked against
weights captured independently with ``output_attentions=True`` or ``need_weights=True`` and
the functional API) or a library exception naming the stack, with the model left as found.
Then: ``stack=`` in every class, and two-tower models (CLIP, SigLIP, dual encoders) explained
one tower at a time, including the image-text similarity example of ``docs/stacks.md``.
"""

import copy

import pytest
import torch
import transformers as T
from helpers import assert_unchanged, snapshot
from torch import nn

from captum_attnflow import (
    AttentionCaptureError,
    AttentionFlow,
    AttentionRollout,
    InvalidInputError,
    InvalidParameterError,
    LLMAttentionAttribution,
    RawAttention,
    UnsupportedModelError,
)
from captum_attnflow.capture import capture_attention
from captum_attnflow.capture.stacks import candidate_stacks, same_tensor
from captum_attnflow.functional import attention_rollout
from captum_attnflow.toy import word_level_tokenizer

METHODS = (AttentionRollout, AttentionFlow, RawAttention)
DIM, HEADS, VOCAB = 16, 2, 50


# ---------------------------------------------------------------------------- tiny models

def tiny_bert(seed):
    torch.manual_seed(seed)
    return T.BertModel(T.BertConfig(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS,
                                    intermediate_size=32, max_position_embeddings=32)).eval()


def padded_ids(lengths=(5, 3), width=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, length in enumerate(lengths):
        ids[b, :length] = torch.randint(3, VOCAB, (length,), generator=generator)
        mask[b, :length] = 1
    return ids, mask


def hf_reference(module, **kwargs):
    """Per-layer weights from an independent eager copy, as users get them."""
    eager = copy.deepcopy(module)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return torch.stack(eager(**kwargs, output_attentions=True).attentions)


class DualEncoder(nn.Module):
    """Sentence dual encoder: the document encoder is registered first, the query is explained."""

    def __init__(self):
        super().__init__()
        self.doc_encoder = tiny_bert(0)
        self.query_encoder = tiny_bert(1)
        self.doc_ids = torch.tensor([[1, 7, 8, 9, 2]])

    def forward(self, query_ids, query_mask):
        query = self.query_encoder(input_ids=query_ids, attention_mask=query_mask).last_hidden_state[:, 0]
        doc = self.doc_encoder(input_ids=self.doc_ids).last_hidden_state[:, 0]
        return torch.cosine_similarity(query, doc.expand_as(query), dim=-1)


def tiny_t5():
    torch.manual_seed(0)
    return T.T5Model(T.T5Config(vocab_size=VOCAB, d_model=DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=HEADS)).eval()


TEXT = dict(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
            max_position_embeddings=16)
VISION = dict(hidden_size=DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=HEADS, image_size=8,
              patch_size=4)


def tiny_clip():
    torch.manual_seed(0)
    config = T.CLIPConfig(text_config=dict(TEXT, eos_token_id=2, bos_token_id=1, pad_token_id=0),
                          vision_config=VISION, projection_dim=8)
    return T.CLIPModel(config).eval()


def tiny_siglip():
    torch.manual_seed(0)
    return T.SiglipModel(T.SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()


class CrossBlock(nn.Module):
    """A decoder-style block written by hand: self-attention, then cross-attention to a memory."""

    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, x, memory):
        x = x + self.self_attn(x, x, x)[0]
        return x + self.cross_attn(x, memory, memory)[0]


class CrossStack(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([CrossBlock(), CrossBlock()])

    def forward(self, x, memory):
        for block in self.blocks:
            x = block(x, memory)
        return x.sum(-1)


def torch_encoder(batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(DIM, HEADS, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def mha_reference(encoder, x, key_padding_mask=None):
    """Per-layer per-head weights of a TransformerEncoder, recomputed layer by layer."""
    weights = []
    with torch.no_grad():
        for layer in encoder.layers:
            _, w = layer.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=True,
                                   average_attn_weights=False)
            weights.append(w)
            x = layer(x, src_key_padding_mask=key_padding_mask)
    return torch.stack(weights)


# ---------------------------------------------------------------------------- a. dual encoder

def test_dual_encoder_without_stack_lists_both_encoders():
    model = DualEncoder().eval()
    with pytest.raises(InvalidParameterError, match=r"'doc_encoder'.*'query_encoder'.*stack="):
        AttentionRollout(model)


@pytest.mark.parametrize("method", METHODS)
def test_dual_encoder_explains_the_chosen_query_encoder(method):
    model = DualEncoder().eval()
    ids, mask = padded_ids()
    before = snapshot(model)
    scores = method(model, stack="query_encoder").attribute(ids, additional_forward_args=(mask,))
    assert_unchanged(model, before)
    alone = method(model.query_encoder).attribute(ids, additional_forward_args=(mask,))
    torch.testing.assert_close(scores, alone, atol=1e-6, rtol=0)
    assert (scores[mask == 0] == 0).all()  # padding of the query scores nothing
    if method is AttentionRollout:
        weights = hf_reference(model.query_encoder, input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(scores, attention_rollout(weights, attention_mask=mask)[-1][:, 0], atol=1e-5,
                                   rtol=0)


def test_dual_encoder_wrong_stack_is_refused_with_its_name():
    model = DualEncoder().eval()
    ids, mask = padded_ids()
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="'doc_encoder'.*not `inputs`"):
        AttentionRollout(model, stack=model.doc_encoder).attribute(ids, additional_forward_args=(mask,))
    assert_unchanged(model, before)


def test_torch_dual_encoder_needs_stack_and_explains_it():
    class TorchDual(nn.Module):
        def __init__(self):
            super().__init__()
            self.doc, self.query = torch_encoder(True), torch_encoder(True)
            self.doc_x = torch.randn(1, 4, DIM)

        def forward(self, x):
            return self.query(x).mean(1).sum(-1) + self.doc(self.doc_x).sum()

    model = TorchDual().eval()
    with pytest.raises(InvalidParameterError, match="'doc'.*'query'"):
        RawAttention(model)
    x = torch.randn(2, 3, DIM)
    scores = AttentionRollout(model, stack="query").attribute(x)
    expected = attention_rollout(mha_reference(model.query, x))[-1][:, 0]
    torch.testing.assert_close(scores[..., 0], expected, atol=1e-5, rtol=0)
    with pytest.raises(AttentionCaptureError, match="'doc'"):
        AttentionRollout(model, stack="doc").attribute(x)


# ---------------------------------------------------------------------------- b. T5's decoder

def test_ids_fed_to_t5_decoder_are_refused_not_the_encoder_rollout():
    model = tiny_t5()
    source = torch.tensor([[4, 5, 6, 7, 1], [8, 9, 10, 11, 1]])
    before = snapshot(model)

    def decoder_forward(target_ids):
        return model(input_ids=source, decoder_input_ids=target_ids).last_hidden_state

    target = torch.tensor([[0, 12, 13, 14, 15], [0, 16, 17, 18, 19]])  # as long as the source: shapes agree
    for method in METHODS:
        with pytest.raises(AttentionCaptureError, match="Seq2SeqAttentionAttribution"):
            method(decoder_forward, model=model).attribute(target)
        assert_unchanged(model, before)


def test_the_refusals_name_the_encoder_decoder_class_that_exists():
    import captum_attnflow.attr
    from captum_attnflow.capture.stacks import SEQ2SEQ_CLASS

    module, name = SEQ2SEQ_CLASS.rsplit(".", 1)
    assert module == "captum_attnflow.attr" and hasattr(captum_attnflow.attr, name)


def test_t5_decoder_as_stack_is_refused_and_encoder_still_works():
    model = tiny_t5()
    with pytest.raises(UnsupportedModelError, match="decoder.*Seq2SeqAttentionAttribution"):
        AttentionRollout(model, stack="decoder")
    ids = torch.tensor([[4, 5, 6, 1]])

    def forward(input_ids):
        return model(input_ids=input_ids, decoder_input_ids=torch.zeros_like(input_ids[:, :2])).last_hidden_state

    chosen = AttentionRollout(forward, model=model, stack="encoder").attribute(ids)
    default = AttentionRollout(forward, model=model).attribute(ids)
    torch.testing.assert_close(chosen, default, atol=0, rtol=0)


# ---------------------------------------------------------------------------- c. cross-attention is never self

def test_siglip_without_stack_lists_its_towers():
    model = tiny_siglip()
    with pytest.raises(InvalidParameterError, match="'text_model'.*'vision_model'"):
        AttentionRollout(lambda i, p: model(input_ids=i, pixel_values=p).logits_per_text, model=model)


def test_siglip_text_tower_has_its_two_layers():
    model = tiny_siglip()
    ids, pixels = torch.randint(3, VOCAB, (2, 4)), torch.randn(2, 3, 8, 8)  # 4 tokens, 4 patches

    def forward(input_ids, pixel_values):
        return model(input_ids=input_ids, pixel_values=pixel_values).logits_per_text.diagonal()

    captured = capture_attention(forward, ids, (pixels,), model=model, stack="text_model")
    assert captured.num_layers == 2
    reference = hf_reference(model.text_model, input_ids=ids)
    torch.testing.assert_close(captured.attentions, reference.mean(2, keepdim=True), atol=1e-6, rtol=0)


def test_custom_cross_attention_blocks_record_only_self_attention():
    model = CrossStack().eval()
    x, memory = torch.randn(2, 5, DIM), torch.randn(2, 5, DIM)  # same lengths: shapes cannot tell them apart
    before = snapshot(model)
    captured = capture_attention(model, x, (memory,), head_fusion=None)
    assert_unchanged(model, before)
    assert captured.num_layers == 2
    expected, hidden = [], x
    with torch.no_grad():
        for block in model.blocks:
            expected.append(block.self_attn(hidden, hidden, hidden, average_attn_weights=False)[1])
            hidden = block(hidden, memory)
    torch.testing.assert_close(captured.attentions, torch.stack(expected), atol=1e-6, rtol=0)


def test_only_cross_attention_is_refused():
    class CrossOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

        def forward(self, x, memory):
            return self.attn(x, memory, memory)[0].sum(-1)

    model = CrossOnly().eval()
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="cross-attention"):
        AttentionRollout(model).attribute(torch.randn(1, 3, DIM), additional_forward_args=(torch.randn(1, 3, DIM),))
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------- d. batch_first=False, B == S

class SeqFirstFromBatchFirst(nn.Module):
    """Takes batch-first inputs and hands them to a batch_first=False encoder transposed."""

    def __init__(self, embed=False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM) if embed else None
        self.encoder = torch_encoder(False)

    def forward(self, x):
        x = self.embed(x) if self.embed is not None else x
        return self.encoder(x.transpose(0, 1)).sum(-1)


def test_batch_first_embeddings_transposed_inside_give_untransposed_scores():
    model = SeqFirstFromBatchFirst().eval()
    x = torch.randn(3, 3, DIM)  # B == S
    scores = AttentionRollout(model).attribute(x)
    expected = attention_rollout(mha_reference(model.encoder, x.transpose(0, 1)))[-1][:, 0]
    torch.testing.assert_close(scores[..., 0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores[..., 0].sum(-1), torch.ones(3), atol=1e-5, rtol=0)


def test_sequence_first_embeddings_with_square_batch_still_work():
    encoder = torch_encoder(False)
    x = torch.randn(3, 3, DIM)  # (S, B, D), B == S
    scores = AttentionRollout(encoder).attribute(x)
    expected = attention_rollout(mha_reference(encoder, x))[-1][:, 0]  # (B, S)
    torch.testing.assert_close(scores[..., 0], expected.T, atol=1e-5, rtol=0)


def test_square_batch_of_ids_embedded_for_a_sequence_first_stack_is_refused():
    model = SeqFirstFromBatchFirst(embed=True).eval()
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="square batch"):
        AttentionRollout(model).attribute(torch.randint(0, VOCAB, (3, 3)))
    assert_unchanged(model, before)
    scores = AttentionRollout(model).attribute(torch.randint(0, VOCAB, (2, 3)))  # B != S: the shapes tell
    torch.testing.assert_close(scores.sum(-1), torch.ones(2), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- e. a wrapper that sorts the batch

class SortingWrapper(nn.Module):
    """Sorts examples by length before the model (as length-bucketing code does) and back after."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        order = attention_mask.sum(-1).argsort()
        out = self.model(input_ids=input_ids[order], attention_mask=attention_mask[order]).last_hidden_state
        return out[order.argsort(), 0].sum(-1)


def test_sorting_wrapper_is_refused():
    model = SortingWrapper(tiny_bert(0)).eval()
    ids, mask = padded_ids(lengths=(5, 3))
    before = snapshot(model)
    for method in METHODS:
        with pytest.raises(AttentionCaptureError, match="other values .or in another order"):
            method(model).attribute(ids, additional_forward_args=(mask,))
        assert_unchanged(model, before)
    # Already sorted: nothing moves, and the answer is the model's own.
    ascending = (torch.flip(ids, [0]), torch.flip(mask, [0]))
    scores = AttentionRollout(model).attribute(ascending[0], additional_forward_args=(ascending[1],))
    torch.testing.assert_close(scores, AttentionRollout(model.model).attribute(
        ascending[0], additional_forward_args=(ascending[1],)), atol=0, rtol=0)


def test_sorting_wrapper_of_torch_embeddings_is_refused():
    encoder = torch_encoder(True)
    x = torch.randn(2, 4, DIM)
    with pytest.raises(AttentionCaptureError, match="another order"):
        AttentionRollout(lambda inputs: encoder(inputs.flip(0)).sum(-1), model=encoder).attribute(x)


# ---------------------------------------------------------------------------- f. padding only in a 3-D attn_mask

class MaskInAttnMask(nn.Module):
    """Padding written into a per-example (B·H, S, S) attn_mask instead of key_padding_mask."""

    def __init__(self, also_key_padding=False):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.also_key_padding = also_key_padding

    def forward(self, x, attention_mask):
        padding = attention_mask == 0
        per_example = padding[:, None, None, :].expand(-1, HEADS, x.shape[1], -1).reshape(-1, x.shape[1], x.shape[1])
        key_padding = padding if self.also_key_padding else None
        return self.attn(x, x, x, attn_mask=per_example, key_padding_mask=key_padding)[0].sum(-1)


def test_padding_only_in_a_3d_attn_mask_is_refused():
    model = MaskInAttnMask().eval()
    x, mask = torch.randn(2, 4, DIM), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    before = snapshot(model)
    with pytest.raises(InvalidInputError, match="key_padding_mask"):
        AttentionRollout(model).attribute(x, additional_forward_args=(mask,))
    assert_unchanged(model, before)


def test_padding_in_both_masks_scores_padding_zero():
    model = MaskInAttnMask(also_key_padding=True).eval()
    x, mask = torch.randn(2, 4, DIM), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    scores = RawAttention(model).attribute(x, additional_forward_args=(mask,))[..., 0]
    with torch.no_grad():
        _, w = model.attn(x, x, x, key_padding_mask=mask == 0, average_attn_weights=False)
    torch.testing.assert_close(scores, w.mean(1)[:, 0], atol=1e-6, rtol=0)
    assert (scores[mask == 0] == 0).all()


# ---------------------------------------------------------------------------- g. a mask the wrapper drops

def tiny_gpt2():
    torch.manual_seed(0)
    return T.GPT2Model(T.GPT2Config(vocab_size=VOCAB, n_embd=DIM, n_layer=2, n_head=HEADS, n_positions=32)).eval()


def test_mask_dropped_by_the_wrapper_is_refused_not_explained_as_last_token():
    model = tiny_gpt2()
    ids, mask = padded_ids()
    before = snapshot(model)
    dropping = lambda input_ids, attention_mask: model(input_ids=input_ids).last_hidden_state  # noqa: E731
    with pytest.raises(AttentionCaptureError, match=r"additional_forward_args\[0\] looks like a padding mask"):
        AttentionRollout(dropping, model=model).attribute(ids, additional_forward_args=(mask,), token_index="last")
    assert_unchanged(model, before)
    passing = lambda input_ids, attention_mask: model(input_ids=input_ids, attention_mask=attention_mask)  # noqa: E731
    scores = AttentionRollout(passing, model=model).attribute(ids, additional_forward_args=(mask,), token_index="last")
    assert (scores[mask == 0] == 0).all()


def test_token_type_ids_that_reach_the_model_are_no_dropped_mask():
    model = tiny_bert(0)
    ids = torch.randint(3, VOCAB, (2, 5))
    segments = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]])
    forward = lambda input_ids, token_type_ids: model(input_ids=input_ids, token_type_ids=token_type_ids)  # noqa: E731
    scores = AttentionRollout(forward, model=model).attribute(ids, additional_forward_args=(segments,))
    weights = hf_reference(model, input_ids=ids, token_type_ids=segments)
    torch.testing.assert_close(scores, attention_rollout(weights)[-1][:, 0], atol=1e-5, rtol=0)


def test_torch_key_padding_mask_dropped_by_the_wrapper_is_refused():
    encoder = torch_encoder(True)
    x, padding = torch.randn(2, 4, DIM), torch.tensor([[False] * 4, [False, False, True, True]])
    with pytest.raises(AttentionCaptureError, match="looks like a padding mask"):
        AttentionRollout(lambda inputs, pad: encoder(inputs).sum(-1), model=encoder).attribute(
            x, additional_forward_args=(padding,), token_index="last")


# ---------------------------------------------------------------------------- h. CLIP, two towers

def clip_similarity(model):
    """The image-text similarity logit of each (text, image) pair of the batch."""
    def forward(input_ids, pixel_values, attention_mask):
        return model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask
                     ).logits_per_text.diagonal()
    return forward


def clip_batch():
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    mask = (ids != 0).long()
    return ids, mask, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_clip_without_stack_lists_its_towers_instead_of_crashing():
    model = tiny_clip()
    with pytest.raises(InvalidParameterError, match="'text_model'.*'vision_model'"):
        AttentionRollout(clip_similarity(model), model=model)


def test_clip_text_tower_explains_the_similarity():
    model = tiny_clip()
    ids, mask, pixels = clip_batch()
    before = snapshot(model)
    similarity = clip_similarity(model)
    scores = AttentionRollout(similarity, model=model, stack="text_model").attribute(
        ids, additional_forward_args=(pixels, mask), token_index="last")
    assert_unchanged(model, before)
    weights = hf_reference(model.text_model, input_ids=ids, attention_mask=mask)
    rollout = attention_rollout(weights, attention_mask=mask)[-1]
    last = mask.sum(-1) - 1
    torch.testing.assert_close(scores, rollout[torch.arange(2), last], atol=1e-5, rtol=0)
    assert (scores[mask == 0] == 0).all()


def test_clip_vision_tower_gives_a_patch_grid():
    model = tiny_clip()
    ids, mask, pixels = clip_batch()
    similarity = clip_similarity(model)
    by_pixels = lambda pixel_values, input_ids, attention_mask: similarity(  # noqa: E731
        input_ids, pixel_values, attention_mask)
    explainer = AttentionRollout(by_pixels, model=model, stack=model.vision_model)
    grid = explainer.attribute(pixels, additional_forward_args=(ids, mask), return_patch_grid=True)
    assert grid.shape == (2, 2, 2)
    weights = hf_reference(model.vision_model, pixel_values=pixels)
    expected = attention_rollout(weights)[-1][:, 0, 1:].reshape(2, 2, 2)  # CLS row, patch tokens
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)
    heat = explainer.attribute(pixels, additional_forward_args=(ids, mask))
    assert heat.shape == pixels.shape


def test_clip_vision_tower_given_token_ids_is_refused():
    model = tiny_clip()
    ids, mask, pixels = clip_batch()
    with pytest.raises(Exception) as error:
        AttentionRollout(clip_similarity(model), model=model, stack="vision_model").attribute(
            ids, additional_forward_args=(pixels, mask))
    assert "pixel" in str(error.value)


# ---------------------------------------------------------------------------- stack= in every class

def test_stack_by_name_and_by_module_agree_with_the_default():
    model = tiny_bert(0)
    ids, mask = padded_ids()
    default = AttentionFlow(model).attribute(ids, additional_forward_args=(mask,))
    by_name = AttentionFlow(model, stack="").attribute(ids, additional_forward_args=(mask,))
    by_module = AttentionFlow(model, stack=model).attribute(ids, additional_forward_args=(mask,))
    torch.testing.assert_close(by_name, default, atol=0, rtol=0)
    torch.testing.assert_close(by_module, default, atol=0, rtol=0)


def test_llm_attention_attribution_uses_the_methods_stack():
    tokenizer = word_level_tokenizer("the keys to cabinet are is".split())
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=len(tokenizer), n_embd=DIM, n_layer=2, n_head=HEADS,
                                           n_positions=32)).eval()
    from captum.attr import TextTokenInput

    inp = TextTokenInput("the keys to the cabinet", tokenizer)
    chosen = LLMAttentionAttribution(AttentionRollout(model, stack="transformer"), tokenizer).attribute(inp, "are")
    default = LLMAttentionAttribution(AttentionRollout(model), tokenizer).attribute(inp, "are")
    torch.testing.assert_close(chosen.token_attr, default.token_attr, atol=0, rtol=0)


@pytest.mark.parametrize("stack,error,match", [
    ("no_such_module", InvalidParameterError, "not a submodule.*'embeddings'"),
    (nn.Linear(2, 2), InvalidParameterError, "not a submodule"),
    (3, InvalidParameterError, "dotted name"),
    ("embeddings", UnsupportedModelError, "No attention adapter supports the stack"),
])
def test_bad_stack_is_refused(stack, error, match):
    with pytest.raises(error, match=match):
        AttentionRollout(tiny_bert(0), stack=stack)


def test_stack_with_another_route_is_refused():
    model = tiny_bert(0)
    with pytest.raises(InvalidParameterError, match="only one of"):
        AttentionRollout(model, stack="encoder", attention_modules=[model.encoder.layer[0].attention.self])


# ---------------------------------------------------------------------------- helpers

def test_candidate_stacks_of_one_stack_and_of_two_towers():
    bert = tiny_bert(0)
    attention = [layer.attention.self for layer in bert.encoder.layer]
    assert [name for name, _ in candidate_stacks(bert, attention)] == ["encoder.layer"]
    clip = tiny_clip()
    modules = [m for m in clip.modules() if type(m).__name__ == "CLIPAttention"]
    assert [name for name, _ in candidate_stacks(clip, modules)] == ["text_model", "vision_model"]


def test_same_tensor_compares_values_and_order():
    ids = torch.tensor([[1, 2], [3, 4]])
    assert same_tensor(ids, ids) and same_tensor(ids.clone(), ids) and same_tensor(ids.int(), ids)
    assert not same_tensor(ids.flip(0), ids) and not same_tensor(ids[:, :1], ids)
    assert not same_tensor(ids.float(), ids)  # embeddings are no token ids


# ---------------------------------------------------------------------------- what "received inputs" means

def test_ids_embedded_by_the_wrapper_pass_when_they_are_the_lookup():
    model = tiny_bert(0)
    ids = torch.randint(3, VOCAB, (2, 5))
    embedded = lambda input_ids: model(inputs_embeds=model.get_input_embeddings()(input_ids))  # noqa: E731
    scores = AttentionRollout(embedded, model=model).attribute(ids)
    torch.testing.assert_close(scores, AttentionRollout(model).attribute(ids), atol=0, rtol=0)
    shifted = lambda input_ids: model(inputs_embeds=model.get_input_embeddings()(input_ids.roll(1, 0)))  # noqa: E731
    with pytest.raises(AttentionCaptureError, match="not the input embeddings of `inputs`"):
        AttentionRollout(shifted, model=model).attribute(ids)


def test_stack_bypassed_by_calling_its_layers_is_refused():
    model = tiny_bert(0)
    inner = lambda input_ids: model.encoder(model.embeddings(input_ids)).last_hidden_state  # noqa: E731
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="was not called"):
        AttentionRollout(inner, model=model).attribute(torch.randint(3, VOCAB, (1, 4)))
    assert_unchanged(model, before)


def test_truncating_wrapper_is_refused():
    model = tiny_bert(0)
    ids = torch.randint(3, VOCAB, (2, 5))
    with pytest.raises(AttentionCaptureError, match="shape \\(2, 4\\)"):
        AttentionRollout(lambda input_ids: model(input_ids=input_ids[:, :4]), model=model).attribute(ids)


def test_siglip_vision_tower_mean_over_patches():
    model = tiny_siglip()
    ids, pixels = torch.randint(3, VOCAB, (2, 4)), torch.randn(2, 3, 8, 8)
    by_pixels = lambda pixel_values, input_ids: model(  # noqa: E731
        input_ids=input_ids, pixel_values=pixel_values).logits_per_image.diagonal()
    grid = AttentionRollout(by_pixels, model=model, stack="vision_model").attribute(
        pixels, additional_forward_args=(ids,), token_index="mean", return_patch_grid=True)
    weights = hf_reference(model.vision_model, pixel_values=pixels)
    expected = attention_rollout(weights)[-1].mean(1).reshape(2, 2, 2)  # no CLS: every token is a patch
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- the docs page runs

def test_docs_stacks_page_runs_as_written(capsys):
    import pathlib
    import re

    page = (pathlib.Path(__file__).parents[1] / "docs" / "stacks.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 2
    for index, code in enumerate(blocks):
        exec(compile(code, f"docs/stacks.md python block {index + 1}", "exec"), {"__name__": "docs_stacks"})
    printed = capsys.readouterr().out
    assert "'doc_encoder' (BertModel), 'query_encoder' (BertModel)" in printed
    assert "torch.Size([2, 2, 2])" in printed and "torch.Size([2, 3, 8, 8])" in printed


def test_timm_style_vit_refuses_pixels_changed_inside():
    from test_vision import _TimmStyleViT  # the timm structure, without timm

    torch.manual_seed(0)
    model = _TimmStyleViT().eval()
    pixels = torch.randn(2, 3, 16, 16)
    assert AttentionRollout(model).attribute(pixels).shape == pixels.shape
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="received a tensor of shape \\(2, 3, 16, 16\\) with other"):
        AttentionRollout(lambda x: model(x * 2.0), model=model).attribute(pixels)
    assert_unchanged(model, before)


def test_siglip_pooling_head_is_cross_attention_and_refused_as_a_stack():
    model = tiny_siglip()
    ids, pixels = torch.randint(3, VOCAB, (1, 4)), torch.randn(1, 3, 8, 8)
    by_pixels = lambda pixel_values, input_ids: model(  # noqa: E731
        input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    head = [m for m in model.modules() if type(m).__name__ == "SiglipMultiheadAttentionPoolingHead"][0]
    before = snapshot(model)
    with pytest.raises(AttentionCaptureError, match="cross-attention"):
        capture_attention(by_pixels, pixels, (ids,), model=model, stack=head)
    assert_unchanged(model, before)
