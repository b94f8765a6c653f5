"""Never a silent wrong answer: each reproduction of issue 12 as a regression test.

Every attribution here is compared with an independent reference computed from scratch:
the attention of an eager copy of the model (``output_attentions=True``) on each example
*without padding*, rolled out with plain numpy (``numpy_rollout``). Wrappers use arbitrary
parameter names and orders, as users write them.
"""

import copy
import threading

import numpy as np
import pytest
import torch
import transformers as T
from captum.metrics import infidelity, sensitivity_max
from helpers import PaddedEncoder, assert_unchanged, snapshot, tiny_bert, tiny_gpt2
from references import networkx_flow
from torch import nn

from captum_attnflow import (
    AttentionCaptureError,
    AttentionFlow,
    AttentionRollout,
    InvalidInputError,
    InvalidInputTypeError,
    InvalidParameterError,
    RawAttention,
    capture_attention,
)
from captum_attnflow.functional import attention_flow, attention_rollout

METHODS = (AttentionRollout, AttentionFlow, RawAttention)


def numpy_rollout(attentions: np.ndarray, residual_weight: float = 0.5) -> np.ndarray:
    """``(L, H, S, S)`` attention of ONE unpadded example -> ``(S, S)`` rollout after the last layer."""
    running = np.eye(attentions.shape[-1])
    for layer in attentions:
        a_hat = residual_weight * np.eye(layer.shape[-1]) + (1 - residual_weight) * layer.mean(axis=0)
        a_hat /= a_hat.sum(axis=-1, keepdims=True)
        running = a_hat @ running
    return running


def eager_attentions(model, ids: torch.Tensor) -> np.ndarray:
    """Weights of one unpadded example from an eager deep copy: ``(L, H, S, S)`` float64."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = eager(input_ids=ids[None], output_attentions=True)
    return torch.stack(outputs.attentions)[:, 0].double().numpy()


def reference_rollout_row(model, ids: torch.Tensor, mask: torch.Tensor, position: int) -> np.ndarray:
    """Rollout row of ``position`` on the real tokens only, zero-padded back to the batch width."""
    real = mask.bool()
    row = numpy_rollout(eager_attentions(model, ids[real]))[int(real[:position + 1].sum()) - 1]
    padded = np.zeros(len(ids))
    padded[real.numpy()] = row
    return padded


def right_padded():
    ids = torch.tensor([[3, 17, 8, 22, 5, 9], [3, 12, 30, 4, 0, 0]])
    return ids, (ids != 0).long()


# --- 1. the padding mask is the one the model receives -------------------------------------------

def test_gpt2_wrapper_with_another_parameter_name_explains_the_last_real_token():
    gpt2 = tiny_gpt2()
    ids, mask = right_padded()
    fwd = lambda tokens, m: gpt2(input_ids=tokens, attention_mask=m).last_hidden_state  # noqa: E731
    scores = AttentionRollout(fwd, model=gpt2).attribute(ids, additional_forward_args=(mask,), token_index="last")
    for b in range(len(ids)):
        last = int(mask[b].sum()) - 1
        np.testing.assert_allclose(scores[b].numpy(), reference_rollout_row(gpt2, ids[b], mask[b], last),
                                   atol=1e-5)
    assert (scores[mask == 0] == 0).all()


class Classifier(nn.Module):
    """A user's classifier: ``forward(input_ids, mask)`` around an encoder."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids, mask):
        return self.head(self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, -1])


def test_module_classifier_with_parameter_named_mask():
    torch.manual_seed(0)
    classifier = Classifier(tiny_gpt2()).eval()
    ids, mask = right_padded()
    scores = AttentionRollout(classifier).attribute(ids, target=0, additional_forward_args=(mask,),
                                                    token_index="last")
    for b in range(len(ids)):
        expected = reference_rollout_row(classifier.encoder, ids[b], mask[b], int(mask[b].sum()) - 1)
        np.testing.assert_allclose(scores[b].numpy(), expected, atol=1e-5)


def test_token_type_ids_are_never_taken_for_a_mask():
    bert = tiny_bert()
    ids = torch.tensor([[1, 5, 7, 2, 9, 4]])
    segments = torch.tensor([[0, 0, 0, 1, 1, 1]])
    fwd = lambda tokens, token_type_ids: bert(input_ids=tokens, token_type_ids=token_type_ids).pooler_output  # noqa
    scores = AttentionRollout(fwd, model=bert).attribute(ids, additional_forward_args=(segments,))
    eager = copy.deepcopy(bert)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = torch.stack(eager(input_ids=ids, token_type_ids=segments, output_attentions=True).attentions)
    np.testing.assert_allclose(scores[0].numpy(), numpy_rollout(attentions[:, 0].double().numpy())[0], atol=1e-5)
    assert (scores > 0).all()  # the first segment is not zeroed
    single_segment = AttentionRollout(fwd, model=bert).attribute(ids, additional_forward_args=(torch.zeros_like(ids),))
    assert (single_segment > 0).all()  # not refused as "all padding"


def test_position_ids_are_never_taken_for_a_mask():
    bert = tiny_bert()
    ids = torch.tensor([[1, 5, 7, 2]])
    fwd = lambda tokens, position_ids: bert(input_ids=tokens, position_ids=position_ids).pooler_output  # noqa
    scores = AttentionFlow(fwd, model=bert).attribute(ids, additional_forward_args=(torch.arange(4)[None],))
    assert scores[0, 0] > 0


def test_huggingface_model_called_directly_with_a_misplaced_positional_mask():
    gpt2 = tiny_gpt2()
    ids, mask = right_padded()
    before = snapshot(gpt2)
    for method in METHODS:
        with pytest.raises(InvalidInputError, match="lands in GPT2Model.forward's parameter") as raised:
            method(gpt2).attribute(ids, additional_forward_args=(mask,))
        assert "attention_mask=attention_mask" in str(raised.value)  # shows the wrapper to write
    assert_unchanged(gpt2, before)


def test_bert_called_directly_takes_the_positional_mask_where_bert_expects_it():
    bert = tiny_bert()
    ids, mask = right_padded()
    scores = AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,))
    np.testing.assert_allclose(scores[1].numpy(), reference_rollout_row(bert, ids[1], mask[1], 0), atol=1e-5)


@pytest.mark.parametrize("masked_value", [-1e4, -1e9, float("-inf"), torch.finfo(torch.float32).min])
def test_additive_masks_in_the_functional_api_are_read_as_additive(masked_value):
    weights = torch.softmax(torch.randn(3, 2, 2, 5, 5, generator=torch.Generator().manual_seed(0)), -1)
    zero_one = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    additive = torch.where(zero_one.bool(), torch.zeros(()), torch.full((), masked_value))
    torch.testing.assert_close(attention_rollout(weights, attention_mask=additive),
                               attention_rollout(weights, attention_mask=zero_one))
    torch.testing.assert_close(attention_flow(weights, attention_mask=additive),
                               attention_flow(weights, attention_mask=zero_one))


@pytest.mark.parametrize("mask", [torch.tensor([[0.0, 0.5, 1.0, 1.0, 1.0]]), torch.tensor([[0.0, -3.0, 0, 0, 0]]),
                                  torch.tensor([[2, 1, 1, 1, 1]])], ids=["half", "soft-bias", "two"])
def test_masks_that_are_not_padding_masks_are_refused(mask):
    weights = torch.softmax(torch.randn(2, 1, 1, 5, 5), -1)
    with pytest.raises(InvalidInputError, match="attention_mask"):
        attention_rollout(weights, attention_mask=mask)


def test_huggingface_model_given_an_additive_mask_is_refused():
    bert = tiny_bert()
    ids, mask = right_padded()
    additive = (1.0 - mask.float()) * -1e9
    fwd = lambda tokens, m: bert(input_ids=tokens, attention_mask=m).pooler_output  # noqa: E731
    before = snapshot(bert)
    with pytest.raises(InvalidInputError, match="additive"):
        AttentionRollout(fwd, model=bert).attribute(ids, additional_forward_args=(additive,))
    assert_unchanged(bert, before)


class AdditiveMaskEncoder(PaddedEncoder):
    """Hands ``nn.TransformerEncoder`` a float additive key padding mask."""

    def forward(self, ids, additive_mask):
        return self.encoder(self.embed(ids), src_key_padding_mask=additive_mask).sum(-1)


def test_torch_float_key_padding_mask_of_minus_1e9_is_padding():
    encoder = AdditiveMaskEncoder().eval()
    ids, mask = right_padded()
    additive = (1.0 - mask.float()) * -1e9
    scores = AttentionRollout(encoder).attribute(ids, additional_forward_args=(additive,))
    assert (scores[mask == 0] == 0).all()
    boolean = AttentionRollout(PaddedEncoder().eval()).attribute(ids, additional_forward_args=(mask,))
    torch.testing.assert_close(scores, boolean, atol=1e-5, rtol=0)


def test_torch_soft_bias_key_padding_mask_is_refused():
    encoder = AdditiveMaskEncoder().eval()
    ids, _ = right_padded()
    with pytest.raises(InvalidInputError, match="key_padding_mask"):
        AttentionRollout(encoder).attribute(ids, additional_forward_args=(torch.full(ids.shape, -2.0),))


def test_explicit_attention_mask_for_attention_fn_and_disagreement_elsewhere():
    weights = torch.softmax(torch.randn(2, 2, 1, 4, 4, generator=torch.Generator().manual_seed(3)), -1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    ids = torch.ones(2, 4, dtype=torch.long)
    explainer = AttentionRollout(lambda t: t.float(), attention_fn=lambda t: weights)
    scores = explainer.attribute(ids, attention_mask=mask)
    torch.testing.assert_close(scores, attention_rollout(weights, attention_mask=mask, token_index=0))
    assert (scores[1, 2:] == 0).all()
    bert = tiny_bert()
    fwd = lambda tokens, m: bert(input_ids=tokens, attention_mask=m).pooler_output  # noqa: E731
    with pytest.raises(InvalidInputError, match="differs"):
        AttentionRollout(fwd, model=bert).attribute(ids, additional_forward_args=(torch.ones_like(mask),),
                                                    attention_mask=mask)


def test_data_parallel_wrapper_sees_the_mask_and_checks_the_vocabulary():
    bert = tiny_bert()
    wrapped = nn.DataParallel(bert).eval()  # on the CPU it calls the module directly
    ids, mask = right_padded()
    scores = AttentionRollout(wrapped).attribute(ids, additional_forward_args=(mask,))
    assert (scores[mask == 0] == 0).all()
    with pytest.raises(InvalidInputError, match="vocabulary"):
        AttentionRollout(wrapped).attribute(ids + 45)


# --- 2. NaN / inf from every family --------------------------------------------------------------

def test_nan_attention_from_a_plain_pytorch_model_raises():
    encoder = PaddedEncoder().eval()
    with torch.no_grad():
        encoder.encoder.layers[1].self_attn.in_proj_weight[0, 0] = float("nan")
    ids, mask = right_padded()
    before = snapshot(encoder)
    for method in METHODS:
        with pytest.raises(InvalidInputError, match="NaN or inf"):
            method(encoder).attribute(ids, additional_forward_args=(mask,))
    assert_unchanged(encoder, before)


class CausalEncoder(PaddedEncoder):
    """Causal self-attention with left padding: padded queries see nothing and get NaN rows."""

    def __init__(self, num_layers):
        super().__init__()
        self.encoder.layers = self.encoder.layers[:num_layers]
        self.encoder.num_layers = num_layers

    def forward(self, ids, attention_mask):
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
        return self.encoder(self.embed(ids), mask=causal, src_key_padding_mask=attention_mask == 0).sum(-1)


LEFT_PADDED = torch.tensor([[0, 0, 4, 9, 3], [7, 2, 4, 9, 3]])
LEFT_MASK = (torch.arange(5) >= torch.tensor([[2], [0]])).long()


def test_nan_rows_of_padded_queries_are_not_an_error():
    scores = AttentionRollout(CausalEncoder(1).eval()).attribute(LEFT_PADDED, additional_forward_args=(LEFT_MASK,),
                                                                   token_index="last")
    assert torch.isfinite(scores).all() and (scores[0, :2] == 0).all()


def test_nan_that_reaches_real_tokens_raises():
    # torch propagates the padded queries' NaN into the next layer's keys: every row of layer 2 is
    # NaN, and the model's own output for the real tokens is NaN too. Scores would be invented.
    with pytest.raises(InvalidInputError, match="layer 2"):
        AttentionRollout(CausalEncoder(2).eval()).attribute(LEFT_PADDED, additional_forward_args=(LEFT_MASK,))


# --- 3. Captum's conventions ---------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_tuple_in_tuple_out(method):
    bert = tiny_bert()
    ids, mask = right_padded()
    single = method(bert).attribute(ids, additional_forward_args=(mask,))
    as_tuple = method(bert).attribute((ids,), additional_forward_args=(mask,))
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], single)
    with pytest.raises(InvalidInputError, match="tuple of 2"):
        method(bert).attribute((ids, ids), additional_forward_args=(mask,))


def _token_dropout(inputs, perturb_radius=0.3):
    generator = torch.Generator().manual_seed(0)
    ids = inputs[0] if isinstance(inputs, tuple) else inputs
    drop = (torch.rand(ids.shape, generator=generator) < perturb_radius) & (ids != 0)
    perturbed = ids.masked_fill(drop, 1)
    return (perturbed,) if isinstance(inputs, tuple) else perturbed


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("token_index", [0, "mean", "last", "all"])
def test_captum_sensitivity_max_works_with_every_token_index_mode(method, token_index):
    bert = tiny_bert()
    ids, mask = right_padded()
    explainer = method(lambda tokens, m: bert(input_ids=tokens, attention_mask=m).pooler_output, model=bert)
    sensitivity = sensitivity_max(explainer.attribute, (ids,), perturb_func=_token_dropout, n_perturb_samples=3,
                                  additional_forward_args=(mask,), token_index=token_index)
    assert sensitivity.shape == (2,) and torch.isfinite(sensitivity).all() and (sensitivity >= 0).all()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("token_index", [0, "mean", "last"])
def test_captum_infidelity_works_on_each_method(method, token_index):
    bert = tiny_bert()
    ids, mask = right_padded()
    forward = lambda tokens, m: bert(input_ids=tokens, attention_mask=m).pooler_output.sum(-1)  # noqa: E731
    explainer = method(forward, model=bert)
    scores = explainer.attribute((ids,), additional_forward_args=(mask,), token_index=token_index)

    def perturb(inputs):
        perturbed = _token_dropout(inputs)
        return (perturbed != inputs).float(), perturbed

    value = infidelity(forward, perturb, (ids,), scores, additional_forward_args=(mask,), n_perturb_samples=2)
    assert value.shape == (2,) and torch.isfinite(value).all()


def test_results_keep_the_models_floating_dtype():
    bert = tiny_bert().double()
    ids, mask = right_padded()
    for method in METHODS:
        assert method(bert).attribute(ids, additional_forward_args=(mask,)).dtype == torch.float64
    weights = torch.softmax(torch.randn(2, 1, 1, 3, 3, dtype=torch.float64), -1)
    assert attention_flow(weights).dtype == attention_rollout(weights).dtype == torch.float64


def test_a_forward_that_runs_the_model_twice_is_refused():
    bert = tiny_bert()
    ids, mask = right_padded()
    twice = lambda t, m: bert(input_ids=t, attention_mask=m).pooler_output - bert(input_ids=t).pooler_output  # noqa
    before = snapshot(bert)
    for method in METHODS:
        with pytest.raises(AttentionCaptureError, match="more than once"):
            method(twice, model=bert).attribute(ids, additional_forward_args=(mask,))
    assert_unchanged(bert, before)


# --- 4. threads -----------------------------------------------------------------------------------

def test_other_threads_using_the_model_are_neither_recorded_nor_disturbed():
    bert = tiny_bert()
    ids, mask = right_padded()
    expected = AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,))
    other_ids = torch.randint(1, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        other_expected = bert(other_ids).last_hidden_state
    stop, errors, other_outputs = threading.Event(), [], []

    def other_thread():
        while not stop.is_set():
            with torch.no_grad():
                other_outputs.append(bert(other_ids).last_hidden_state)

    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        for _ in range(40):
            got = AttentionRollout(bert).attribute(ids, additional_forward_args=(mask,))
            if not torch.equal(got, expected):
                errors.append(got)
    finally:
        stop.set()
        worker.join()
    assert not errors
    assert other_outputs and all(torch.allclose(o, other_expected, atol=1e-5) for o in other_outputs)


class Rendezvous(nn.Module):
    """Waits inside its forward pass until ``parties`` calls are inside at once."""

    def __init__(self, encoder, barrier):
        super().__init__()
        self.encoder, self.barrier = encoder, barrier

    def forward(self, ids):
        self.barrier.wait(timeout=60)  # raises BrokenBarrierError if the calls cannot overlap
        return self.encoder(input_ids=ids).pooler_output


def test_captures_of_different_models_run_concurrently():
    barrier = threading.Barrier(2)
    first, second = Rendezvous(tiny_bert(), barrier).eval(), Rendezvous(tiny_bert(), barrier).eval()
    ids, _ = right_padded()
    results = {}

    def run(name, model):
        results[name] = AttentionRollout(model).attribute(ids)

    threads = [threading.Thread(target=run, args=(n, m)) for n, m in (("a", first), ("b", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) == {"a", "b"}  # both passed the barrier together: no process-wide lock
    torch.testing.assert_close(results["a"], results["b"])


def test_a_default_fork_process_pool_works():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bert = tiny_bert()
    ids, mask = right_padded()
    serial = AttentionFlow(bert).attribute(ids, additional_forward_args=(mask,), token_index="mean")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        forked = AttentionFlow(bert).attribute(ids, additional_forward_args=(mask,), token_index="mean",
                                               executor=pool, chunk_size=1)
    torch.testing.assert_close(forked, serial, rtol=0, atol=0)


# --- 5. other silent or raw failures ------------------------------------------------------------

@pytest.mark.parametrize("poison", [-0.5, float("inf")])
def test_attention_fn_values_are_checked_before_the_heads_are_fused(poison):
    weights = torch.full((1, 1, 2, 3, 3), 1 / 3)
    weights[0, 0, 0, 0, 0] += poison
    weights[0, 0, 1, 0, 0] -= poison  # the head mean hides both
    explainer = AttentionRollout(lambda t: t.float(), attention_fn=lambda t: weights)
    with pytest.raises(InvalidInputError, match="attention_fn layer 1"):
        explainer.attribute(torch.ones(1, 3, dtype=torch.long))


def test_rows_that_do_not_sum_to_one_warn():
    weights = torch.softmax(torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0)), -1)
    weights[:, :, :, 1] *= 0.01
    with pytest.warns(UserWarning, match="sum to between"):
        attention_rollout(weights)
    explainer = AttentionRollout(lambda t: t.float(), attention_fn=lambda t: weights)
    with pytest.warns(UserWarning, match="sum to between"):
        explainer.attribute(torch.ones(1, 4, dtype=torch.long))


def test_weights_that_are_not_probabilities_are_refused():
    weights = torch.softmax(torch.randn(2, 1, 2, 4, 4), -1)
    weights[0, 0, 0, 0] = 3e38
    with pytest.raises(InvalidInputError, match="at most 1"):
        attention_rollout(weights)


def test_training_mode_inside_an_eval_wrapper_warns():
    classifier = Classifier(tiny_gpt2()).eval()
    classifier.encoder.train()
    ids, mask = right_padded()
    with pytest.warns(UserWarning, match="training mode"):
        AttentionRollout(classifier).attribute(ids, additional_forward_args=(mask,), token_index="last")


def test_functional_flow_refuses_to_explain_a_padded_position():
    weights = torch.softmax(torch.randn(2, 2, 1, 4, 4), -1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(InvalidParameterError, match="padding"):
        attention_flow(weights, token_index=3, attention_mask=mask)


@pytest.mark.parametrize("layer", [99, 0, -1])
def test_layer_with_return_all_layers_is_not_ignored(layer):
    bert = tiny_bert()
    with pytest.raises(InvalidParameterError, match="return_all_layers"):
        AttentionRollout(bert).attribute(right_padded()[0], layer=layer, return_all_layers=True)
    with pytest.raises(InvalidParameterError, match="return_all_layers"):
        attention_flow(torch.softmax(torch.randn(2, 1, 1, 3, 3), -1), layer=layer, return_all_layers=True)


def test_head_fusion_none_is_refused():
    for method in METHODS:
        with pytest.raises(InvalidParameterError, match="head_fusion"):
            method(tiny_bert()).attribute(right_padded()[0], head_fusion=None)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16])
def test_small_integer_ids_are_refused_with_the_fix(dtype):
    ids = right_padded()[0].to(dtype)
    for model in (tiny_bert(), PaddedEncoder().eval()):
        with pytest.raises(InvalidInputTypeError, match="long"):
            AttentionRollout(model).attribute(ids, additional_forward_args=(torch.ones_like(ids),))


def test_runtime_error_from_set_attn_implementation_becomes_a_capture_error(monkeypatch):
    bert = tiny_bert()

    def refuse(self, implementation):
        raise RuntimeError("kernel cannot be changed on this device")

    monkeypatch.setattr(T.BertModel, "set_attn_implementation", refuse)
    with pytest.raises(AttentionCaptureError, match="cannot be switched"):
        AttentionRollout(bert).attribute(right_padded()[0])


# --- 7. options checked before the forward pass ---------------------------------------------------

@pytest.mark.parametrize("options", [{"token_index": 6}, {"token_index": torch.tensor([0, 1, 2])},
                                     {"layer": 2}, {"layer": -3}, {"backend": "scipy-typo"},
                                     {"head_fusion": "median"}, {"residual_weight": 2.0}])
def test_out_of_range_options_fail_before_any_forward_pass(options):
    calls = []
    bert = tiny_bert()
    forward = lambda t: calls.append(1) or bert(input_ids=t).pooler_output  # noqa: E731
    with pytest.raises(InvalidParameterError):
        AttentionFlow(forward, model=bert).attribute(right_padded()[0], **options)
    assert not calls


def test_flow_matrix_rows_equal_networkx_per_position():
    bert = tiny_bert()
    ids, mask = right_padded()
    matrices = AttentionFlow(bert).attribute(ids, additional_forward_args=(mask,), token_index="all",
                                             normalize=False)
    captured = capture_attention(bert, ids, (mask,))
    from captum_attnflow.functional import transition_matrices

    graphs = transition_matrices(captured).double().numpy()
    for b in range(2):
        real = mask[b].bool().numpy()
        for position in np.flatnonzero(real):
            expected = networkx_flow(graphs[:, b], int(position))
            np.testing.assert_allclose(matrices[b, position].numpy()[real], expected[real], atol=1e-6)
        assert (matrices[b, ~real] == 0).all()
