"""The Captum classes on the real all-MiniLM-L6-v2, loaded with its default SDPA attention."""

import warnings

import pytest
import torch
from captum.attr import Attribution, FeatureAblation
from helpers import assert_unchanged, snapshot

from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention
from captum_attnflow.functional import attention_flow, attention_rollout, fuse_heads

CLASSES = [AttentionRollout, AttentionFlow, RawAttention]


@pytest.fixture(scope="module")
def batch(minilm_tokenizer, sentences):
    return minilm_tokenizer(sentences, return_tensors="pt", padding=True)


@pytest.fixture(scope="module")
def eager_attentions(minilm_path, batch):
    """Weights captured independently: a second copy loaded with eager attention."""
    from transformers import AutoModel

    eager = AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = eager(**batch, output_attentions=True)
    return torch.stack(outputs.attentions)


def forward_args(batch):
    return (batch["attention_mask"],)


def test_rollout_equals_functional_on_eager_attentions(minilm, batch, eager_attentions):
    scores = AttentionRollout(minilm).attribute(batch["input_ids"], additional_forward_args=forward_args(batch),
                                                return_all_layers=True)
    expected = attention_rollout(eager_attentions, attention_mask=batch["attention_mask"])[:, :, 0]
    torch.testing.assert_close(scores, expected.float(), atol=1e-5, rtol=0)


def test_flow_equals_functional_on_eager_attentions(minilm, batch, eager_attentions):
    scores = AttentionFlow(minilm).attribute(batch["input_ids"], additional_forward_args=forward_args(batch),
                                             layer=-1)
    expected = attention_flow(eager_attentions, attention_mask=batch["attention_mask"], layer=-1)
    torch.testing.assert_close(scores, expected.float(), atol=1e-5, rtol=0)


def test_raw_attention_equals_fused_eager_row(minilm, batch, eager_attentions):
    scores = RawAttention(minilm).attribute(batch["input_ids"], additional_forward_args=forward_args(batch),
                                            layer=2)
    expected = fuse_heads(eager_attentions[2])[:, 0] * batch["attention_mask"]
    torch.testing.assert_close(scores, expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method_cls", [AttentionRollout, AttentionFlow])
@pytest.mark.parametrize("token_index", [0, "mean", "last"])
def test_padded_batch_equals_per_sentence_calls(minilm, minilm_tokenizer, sentences, batch, method_cls,
                                                token_index):
    method = method_cls(minilm)
    batched = method.attribute(batch["input_ids"], additional_forward_args=forward_args(batch),
                               token_index=token_index)
    for row, sentence in enumerate(sentences):
        single = minilm_tokenizer([sentence], return_tensors="pt")
        alone = method.attribute(single["input_ids"], additional_forward_args=(single["attention_mask"],),
                                 token_index=token_index)
        length = single["input_ids"].shape[1]
        torch.testing.assert_close(batched[row, :length], alone[0], atol=2e-5, rtol=0)
        assert (batched[row, length:] == 0).all()


@pytest.mark.parametrize("method_cls", CLASSES)
def test_model_left_exactly_as_found(minilm, batch, method_cls):
    before = snapshot(minilm)
    method_cls(minilm).attribute(batch["input_ids"], additional_forward_args=forward_args(batch))
    assert_unchanged(minilm, before)
    assert minilm.config._attn_implementation == "sdpa"


def test_model_restored_after_exception_inside_the_call(minilm, batch):
    before = snapshot(minilm)

    def exploding_forward(input_ids, attention_mask):
        minilm(input_ids, attention_mask)
        raise RuntimeError("boom after the forward pass")

    with pytest.raises(RuntimeError, match="boom"):
        AttentionFlow(exploding_forward, model=minilm).attribute(
            batch["input_ids"], additional_forward_args=forward_args(batch))
    assert_unchanged(minilm, before)


def test_training_mode_warns_and_is_kept(minilm, batch):
    minilm.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            AttentionRollout(minilm).attribute(batch["input_ids"], additional_forward_args=forward_args(batch))
        assert minilm.training
    finally:
        minilm.eval()


@pytest.mark.parametrize("method_cls", CLASSES)
def test_captum_protocol(minilm, batch, method_cls):
    method = method_cls(minilm)
    assert isinstance(method, Attribution)
    assert method.has_convergence_delta() is False
    assert method.multiplies_by_inputs is False
    assert method.get_name() == {"AttentionRollout": "Attention Rollout", "AttentionFlow": "Attention Flow",
                                 "RawAttention": "Raw Attention"}[method_cls.__name__]
    # target is accepted (for drop-in use in Captum loops) and does not change the scores.
    with_target = method.attribute(batch["input_ids"], target=1, additional_forward_args=forward_args(batch))
    without = method.attribute(batch["input_ids"], additional_forward_args=forward_args(batch))
    assert with_target.shape == batch["input_ids"].shape
    torch.testing.assert_close(with_target, without)


def test_per_example_token_index_tensor(minilm, batch):
    method = AttentionRollout(minilm)
    positions = torch.tensor([1, 2, 0])
    scores = method.attribute(batch["input_ids"], additional_forward_args=forward_args(batch),
                              token_index=positions)
    for row, position in enumerate(positions.tolist()):
        alone = method.attribute(batch["input_ids"], additional_forward_args=forward_args(batch),
                                 token_index=position)
        torch.testing.assert_close(scores[row], alone[row])


def cosine_to_query(minilm, query_ids, query_mask):
    """A real scalar output: cosine similarity of mean-pooled embeddings to a query."""
    with torch.no_grad():
        query = minilm(query_ids, query_mask).last_hidden_state.mean(1)

    def forward(input_ids, attention_mask):
        hidden = minilm(input_ids, attention_mask).last_hidden_state
        pooled = (hidden * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
        return torch.nn.functional.cosine_similarity(pooled, query.expand_as(pooled))

    return forward


def test_side_by_side_with_feature_ablation_and_infidelity(minilm, minilm_tokenizer, batch):
    from captum.metrics import infidelity

    query = minilm_tokenizer(["a table with keys"], return_tensors="pt")
    forward = cosine_to_query(minilm, query["input_ids"], query["attention_mask"])
    args = forward_args(batch)
    flow = AttentionFlow(forward, model=minilm).attribute(batch["input_ids"], additional_forward_args=args)
    ablation = FeatureAblation(forward).attribute(batch["input_ids"], baselines=minilm_tokenizer.unk_token_id,
                                                  additional_forward_args=args)
    assert flow.shape == ablation.shape == batch["input_ids"].shape

    generator = torch.Generator().manual_seed(0)

    def drop_tokens(inputs):
        dropped = torch.rand(inputs.shape, generator=generator) < 0.2
        perturbed = inputs.masked_fill(dropped, minilm_tokenizer.unk_token_id)
        # infidelity's perturbation I is "how much each feature changed": 1 where a token was dropped.
        return dropped.float(), perturbed

    value = infidelity(forward, drop_tokens, batch["input_ids"], flow, additional_forward_args=args,
                       n_perturb_samples=4)
    assert value.shape == (batch["input_ids"].shape[0],) and torch.isfinite(value).all()


def test_scores_feed_visualize_text(minilm, minilm_tokenizer, batch):
    pytest.importorskip("IPython")
    from captum.attr import visualization as viz

    scores = AttentionRollout(minilm).attribute(batch["input_ids"], additional_forward_args=forward_args(batch))
    tokens = minilm_tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    record = viz.VisualizationDataRecord(scores[0], 0.9, "pos", "pos", "pos", scores[0].sum(), tokens, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        html = viz.visualize_text([record])
    assert all(token in html.data for token in ("keys", "cabinet"))


@pytest.mark.parametrize("head_fusion_at_capture", [None, "mean"])
@pytest.mark.parametrize("options", [dict(token_index="mean"), dict(token_index=0, layer=2),
                                     dict(token_index="all", return_all_layers=True)],
                         ids=["mean", "cls-layer2", "all"])
def test_classes_equal_the_functional_api_bit_for_bit(minilm, batch, head_fusion_at_capture, options):
    """One path: a class's result is the functional function's on the weights it captures."""
    from captum_attnflow import capture_attention
    from captum_attnflow.functional import raw_attention

    captured = capture_attention(minilm, batch["input_ids"], forward_args(batch), head_fusion=head_fusion_at_capture)
    for method_cls, function in ((AttentionRollout, attention_rollout), (AttentionFlow, attention_flow),
                                 (RawAttention, raw_attention)):
        scores = method_cls(minilm).attribute(batch["input_ids"], additional_forward_args=forward_args(batch),
                                              **options)
        assert torch.equal(scores, function(captured, **options)), method_cls.__name__
