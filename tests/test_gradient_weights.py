"""Target-aware edge weights (issue 20): ``edge_weights="gradient"`` (Chefer et al. 2021),
``"grad_rollout"`` (jacobgil/vit-explain), ``discard_mode="matrix"`` and ``start_layer``.

The references below are independent re-implementations written from the peers' code, loop
for loop (read, not copied; their files and lines are named at each function):

* hila-chefer/Transformer-MM-Explainability, ``CLIP_explainability.ipynb`` (``interpret``: batched
  ``torch.autograd.grad`` of the summed one-hot logits, ``start_layer``, ``R = R + bmm(cam, R)``)
  and ``lxmert/lxmert/src/ExplanationGenerator.py:18-29`` (``avg_heads``,
  ``apply_self_attention_rules``);
* jacobgil/vit-explain ``vit_grad_rollout.py:9-36`` and ``vit_rollout.py:9-42``.

The gradients themselves come, in the references, from Hugging Face's own
``output_attentions=True`` tensors (not from the package's hooks), and on a hand-made model from
``torch.autograd`` with respect to a perturbation added inside the attention, and from finite
differences.
"""

import copy

import numpy as np
import pytest
import torch
import transformers as T
from torch import nn

from captum_attnflow import (
    AttentionCaptureError,
    AttentionFlow,
    AttentionRollout,
    InvalidInputError,
    InvalidInputTypeError,
    InvalidParameterError,
    LLMAttentionAttribution,
    UnsupportedModelError,
)
from captum_attnflow.capture import capture_attention_gradients
from captum_attnflow.functional import (
    attention_flow,
    attention_rollout,
    discard_lowest,
    transition_matrices,
)
from tests.references import networkx_flow

BERT = dict(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
            num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
VIT = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=3,
           num_attention_heads=2, intermediate_size=24, num_labels=4)


# ------------------------------------------------------------------------ independent references

def chefer_relevance(attentions, grads, start_layer=0):
    """Chefer et al.'s relevance ``R`` (B, S, S), CLIP_explainability.ipynb ``interpret``."""
    batch_size, _, num_tokens, _ = attentions[0].shape
    R = torch.eye(num_tokens, num_tokens, dtype=attentions[0].dtype)
    R = R.unsqueeze(0).expand(batch_size, num_tokens, num_tokens)
    for i, (attn_probs, grad) in enumerate(zip(attentions, grads)):
        if i < start_layer:
            continue
        cam = attn_probs.reshape(-1, num_tokens, num_tokens)
        grad = grad.reshape(-1, num_tokens, num_tokens)
        cam = grad * cam
        cam = cam.reshape(batch_size, -1, num_tokens, num_tokens)
        cam = cam.clamp(min=0).mean(dim=1)
        R = R + torch.bmm(cam, R)
    return R


def vit_explain_grad_rollout(attentions, gradients, discard_ratio):
    """vit_grad_rollout.py:9-28 for one example (B = 1), the full matrix ``result``.

    One deliberate difference: their line 26, ``a = a / a.sum(dim=-1)``, broadcasts the
    ``(1, S)`` row sums over the last axis (column ``j`` is divided by the sum of row ``j``); the
    rows are normalised here (``keepdim=True``), as the rollout they implement intends.
    """
    result = torch.eye(attentions[0].size(-1), dtype=attentions[0].dtype)
    with torch.no_grad():
        for attention, grad in zip(attentions, gradients):
            weights = grad
            attention_heads_fused = (attention * weights).mean(axis=1)
            attention_heads_fused[attention_heads_fused < 0] = 0
            flat = attention_heads_fused.view(attention_heads_fused.size(0), -1)
            _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
            flat[0, indices] = 0
            I = torch.eye(attention_heads_fused.size(-1), dtype=attention.dtype)  # noqa: E741 (their name)
            a = (attention_heads_fused + 1.0 * I) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = torch.matmul(a, result)
    return result


def vit_explain_rollout(attentions, discard_ratio, head_fusion):
    """vit_rollout.py:9-33 for one example (B = 1), the full matrix ``result`` (row sums as above)."""
    result = torch.eye(attentions[0].size(-1), dtype=attentions[0].dtype)
    with torch.no_grad():
        for attention in attentions:
            if head_fusion == "mean":
                attention_heads_fused = attention.mean(axis=1)
            elif head_fusion == "max":
                attention_heads_fused = attention.max(axis=1)[0]
            else:
                attention_heads_fused = attention.min(axis=1)[0]
            flat = attention_heads_fused.view(attention_heads_fused.size(0), -1)
            _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
            indices = indices[indices != 0]
            flat[0, indices] = 0
            I = torch.eye(attention_heads_fused.size(-1), dtype=attention.dtype)  # noqa: E741 (their name)
            a = (attention_heads_fused + 1.0 * I) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = torch.matmul(a, result)
    return result


def eager_attentions_and_grads(model, select, **inputs):
    """Attention and ``∂(Σ_b y_b)/∂A`` from Hugging Face's own ``output_attentions`` tensors, on an
    eager copy of the model (no package code involved)."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    outputs = eager(**inputs, output_attentions=True)
    attentions = outputs.attentions
    grads = torch.autograd.grad(select(outputs).sum(), attentions)
    return [a.detach() for a in attentions], list(grads)


def random_attentions(layers=3, batch=2, heads=2, seq=6, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    attentions = torch.softmax(torch.randn(layers, batch, heads, seq, seq, generator=generator, dtype=dtype), -1)
    grads = torch.randn(layers, batch, heads, seq, seq, generator=generator, dtype=dtype)
    return attentions, grads


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return T.BertForSequenceClassification(T.BertConfig(**BERT)).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(1)
    return T.ViTForImageClassification(T.ViTConfig(**VIT)).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(2)
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=30, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()


IDS = torch.tensor([[1, 5, 7, 9, 11, 2], [1, 6, 8, 3, 2, 0], [1, 4, 2, 0, 0, 0]])
MASK = (IDS != 0).long()


# ------------------------------------------------------------------------ the functional API

@pytest.mark.parametrize("start_layer", [0, 1, 2, -1])
def test_gradient_rollout_is_chefers_relevance(start_layer):
    attentions, grads = random_attentions(seed=start_layer + 5)
    reference = chefer_relevance(list(attentions), list(grads), start_layer=start_layer % 3)
    ours = attention_rollout(attentions, edge_weights="gradient", attention_grads=grads, layer=-1,
                             start_layer=start_layer)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    cls_row = attention_rollout(attentions, token_index=0, edge_weights="gradient", attention_grads=list(grads),
                                start_layer=start_layer)
    torch.testing.assert_close(cls_row, reference[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_grad_rollout_is_vit_explains(discard_ratio):
    attentions, grads = random_attentions(batch=3, seed=11)
    # [CLS]->[CLS] small but positive: among the smallest, and dropped (vit_grad_rollout.py:21 protects nothing).
    grads[..., 0, 0] = 1e-6 / attentions[..., 0, 0]
    ours = attention_rollout(attentions, edge_weights="grad_rollout", attention_grads=grads, layer=-1,
                             discard_ratio=discard_ratio, discard_mode="matrix")
    for b in range(3):  # vit-explain explains one image at a time
        reference = vit_explain_grad_rollout([a[b:b + 1].clone() for a in attentions],
                                             [g[b:b + 1] for g in grads], discard_ratio)
        torch.testing.assert_close(ours[b], reference[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.3, 0.9])
def test_whole_matrix_discard_is_vit_explains(head_fusion, discard_ratio):
    attentions, _ = random_attentions(batch=2, seed=3)
    ours = attention_rollout(attentions, head_fusion=head_fusion, layer=-1, discard_ratio=discard_ratio,
                             discard_mode="matrix")
    for b in range(2):
        reference = vit_explain_rollout([a[b:b + 1].clone() for a in attentions], discard_ratio, head_fusion)
        torch.testing.assert_close(ours[b], reference[0], rtol=1e-12, atol=1e-12)


def test_whole_matrix_discard_counts_real_entries_and_keeps_the_first_self_weight():
    torch.manual_seed(0)
    fused = torch.rand(2, 5, 5) + 0.01
    fused[0, 0, 0] = 0.001  # the smallest entry: protected, as vit_rollout.py:26 protects index 0
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    fused[1, :, 3:] = 0.0
    fused[1, 3:, :] = 0.0
    kept = discard_lowest(fused, 0.5, valid, mode="matrix")
    assert int((kept[0] == 0).sum()) == int(25 * 0.5) - 1 and kept[0, 0, 0] == fused[0, 0, 0]
    real_block = kept[1, :3, :3]
    assert int((real_block == 0).sum()) == int(9 * 0.5) or (int((real_block == 0).sum()) == int(9 * 0.5) - 1
                                                             and real_block[0, 0] > 0)
    alone = discard_lowest(fused[1:, :3, :3], 0.5, mode="matrix")
    torch.testing.assert_close(real_block, alone[0])
    unprotected = discard_lowest(fused, 0.5, valid, mode="matrix", keep_first=False)
    assert int((unprotected[0] == 0).sum()) == int(25 * 0.5) and unprotected[0, 0, 0] == 0


def test_attention_edges_are_unchanged_bit_for_bit():
    """The default is the rollout of before: fused mean, w·I + (1−w)·A, rows normalised, chained."""
    attentions, _ = random_attentions(dtype=torch.float32, seed=4)
    fused = attentions.mean(dim=2)
    identity = torch.eye(6)
    transitions = 0.5 * identity + (1.0 - 0.5) * fused
    transitions = transitions / transitions.sum(dim=-1, keepdim=True)
    running, expected = transitions[0], [transitions[0]]
    for layer in range(1, 3):
        running = torch.matmul(transitions[layer], running)
        expected.append(running)
    default = attention_rollout(attentions)
    assert torch.equal(default, torch.stack(expected))
    explicit = attention_rollout(attentions, edge_weights="attention", start_layer=0, discard_mode="row")
    assert torch.equal(default, explicit)
    assert torch.equal(transition_matrices(attentions), transitions)


def test_start_layer_skips_layers_for_every_weighting():
    attentions, grads = random_attentions(seed=6)
    for edge_weights in ("attention", "grad_rollout", "gradient"):
        grads_or_none = None if edge_weights == "attention" else grads
        skipped = attention_rollout(attentions, token_index=0, edge_weights=edge_weights,
                                    attention_grads=grads_or_none, start_layer=1)
        only_top = attention_rollout(attentions[1:], token_index=0, edge_weights=edge_weights,
                                     attention_grads=None if grads_or_none is None else grads[1:])
        torch.testing.assert_close(skipped, only_top, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("edge_weights", ["gradient", "grad_rollout"])
def test_one_layer_flow_is_one_layer_rollout(edge_weights):
    """One layer: the flow from i to j is the capacity of the one edge, the rollout's entry."""
    attentions, grads = random_attentions(seed=7)
    options = dict(edge_weights=edge_weights, attention_grads=grads, token_index=0, layer=0)
    rollout = attention_rollout(attentions, **options)
    raw = attention_flow(attentions, normalize=False, show_progress=False, **options)
    torch.testing.assert_close(raw, rollout, rtol=1e-9, atol=1e-9)
    normalized = attention_flow(attentions, show_progress=False, **options)
    torch.testing.assert_close(normalized, rollout / rollout.sum(-1, keepdim=True), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("edge_weights", ["gradient", "grad_rollout"])
def test_gradient_flow_is_max_flow_on_the_gradient_capacities(edge_weights):
    attentions, grads = random_attentions(batch=1, seq=5, seed=8)
    capacities = transition_matrices(attentions, edge_weights=edge_weights, attention_grads=grads)[:, 0]
    if edge_weights == "gradient":  # I + E_h[(∇A ⊙ A)^+], built here from the definition
        expected = torch.eye(5) + (grads * attentions).clamp(min=0).mean(dim=2)[:, 0]
        torch.testing.assert_close(capacities, expected.double())
    flows = attention_flow(attentions, edge_weights=edge_weights, attention_grads=grads, token_index=2,
                           normalize=False, show_progress=False)[0]
    np.testing.assert_allclose(flows.numpy(), networkx_flow(capacities.numpy(), 2), atol=1e-7)


def test_functional_refuses_what_it_cannot_define():
    attentions, grads = random_attentions()
    with pytest.raises(InvalidParameterError, match="needs attention_grads"):
        attention_rollout(attentions, edge_weights="gradient")
    with pytest.raises(InvalidParameterError, match="only used with"):
        attention_rollout(attentions, attention_grads=grads)
    with pytest.raises(InvalidInputError, match="shape"):
        attention_rollout(attentions, edge_weights="gradient", attention_grads=grads[:, :, :1])
    with pytest.raises(InvalidParameterError, match="edge_weights='bogus'"):
        attention_rollout(attentions, edge_weights="bogus")
    with pytest.raises(InvalidParameterError, match="discard_mode"):
        attention_rollout(attentions, discard_mode="column")
    with pytest.raises(InvalidParameterError, match="head_fusion"):
        attention_rollout(attentions, edge_weights="gradient", attention_grads=grads, head_fusion="max")
    with pytest.raises(InvalidParameterError, match="residual_weight"):
        attention_rollout(attentions, edge_weights="gradient", attention_grads=grads, residual_weight=0.3)
    with pytest.raises(InvalidParameterError, match="causal_normalization"):
        attention_rollout(attentions, edge_weights="grad_rollout", attention_grads=grads, causal_normalization=True)
    with pytest.raises(InvalidParameterError, match="start_layer"):
        attention_rollout(attentions, edge_weights="gradient", attention_grads=grads, start_layer=3)
    bad = grads.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        attention_flow(attentions, edge_weights="gradient", attention_grads=bad)


# ------------------------------------------------------------------------ models: exactness

def test_bert_gradient_rollout_is_chefers_on_hugging_faces_own_attentions(bert):
    ids, mask = IDS[:2, :5], MASK[:2, :5]
    scores = AttentionRollout(bert).attribute(ids, target=2, additional_forward_args=(mask,),
                                              edge_weights="gradient", token_index="all")
    attentions, grads = eager_attentions_and_grads(bert, lambda out: out.logits[:, 2], input_ids=ids,
                                                   attention_mask=mask)
    reference = chefer_relevance(attentions, grads)
    valid = mask.bool()
    for b in range(2):
        real = valid[b]
        torch.testing.assert_close(scores[b][real][:, real], reference[b][real][:, real], rtol=1e-5, atol=1e-6)


def test_vit_gradient_and_grad_rollout_are_the_peers_on_the_patch_grid(vit):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 16, 16)
    attentions, grads = eager_attentions_and_grads(vit, lambda out: out.logits[:, 3], pixel_values=pixels)
    chefer = chefer_relevance(attentions, grads)[:, 0, 1:].reshape(2, 4, 4)  # the ViT notebook's R[0, 1:]
    ours = AttentionRollout(vit).attribute(pixels, target=3, edge_weights="gradient", return_patch_grid=True)
    torch.testing.assert_close(ours, chefer, rtol=1e-5, atol=1e-6)
    rollout = AttentionRollout(vit).attribute(pixels, target=3, edge_weights="grad_rollout", discard_ratio=0.9,
                                              discard_mode="matrix", return_patch_grid=True)
    for b in range(2):
        reference = vit_explain_grad_rollout([a[b:b + 1].clone() for a in attentions], [g[b:b + 1] for g in grads],
                                             0.9)[0, 0, 1:].reshape(4, 4)
        torch.testing.assert_close(rollout[b], reference, rtol=1e-5, atol=1e-6)


def test_gpt2_gradient_rollout_for_a_next_token_logit(gpt2):
    ids = torch.tensor([[3, 7, 9, 4, 12]])
    target = (4, 17)  # the logit of token 17 at the last position
    ours = AttentionRollout(gpt2).attribute(ids, target=target, token_index=4, edge_weights="gradient")
    attentions, grads = eager_attentions_and_grads(gpt2, lambda out: out.logits[:, 4, 17], input_ids=ids)
    torch.testing.assert_close(ours, chefer_relevance(attentions, grads)[:, 4], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_minilm_gradient_rollout_is_chefers(minilm, minilm_tokenizer, sentences):
    batch = minilm_tokenizer(sentences, return_tensors="pt", padding=True)

    def first_feature(input_ids, attention_mask):  # one scalar per example: a sentence-embedding coordinate
        hidden = minilm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return (hidden * attention_mask[..., None]).sum(1)[:, 5] / attention_mask.sum(1)

    ours = AttentionRollout(first_feature, model=minilm).attribute(
        batch["input_ids"], additional_forward_args=(batch["attention_mask"],), edge_weights="gradient")

    def select(out):
        hidden = out.last_hidden_state
        mask = batch["attention_mask"]
        return (hidden * mask[..., None]).sum(1)[:, 5] / mask.sum(1)

    attentions, grads = eager_attentions_and_grads(minilm, select, input_ids=batch["input_ids"],
                                                   attention_mask=batch["attention_mask"])
    reference = chefer_relevance(attentions, grads)[:, 0]
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[valid], reference[valid], rtol=1e-4, atol=1e-6)
    assert minilm.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------------ the gradients themselves

class PerturbableAttention(nn.Module):
    """One head; ``delta`` is added to the probabilities used *and* returned, so ``∂y/∂delta = ∂y/∂A``."""

    def __init__(self, dim):
        super().__init__()
        self.qk = nn.Linear(dim, 2 * dim)
        self.v = nn.Linear(dim, dim)
        self.delta = None

    def forward(self, x):
        q, k = self.qk(x).chunk(2, dim=-1)
        probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)[:, None]
        if self.delta is not None:
            probs = probs + self.delta
        return x + probs[:, 0] @ self.v(x), probs


class TinyModel(nn.Module):
    def __init__(self, dim=6, layers=2):
        super().__init__()
        self.embed = nn.Embedding(12, dim)
        self.blocks = nn.ModuleList([PerturbableAttention(dim) for _ in range(layers)])
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)[0]
        return self.head(x[:, 0])


def test_captured_gradients_are_autograd_and_finite_differences():
    torch.manual_seed(0)
    model = TinyModel().double().eval()
    ids = torch.tensor([[1, 4, 7, 2], [3, 5, 6, 8]])
    captured = capture_attention_gradients(model, ids, target=[1, 2], adapter=_module_adapter(model))
    deltas = [torch.zeros(2, 1, 4, 4, dtype=torch.float64, requires_grad=True) for _ in model.blocks]
    for block, delta in zip(model.blocks, deltas):
        block.delta = delta
    try:
        logits = model(ids)
        selected = logits[torch.arange(2), torch.tensor([1, 2])]
        expected = torch.autograd.grad(selected.sum(), deltas)
        torch.testing.assert_close(captured.attention_grads, torch.stack(expected), rtol=1e-10, atol=1e-12)
        eps = 1e-6
        for layer, b, i, j in [(0, 0, 1, 2), (1, 1, 0, 3), (0, 1, 3, 0)]:
            with torch.no_grad():
                deltas[layer][b, 0, i, j] = eps
                plus = model(ids)[b, 1 + b]
                deltas[layer][b, 0, i, j] = -eps
                minus = model(ids)[b, 1 + b]
                deltas[layer][b, 0, i, j] = 0.0
            finite_difference = (plus - minus) / (2 * eps)
            assert abs(float(finite_difference - captured.attention_grads[layer, b, 0, i, j])) < 1e-7
    finally:
        for block in model.blocks:
            block.delta = None
    assert all(p.grad is None for p in model.parameters())


def _module_adapter(model):
    from captum_attnflow.capture.custom import ModuleAttentionAdapter

    return ModuleAttentionAdapter(model, list(model.blocks))


# ------------------------------------------------------------------------ targets and batches

@pytest.mark.parametrize("cls, edge_weights", [
    (AttentionRollout, "gradient"),
    (AttentionFlow, "grad_rollout"),
    pytest.param(AttentionFlow, "gradient", marks=pytest.mark.slow),
    pytest.param(AttentionRollout, "grad_rollout", marks=pytest.mark.slow),
])
def test_target_forms_give_the_single_example_results(bert, cls, edge_weights):
    ids, mask = IDS, MASK
    method = cls(bert)

    def single(b, target):
        real = mask[b].bool()
        return method.attribute(ids[b:b + 1, real], target=target, edge_weights=edge_weights)[0]

    def check(batched, per_example_targets):
        for b, target in enumerate(per_example_targets):
            real = mask[b].bool()
            torch.testing.assert_close(batched[b, real], single(b, target), rtol=1e-4, atol=1e-6)
            assert torch.all(batched[b, ~real] == 0)

    run = lambda target: method.attribute(ids, target=target, additional_forward_args=(mask,),  # noqa: E731
                                          edge_weights=edge_weights)
    check(run(1), [1, 1, 1])
    check(run((2,)), [2, 2, 2])
    check(run(torch.tensor(0)), [0, 0, 0])
    check(run(torch.tensor([2, 0, 1])), [2, 0, 1])
    check(run([1, 2, 0]), [1, 2, 0])
    check(run([(0,), (2,), (1,)]), [0, 2, 1])
    different = run([0, 0, 0])[0] - run([1, 1, 1])[0]
    assert float(different.abs().max()) > 1e-6  # the target matters


def test_target_none_needs_one_scalar_per_example(bert):
    method = AttentionRollout(bert)
    with pytest.raises(InvalidParameterError, match="one scalar per example"):
        method.attribute(IDS, additional_forward_args=(MASK,), edge_weights="gradient")
    scores = AttentionRollout(lambda i, m: bert(input_ids=i, attention_mask=m).logits[:, 1], model=bert).attribute(
        IDS, additional_forward_args=(MASK,), edge_weights="gradient")
    torch.testing.assert_close(scores, method.attribute(IDS, target=1, additional_forward_args=(MASK,),
                                                        edge_weights="gradient"))
    with pytest.raises(InvalidParameterError, match="cannot select"):
        method.attribute(IDS, target=7, additional_forward_args=(MASK,), edge_weights="gradient")
    with pytest.raises(InvalidInputTypeError, match="not a Captum target"):
        method.attribute(IDS, target="positive", additional_forward_args=(MASK,), edge_weights="gradient")


def test_attention_edges_ignore_the_target(bert):
    method = AttentionRollout(bert)
    plain = method.attribute(IDS, additional_forward_args=(MASK,))
    assert torch.equal(plain, method.attribute(IDS, target=2, additional_forward_args=(MASK,)))


def test_llm_rows_each_explain_their_own_token(gpt2):
    from captum.attr import TextTokenInput

    from captum_attnflow.capture.llm import causal_lm_forward
    from captum_attnflow.toy import word_level_tokenizer

    tokenizer = word_level_tokenizer("a b c d e f g h i j".split())
    prompt = TextTokenInput("a b c d", tokenizer)
    result = LLMAttentionAttribution(AttentionRollout(gpt2), tokenizer).attribute(
        prompt, target="e f", edge_weights="gradient")
    ids = torch.tensor([tokenizer.encode("a b c d e f")])
    forward = AttentionRollout(causal_lm_forward(gpt2), model=gpt2)
    for t, (position, token) in enumerate([(4, tokenizer.convert_tokens_to_ids("e")),
                                           (5, tokenizer.convert_tokens_to_ids("f"))]):
        row = forward.attribute(ids, additional_forward_args=(torch.ones_like(ids),), target=[(position, token)],
                                token_index=position, edge_weights="gradient")[0]
        torch.testing.assert_close(result.token_attr[t], row[:5], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ the model is restored

def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_model_restored_after_gradient_capture_even_on_error():
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(T.BertConfig(**BERT)).eval()  # SDPA by default
    model.bert.embeddings.requires_grad_(False)  # partly frozen
    flags = [p.requires_grad for p in model.parameters()]
    implementation, hooks = model.config._attn_implementation, _hooks(model)
    before = model(IDS, attention_mask=MASK).logits.detach()
    AttentionFlow(model).attribute(IDS, target=1, additional_forward_args=(MASK,), edge_weights="gradient")
    with pytest.raises(InvalidParameterError):
        AttentionRollout(model).attribute(IDS, target=9, additional_forward_args=(MASK,), edge_weights="gradient")
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.config._attn_implementation == implementation and _hooks(model) == hooks
    assert not model.training
    torch.testing.assert_close(model(IDS, attention_mask=MASK).logits, before)


def test_fully_frozen_model_is_explained_and_refrozen(bert):
    model = copy.deepcopy(bert).requires_grad_(False)
    scores = AttentionRollout(model).attribute(IDS, target=0, additional_forward_args=(MASK,),
                                               edge_weights="gradient")
    expected = AttentionRollout(bert).attribute(IDS, target=0, additional_forward_args=(MASK,),
                                                edge_weights="gradient")
    torch.testing.assert_close(scores, expected)
    assert not any(p.requires_grad for p in model.parameters())


def test_refusals_of_the_gradient_capture(bert):
    weights = torch.softmax(torch.randn(2, 1, 2, 4, 4), -1)
    by_function = AttentionRollout(lambda ids: ids.float().sum(-1), attention_fn=lambda ids: weights)
    with pytest.raises(UnsupportedModelError, match="attention_fn"):
        by_function.attribute(torch.tensor([[1, 2, 3, 4]]), edge_weights="gradient")
    with torch.inference_mode(), pytest.raises(AttentionCaptureError, match="inference_mode"):
        AttentionRollout(bert).attribute(IDS, target=0, additional_forward_args=(MASK,), edge_weights="gradient")
    with pytest.raises(InvalidParameterError, match="start_layer"):
        AttentionRollout(bert).attribute(IDS, target=0, edge_weights="gradient", start_layer=5)

    class WithBatchNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = copy.deepcopy(bert)
            self.norm = nn.BatchNorm1d(3)

        def forward(self, ids):
            return self.norm(self.inner(ids).logits)

    with pytest.raises(UnsupportedModelError, match="BatchNorm1d"):
        AttentionRollout(WithBatchNorm().train(), model=None).attribute(IDS, target=0, edge_weights="gradient")


class EncoderClassifier(nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.embed = nn.Embedding(20, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids))[:, 0])


def by_hand(model, ids):
    """The encoder written out (post-norm layers), attention probabilities as explicit graph tensors."""
    x, probabilities = model.embed(ids), []
    for layer in model.encoder.layers:
        attention = layer.self_attn
        batch, seq, dim = x.shape
        heads = attention.num_heads
        q, k, v = torch.nn.functional.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, seq, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        probs = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1)
        probabilities.append(probs)
        mixed = (probs @ v).transpose(1, 2).reshape(batch, seq, dim)
        x = layer.norm1(x + attention.out_proj(mixed))
        x = layer.norm2(x + layer.linear2(torch.relu(layer.linear1(x))))
    return model.head(x[:, 0]), probabilities


def test_multihead_attention_gradients_are_those_of_the_encoder_written_out():
    """nn.MultiheadAttention returns a view of its probabilities made after the product with the
    values; the gradient must still be that of the tensor the output depends on."""
    torch.manual_seed(0)
    model = EncoderClassifier().eval()
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    captured = capture_attention_gradients(model, ids, target=[0, 2])
    logits, probabilities = by_hand(model, ids)
    torch.testing.assert_close(logits, model(ids))
    expected = torch.autograd.grad(logits[torch.arange(2), torch.tensor([0, 2])].sum(), probabilities)
    torch.testing.assert_close(captured.attentions, torch.stack([p.detach() for p in probabilities]))
    torch.testing.assert_close(captured.attention_grads, torch.stack(expected), rtol=1e-5, atol=1e-7)
