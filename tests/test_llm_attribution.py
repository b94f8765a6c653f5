"""LLMAttentionAttribution: rollout / flow / raw attention of generated text in Captum's LLM API.

Tiny random decoder LMs of every supported family (2 layers, 4 heads, hidden 32) and a
word-level tokenizer. Expected rows come from an independent eager copy of the model run
with ``output_attentions=True`` and the functional API; teacher forcing means target token
``t`` is explained by the row of position ``n − 1 + t``.
"""

import copy

import numpy as np
import pytest
import torch
import transformers as T
from captum.attr import FeatureAblation, LLMAttribution, LLMAttributionResult, TextTemplateInput, TextTokenInput

from captum_attnflow import (
    AttentionFlow,
    AttentionRollout,
    InvalidInputError,
    InvalidInputTypeError,
    InvalidParameterError,
    LLMAttentionAttribution,
    RawAttention,
    UnsupportedModelError,
)
from captum_attnflow.capture.llm import position_ids_from_mask
from captum_attnflow.functional import attention_flow, attention_rollout
from captum_attnflow.toy import word_level_tokenizer

WORDS = ("the keys to cabinet are is on table a dog cat near old red house of these those dogs cats "
         "runs run big small tree trees and with man men").split()
TOKENIZER = word_level_tokenizer(WORDS)
VOCAB = len(TOKENIZER)
MAX_POSITIONS = 24
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=37, max_position_embeddings=MAX_POSITIONS, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
FAMILIES = {
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                   n_positions=MAX_POSITIONS, pad_token_id=0, bos_token_id=1,
                                                   eos_token_id=2)),
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**COMMON)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**COMMON)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**COMMON)),
}
METHODS = {"rollout": AttentionRollout, "flow": AttentionFlow, "raw": RawAttention}
PROMPT, TARGET = "the keys to the old cabinet", "are on the table"
PROMPTS = [("the keys to the old cabinet", "are on the table"), ("a dog", "runs"),
           ("these cats near the big red house", "run with the man")]


def build(family):
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request):
    return request.param, build(request.param)


@pytest.fixture(scope="module")
def llama():
    return build("llama")


def reference_attentions(model, input_ids, attention_mask=None):
    """Weights from an independent eager copy, as users get them with output_attentions=True."""
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = eager(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids_from_mask(attention_mask), output_attentions=True)
    return outputs.attentions


def full_sequence(prompt, target):
    prompt_ids = torch.tensor(TOKENIZER.encode(prompt))
    target_ids = torch.tensor(TOKENIZER.encode(target, add_special_tokens=False))
    return prompt_ids, target_ids, torch.cat([prompt_ids, target_ids])[None]


def expected_rows(method, model, prompt, target, **options):
    """``(T, n + T)`` rows of the positions predicting the target, from the functional API."""
    prompt_ids, target_ids, ids = full_sequence(prompt, target)
    positions = list(range(len(prompt_ids) - 1, ids.shape[1] - 1))
    attentions = reference_attentions(model, ids)
    if method == "rollout":
        return attention_rollout(attentions, **options)[-1, 0, positions]
    if method == "flow":
        return attention_flow(attentions, token_index=torch.tensor([positions]), **options)[0]
    return torch.stack(attentions)[-1, 0].mean(0)[positions]


# ---- equality with the functional API on independently captured weights -------------------

@pytest.mark.parametrize("causal_normalization", [False, True])
@pytest.mark.parametrize("method", ["rollout", "flow"])
def test_rows_equal_functional_every_family(family_model, method, causal_normalization):
    family, model = family_model
    explainer = LLMAttentionAttribution(METHODS[method](model), TOKENIZER)
    result = explainer.attribute(TextTokenInput(PROMPT, TOKENIZER), target=TARGET,
                                 causal_normalization=causal_normalization, include_generated=True)
    expected = expected_rows(method, model, PROMPT, TARGET, causal_normalization=causal_normalization)
    assert isinstance(result, LLMAttributionResult)
    assert tuple(result.token_attr.shape) == tuple(expected.shape) == (4, 11)
    torch.testing.assert_close(result.token_attr, expected.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.seq_attr, expected.float().sum(0), atol=1e-5, rtol=1e-4)
    # Causal: target token t draws on no target token at or after itself (columns 7... are the target).
    assert torch.all(result.token_attr[:, 7:].triu() == 0) and torch.all(result.token_attr[1:, 7:].diagonal() > 0)


def test_raw_attention_rows_and_prompt_only_view(llama):
    explainer = LLMAttentionAttribution(RawAttention(llama), TOKENIZER)
    result = explainer.attribute(TextTokenInput(PROMPT, TOKENIZER), target=TARGET)
    expected = expected_rows("raw", llama, PROMPT, TARGET)
    # Captum's default view: only the prompt's tokens are features.
    assert result.input_tokens == ["<s>"] + PROMPT.split()
    assert result.output_tokens == TARGET.split()
    torch.testing.assert_close(result.token_attr, expected[:, :7].float(), atol=1e-6, rtol=1e-5)


def test_include_generated_labels_and_layer_option(llama):
    explainer = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    result = explainer.attribute(TextTokenInput(PROMPT, TOKENIZER), target=TARGET, include_generated=True, layer=0)
    assert result.input_tokens == ["<s>"] + PROMPT.split() + TARGET.split()
    expected = expected_rows("rollout", llama, PROMPT, TARGET)  # all layers; take layer 0 below
    _, _, ids = full_sequence(PROMPT, TARGET)
    first_layer = attention_rollout(reference_attentions(llama, ids))[0, 0, 6:10]
    torch.testing.assert_close(result.token_attr, first_layer, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(first_layer, expected.float())  # the option was not ignored


@pytest.mark.parametrize("method", ["rollout", "flow"])
def test_one_forward_pass_and_one_engine_call(llama, method, monkeypatch):
    """Teacher forcing: every target token's row from one forward; flow solves all T sources at once."""
    from captum_attnflow.functional import _maxflow

    forwards, engine_calls = [], []
    solve = _maxflow.max_flows_for_tasks
    monkeypatch.setattr(_maxflow, "max_flows_for_tasks",
                        lambda *args, **kwargs: engine_calls.append(len(args[2])) or solve(*args, **kwargs))
    handle = llama.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        explainer = LLMAttentionAttribution(METHODS[method](llama), TOKENIZER)
        result = explainer.attribute(TextTokenInput(PROMPT, TOKENIZER), target=TARGET)
    finally:
        handle.remove()
    assert result.token_attr.shape[0] == 4 and len(forwards) == 1
    assert engine_calls == ([4] if method == "flow" else [])  # one call, the 4 sources of the target


def test_target_as_token_ids_equals_string(llama):
    explainer = LLMAttentionAttribution(AttentionFlow(llama), TOKENIZER)
    inp = TextTokenInput(PROMPT, TOKENIZER)
    by_string = explainer.attribute(inp, target=TARGET)
    by_ids = explainer.attribute(inp, target=torch.tensor(TOKENIZER.encode(TARGET, add_special_tokens=False)))
    torch.testing.assert_close(by_string.token_attr, by_ids.token_attr, atol=0, rtol=0)


# ---- interpretable features ------------------------------------------------------------------

def test_template_features_sum_their_tokens(llama):
    """Values of several words get the sum of their words' columns; template text is no feature."""
    inp = TextTemplateInput("{} to the {} cabinet", values=["the old keys", "big red"])
    explainer = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    result = explainer.attribute(inp, target=TARGET)
    full = expected_rows("rollout", llama, "the old keys to the big red cabinet", TARGET)
    # <s> | the old keys | to the | big red | cabinet  (positions 0 | 1-3 | 4-5 | 6-7 | 8)
    expected = torch.stack([full[:, 1:4].sum(1), full[:, 6:8].sum(1)], dim=1)
    assert result.input_tokens == ["the old keys", "big red"]
    torch.testing.assert_close(result.token_attr, expected.float(), atol=1e-6, rtol=1e-5)


def test_template_mask_groups_share_their_sum(llama):
    inp = TextTemplateInput("{} {} to the {}", values=["the", "keys", "cabinet"], mask=[0, 0, 1])
    explainer = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    result = explainer.attribute(inp, target=TARGET)
    full = expected_rows("rollout", llama, "the keys to the cabinet", TARGET)
    group = full[:, 1:3].sum(1)
    expected = torch.stack([group, group, full[:, 5]], dim=1)
    torch.testing.assert_close(result.token_attr, expected.float(), atol=1e-6, rtol=1e-5)


def test_skip_tokens_are_not_features(llama):
    inp = TextTokenInput(PROMPT, TOKENIZER, skip_tokens=["<s>"])
    result = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER).attribute(inp, target=TARGET)
    expected = expected_rows("rollout", llama, PROMPT, TARGET)
    assert result.input_tokens == PROMPT.split()
    torch.testing.assert_close(result.token_attr, expected[:, 1:7].float(), atol=1e-6, rtol=1e-5)


def test_template_that_rewrites_values_is_refused(llama):
    inp = TextTemplateInput(lambda a, b: f"{a.upper()} {b}", values=["the", "keys"])
    with pytest.raises(InvalidInputError, match="verbatim"):
        LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER).attribute(inp, target="are")


# ---- batches and generation --------------------------------------------------------------

@pytest.mark.parametrize("method,options", [("rollout", {}), ("rollout", {"causal_normalization": True}),
                                            ("flow", {}), ("flow", {"causal_normalization": True})])
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_left_padded_batch_equals_per_prompt(family, method, options):
    model = build(family)
    explainer = LLMAttentionAttribution(METHODS[method](model), TOKENIZER)
    inps = [TextTokenInput(prompt, TOKENIZER) for prompt, _ in PROMPTS]
    batched = explainer.attribute_batch(inps, [target for _, target in PROMPTS], include_generated=True, **options)
    for inp, (_, target), together in zip(inps, PROMPTS, batched):
        alone = explainer.attribute(inp, target=target, include_generated=True, **options)
        assert together.output_tokens == alone.output_tokens
        torch.testing.assert_close(together.token_attr, alone.token_attr, atol=1e-5, rtol=1e-4)


def test_generated_target_batch_equals_per_prompt(llama):
    explainer = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    inps = [TextTokenInput(prompt, TOKENIZER) for prompt, _ in PROMPTS]
    gen_args = {"max_new_tokens": 4, "do_sample": False}
    batched = explainer.attribute_batch(inps, gen_args=gen_args)
    for inp, together in zip(inps, batched):
        alone = explainer.attribute(inp, gen_args=gen_args)
        assert together.output_tokens == alone.output_tokens and len(alone.output_tokens) >= 1
        torch.testing.assert_close(together.token_attr, alone.token_attr, atol=1e-5, rtol=1e-4)


def test_generation_explains_what_generate_returns(llama):
    inp = TextTokenInput(PROMPT, TOKENIZER)
    prompt_ids = inp.inp_tensor
    generated = llama.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=3,
                               do_sample=False)[0, prompt_ids.shape[1]:]
    explainer = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    by_generation = explainer.attribute(inp, gen_args={"max_new_tokens": 3, "do_sample": False})
    by_target = explainer.attribute(inp, target=generated)
    assert by_generation.output_tokens == by_target.output_tokens
    torch.testing.assert_close(by_generation.token_attr, by_target.token_attr, atol=0, rtol=0)


# ---- Captum interoperability ---------------------------------------------------------------

def test_result_plots_next_to_feature_ablation(llama):
    import matplotlib

    matplotlib.use("Agg")
    inp = TextTokenInput(PROMPT, TOKENIZER)
    ours = LLMAttentionAttribution(AttentionFlow(llama), TOKENIZER).attribute(inp, target=TARGET)
    ablation = LLMAttribution(FeatureAblation(llama), TOKENIZER).attribute(inp, target=TARGET)
    assert type(ours) is type(ablation)
    assert ours.input_tokens == ablation.input_tokens and ours.output_tokens == ablation.output_tokens
    assert ours.token_attr.shape == ablation.token_attr.shape
    for plot in (ours.plot_token_attr, ours.plot_seq_attr):
        figure, axes = plot()
        labels = [label.get_text() for label in axes.get_xticklabels()]
        assert labels == ours.input_tokens
        matplotlib.pyplot.close(figure)


def test_model_left_as_found(llama):
    before = (llama.config._attn_implementation, llama.training,
              [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in llama.modules()])
    explainer = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    explainer.attribute(TextTokenInput(PROMPT, TOKENIZER), gen_args={"max_new_tokens": 2})
    after = (llama.config._attn_implementation, llama.training,
             [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in llama.modules()])
    assert after == before


# ---- errors ----------------------------------------------------------------------------------

BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=MAX_POSITIONS)


@pytest.mark.parametrize("make_model", [
    lambda: T.BertForMaskedLM(T.BertConfig(**BERT)),
    lambda: T.GPT2Model(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4)),
    lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                                    num_heads=4)),
], ids=["bert-mlm", "gpt2-base", "t5"])
def test_models_that_cannot_be_teacher_forced_are_refused(make_model):
    with pytest.raises(UnsupportedModelError):
        LLMAttentionAttribution(AttentionRollout(make_model().eval()), TOKENIZER)


def test_bidirectional_attention_is_refused_after_the_forward():
    model = T.BertLMHeadModel(T.BertConfig(**BERT)).eval()  # generates, but attends both ways
    explainer = LLMAttentionAttribution(AttentionRollout(model), TOKENIZER)
    with pytest.raises(UnsupportedModelError, match="not causal"):
        explainer.attribute(TextTokenInput(PROMPT, TOKENIZER), target=TARGET)


def test_target_past_the_maximum_length(llama):
    explainer = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    inp = TextTokenInput(PROMPT, TOKENIZER)
    with pytest.raises(InvalidInputError, match="maximum length of 24"):
        explainer.attribute(inp, target=" ".join(["the"] * 18))
    explainer.attribute(inp, target=" ".join(["the"] * 17))  # exactly the maximum is fine
    with pytest.raises(InvalidParameterError, match="max_new_tokens"):
        explainer.attribute(inp, gen_args={"max_new_tokens": 18})


@pytest.mark.parametrize("call,error,match", [
    (lambda e, i: e.attribute(i, target="are", gen_args={"max_new_tokens": 2}), InvalidParameterError, "gen_args"),
    (lambda e, i: e.attribute(i, target="are", token_index=0), InvalidParameterError, "token_index"),
    (lambda e, i: e.attribute(i, target="are", return_all_layers=True), InvalidParameterError, "return_all_layers"),
    (lambda e, i: e.attribute(i, target="are", attention_mask=torch.ones(1, 8)), InvalidParameterError,
     "attention_mask"),
    (lambda e, i: e.attribute(i, target="are", normalise=True), InvalidParameterError, "normalise"),
    (lambda e, i: e.attribute(i, target="are", include_generated="yes"), InvalidParameterError, "include_generated"),
    (lambda e, i: e.attribute("the keys", target="are"), InvalidInputTypeError, "TextTokenInput"),
    (lambda e, i: e.attribute(i, target=""), InvalidInputError, "no tokens"),
    (lambda e, i: e.attribute(i, target=torch.tensor([1.5])), InvalidInputTypeError, "integers"),
    (lambda e, i: e.attribute(i, target=3), InvalidInputTypeError, "str or a 1-D tensor"),
    (lambda e, i: e.attribute_batch([i, i], ["are"]), InvalidParameterError, "one per prompt"),
    (lambda e, i: e.attribute_batch(i, ["are"]), InvalidInputTypeError, "list"),
], ids=["gen_args-with-target", "token_index", "return_all_layers", "attention_mask", "unknown-option", "flag",
        "string-input", "empty-target", "float-target", "int-target", "targets-count", "not-a-list"])
def test_bad_arguments_get_documented_errors(llama, call, error, match):
    explainer = LLMAttentionAttribution(AttentionFlow(llama), TOKENIZER)
    with pytest.raises(error, match=match):
        call(explainer, TextTokenInput(PROMPT, TOKENIZER))


def test_unsupported_method_is_refused(llama):
    with pytest.raises(InvalidParameterError, match="LLMAttribution"):
        LLMAttentionAttribution(FeatureAblation(llama), TOKENIZER)


# ---- evaluation: the harness's LLM mode ----------------------------------------------------

class FixedScores:
    """A stand-in LLM attribution method returning chosen scores, so the expected removals are known."""

    def __init__(self, scores):
        self.scores = scores

    def attribute(self, inp, target=None):
        token_attr = self.scores(inp, target) if callable(self.scores) else self.scores
        return LLMAttributionResult(seq_attr=token_attr.sum(0), token_attr=token_attr, input_tokens=list(inp.values),
                                    output_tokens=[str(t) for t in range(token_attr.shape[0])])


def plain_log_probs(model, prompt_ids, target_ids):
    """log p(target_t | prompt, target_<t) from one unpadded forward: the independent reference."""
    ids = torch.cat([prompt_ids, target_ids])[None]
    with torch.no_grad():
        logits = model(ids).logits[0]
    log_probs = torch.log_softmax(logits[len(prompt_ids) - 1:-1].float(), -1)
    return log_probs[torch.arange(len(target_ids)), target_ids]


def test_evaluation_removal_metrics_equal_an_independent_computation(llama):
    from captum_attnflow.evaluation import LLMAttributionEvaluator

    inp = TextTokenInput(PROMPT, TOKENIZER, baselines="<unk>", skip_tokens=["<s>"])  # 6 features
    target_ids = torch.tensor(TOKENIZER.encode("are on", add_special_tokens=False))
    # Token 0 ranks features 5 > 4 > 0 > ...; token 1 ranks 1 > 2 > ...
    scores = torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.5, 0.9], [0.0, 0.8, 0.6, 0.1, 0.0, 0.0]])
    evaluator = LLMAttributionEvaluator(llama, TOKENIZER, {"fixed": FixedScores(scores)},
                                        metrics=("logprob_drop", "aopc"), aopc_bins=(0.2, 0.5),
                                        random_baseline=False, progress=False)
    result = evaluator.evaluate([inp], targets=[target_ids])

    prompt_ids = inp.inp_tensor[0]
    full = plain_log_probs(llama, prompt_ids, target_ids)

    def drop(token, removed_features):
        ids = prompt_ids.clone()
        ids[[1 + f for f in removed_features]] = TOKENIZER.convert_tokens_to_ids("<unk>")
        return float(full[token] - plain_log_probs(llama, ids, target_ids)[token])

    # Bins of 6 features: ceil(0.2·6) = 2 and ceil(0.5·6) = 3 features.
    expected_drop = [drop(0, [5]), drop(1, [1])]
    expected_aopc = [(drop(0, [5, 4]) + drop(0, [5, 4, 0])) / 2, (drop(1, [1, 2]) + drop(1, [1, 2, 3])) / 2]
    np.testing.assert_allclose(result.per_example[("logprob_drop", None, "fixed", None)], expected_drop, atol=1e-5)
    np.testing.assert_allclose(result.per_example[("aopc", None, "fixed", None)], expected_aopc, atol=1e-5)
    assert [row["n"] for row in result.rows] == [2, 2]


def test_evaluation_template_removal_uses_the_value_baseline(llama):
    from captum_attnflow.evaluation import LLMAttributionEvaluator

    inp = TextTemplateInput("{} to the {}", values=["the keys", "old cabinet"], baselines=["a dog", "house"])
    target_ids = torch.tensor(TOKENIZER.encode("are", add_special_tokens=False))
    fixed = FixedScores(torch.tensor([[0.1, 0.9]]))
    evaluator = LLMAttributionEvaluator(llama, TOKENIZER, {"fixed": fixed}, metrics=("logprob_drop",),
                                        random_baseline=False, progress=False)
    result = evaluator.evaluate([inp], targets=[target_ids])
    full = plain_log_probs(llama, torch.tensor(TOKENIZER.encode("the keys to the old cabinet")), target_ids)
    removed = plain_log_probs(llama, torch.tensor(TOKENIZER.encode("the keys to the house")), target_ids)
    np.testing.assert_allclose(result.per_example[("logprob_drop", None, "fixed", None)], [float(full - removed)],
                               atol=1e-5)


def test_evaluation_spearman_against_feature_ablation(llama):
    from captum_attnflow.evaluation import LLMAttributionEvaluator

    ablation = LLMAttribution(FeatureAblation(llama), TOKENIZER)
    inps = [TextTokenInput(prompt, TOKENIZER, skip_tokens=["<s>"]) for prompt, _ in PROMPTS[::2]]
    targets = [target for _, target in PROMPTS[::2]]
    reversed_ablation = FixedScores(lambda inp, target: -ablation.attribute(inp, target=target).token_attr)
    evaluator = LLMAttributionEvaluator(
        llama, TOKENIZER, {"ablation": ablation, "reversed": reversed_ablation,
                           "rollout": LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)},
        metrics=("spearman",), progress=False)
    result = evaluator.evaluate(inps, targets)
    reversed_values = result.per_example[("spearman", "ablation", "reversed", None)]
    assert len(reversed_values) == 4 + 4  # one value per generated token of every prompt
    np.testing.assert_allclose(reversed_values, -1.0)
    rollout_values = result.per_example[("spearman", "ablation", "rollout", None)]
    assert np.all(np.abs(rollout_values) <= 1) and np.isfinite(rollout_values).all()
    assert "random" in result.summary_markdown() and "Spearman vs ablation" in result.summary_markdown()


def test_evaluation_generates_one_target_for_every_method(llama, tmp_path):
    from captum_attnflow.evaluation import LLMAttributionEvaluator

    seen, generator = [], torch.Generator().manual_seed(0)
    recorder = FixedScores(lambda inp, target: (seen.append(target.tolist()),
                                                torch.rand(len(target), 7, generator=generator))[1])
    evaluator = LLMAttributionEvaluator(
        llama, TOKENIZER, {"ablation": LLMAttribution(FeatureAblation(llama), TOKENIZER), "recorder": recorder,
                           "flow": LLMAttentionAttribution(AttentionFlow(llama), TOKENIZER)}, progress=False)
    result = evaluator.evaluate([TextTokenInput(PROMPT, TOKENIZER)], gen_args={"max_new_tokens": 3, "do_sample": False})
    generated = llama.generate(TextTokenInput(PROMPT, TOKENIZER).inp_tensor, max_new_tokens=3, do_sample=False)[0, 7:]
    assert seen == [generated.tolist()]
    assert {row["n"] for row in result.rows if row["metric"] != "spearman"} == {len(generated)}
    result.plot(tmp_path / "llm.png")
    assert (tmp_path / "llm.png").read_bytes()[1:4] == b"PNG"
    assert len(result.per_token) == len(result.rows) * len(generated)  # one value per (metric, method, token)


def test_evaluation_refuses_mismatched_settings(llama):
    from captum_attnflow.evaluation import LLMAttributionEvaluator

    rollout = LLMAttentionAttribution(AttentionRollout(llama), TOKENIZER)
    inp = TextTokenInput(PROMPT, TOKENIZER)
    with pytest.raises(InvalidParameterError, match="reference"):
        LLMAttributionEvaluator(llama, TOKENIZER, {"rollout": rollout}, progress=False).evaluate([inp], ["are"])
    with pytest.raises(InvalidParameterError, match="metrics"):
        LLMAttributionEvaluator(llama, TOKENIZER, {"rollout": rollout}, metrics=("aopc", "infidelity"),
                                progress=False).evaluate([inp], ["are"])
    full_matrix = LLMAttributionEvaluator(llama, TOKENIZER, {"rollout": rollout}, metrics=("aopc",),
                                          method_kwargs={"rollout": {"include_generated": True}}, progress=False)
    with pytest.raises(InvalidInputError, match="include_generated=False"):
        full_matrix.evaluate([inp], ["are on"])


def test_llm_benchmark_rows():
    """benchmarks/llm_bench.py cannot rot: its quick run measures one row per model with a verdict."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "llm_bench.py"
    spec = importlib.util.spec_from_file_location("llm_bench", path)
    llm_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(llm_bench)
    threads = torch.get_num_threads()
    try:
        rows = llm_bench.llm_targets(quick=True)
    finally:
        torch.set_num_threads(threads)
    assert [row["model"] for row in rows] == list(llm_bench.MODELS)
    for row in rows:
        assert row["status"] in ("met", "NOT met") and "rollout" in row["measured"]
        assert row["rollout_ratio"] == pytest.approx(row["rollout_s"] / row["forward_s"])
        assert min(row["forward_s"], row["rollout_s"], row["flow_s"]) > 0


@pytest.mark.parametrize("option,value,match", [("layer", 99, "layer"), ("head_fusion", "median", "head_fusion"),
                                                 ("residual_weight", 2.0, "residual_weight"),
                                                 ("backend", "gpu", "backend"), ("normalize", "yes", "normalize")])
def test_bad_option_values_are_refused_before_generating(llama, monkeypatch, option, value, match):
    explainer = LLMAttentionAttribution(AttentionFlow(llama), TOKENIZER)

    def no_generation(*args, **kwargs):
        raise AssertionError("generate() ran before the options were checked")

    monkeypatch.setattr(llama, "generate", no_generation)
    with pytest.raises(InvalidParameterError, match=match):
        explainer.attribute(TextTokenInput(PROMPT, TOKENIZER), gen_args={"max_new_tokens": 2}, **{option: value})
