"""AttributionEvaluator end to end: tiny random BERT with Captum methods, toy models for exact values,
and the CSV / Markdown / PNG outputs."""

import csv
import math
from concurrent.futures import ThreadPoolExecutor

import matplotlib.image
import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, InputXGradient, LayerGradientXActivation, LayerIntegratedGradients, Saliency
from scipy.stats import spearmanr
from torch import nn

from captum_attnflow.evaluation import (
    COLUMNS,
    AttributionEvaluator,
    BlankOut,
    EmbeddingAttribution,
    EvaluationResult,
    aopc_scores,
    eligible_tokens,
    evaluate_attributions,
)
from captum_attnflow.exceptions import InvalidInputError, InvalidParameterError

PAD, UNK, CLS, SEP = 0, 1, 2, 3
WEIGHTS = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.05, -0.05, 0.15])


def linear_probs(ids, attention_mask=None):
    """p(class 1) = 0.1 + Σ WEIGHTS over real tokens; blanking token i lowers it by WEIGHTS[id_i]."""
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    p1 = 0.1 + (WEIGHTS[ids] * mask).sum(dim=1)
    return torch.stack([1 - p1, p1], dim=1)


def exact_scores(ids, target=None, additional_forward_args=None):
    """The perfectly faithful attribution of ``linear_probs`` (a plain-callable method)."""
    return WEIGHTS[ids]


@pytest.fixture(scope="module")
def toy_data():
    ids = torch.tensor([[CLS, 4, 5, 6, SEP], [CLS, 7, 8, 9, SEP], [CLS, 9, 4, SEP, PAD],
                        [CLS, 6, 5, 7, SEP], [CLS, 8, 9, SEP, PAD]])
    return ids, (ids != PAD).long(), torch.ones(5, dtype=torch.long)


class TinyBertClassifier(nn.Module):
    """2-layer random BERT plus a linear head on the [CLS] state: ``(ids, mask) -> (B, 3)`` logits."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        self.bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32))
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.bert(input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])


@pytest.fixture(scope="module")
def tiny_bert():
    pytest.importorskip("transformers")
    return TinyBertClassifier().eval()


@pytest.fixture(scope="module")
def bert_data():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 50, (5, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[3:, 6:] = 0
    ids[:, 0] = CLS
    ids[mask == 0] = PAD
    ids[:3, 7] = SEP
    ids[3:, 5] = SEP
    return ids, mask, torch.tensor([0, 1, 2, 0, 1])


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitted = 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def bert_methods(model):
    from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention

    methods = {"blank_out": BlankOut(model, unk_token_id=UNK), "rollout": AttentionRollout(model),
               "flow": AttentionFlow(model), "raw": RawAttention(model),
               "ablation": FeatureAblation(model),
               "lig": LayerIntegratedGradients(model, model.bert.embeddings),
               "saliency": EmbeddingAttribution(Saliency, model, model.bert.embeddings, token_reduction="norm"),
               "ixg": EmbeddingAttribution(InputXGradient, model, model.bert.embeddings)}
    kwargs = {"rollout": {"return_all_layers": True}, "flow": {"return_all_layers": True},
              "ablation": {"baselines": UNK}, "lig": {"n_steps": 4, "baselines": PAD}}
    return methods, kwargs


# --------------------------------------------------------------------------- tiny BERT


@pytest.mark.slow
def test_smoke_tiny_bert_with_captum_and_attention_methods(tiny_bert, bert_data):
    ids, mask, targets = bert_data
    methods, kwargs = bert_methods(tiny_bert)
    result = AttributionEvaluator(
        tiny_bert, methods, method_kwargs=kwargs, reference="blank_out", metrics=("spearman", "aopc"),
        exclude_positions=(0,), special_token_ids=(CLS, SEP), baseline_token_id=UNK, batch_size=3,
        progress=False).evaluate(ids, mask, targets)

    spearman = result.select(metric="spearman")
    assert [(row["method"], row["layer"]) for row in spearman] == [
        ("rollout", 1), ("rollout", 2), ("flow", 1), ("flow", 2), ("raw", None), ("ablation", None),
        ("lig", None), ("saliency", None), ("ixg", None)]
    assert all(row["reference"] == "blank_out" and row["n"] == 5 for row in spearman)
    assert all(-1.0 <= row["mean"] <= 1.0 and row["std"] >= 0 for row in spearman)
    aopc = result.select(metric="comprehensiveness") + result.select(metric="sufficiency")
    assert len(aopc) == 2 * (1 + 2 + 2 + 1 + 1 + 1 + 2)  # blank_out, rollout×2, flow×2, raw, ablation, lig, grads
    assert all(row["reference"] is None and row["n"] == 5 and math.isfinite(row["mean"]) for row in aopc)
    assert set(COLUMNS) == set(result.rows[0])


def test_tiny_bert_infidelity_and_sensitivity(tiny_bert, bert_data):
    from captum_attnflow import AttentionRollout

    ids, mask, targets = bert_data
    methods = {"rollout": AttentionRollout(tiny_bert), "ablation": FeatureAblation(tiny_bert),
               "ixg": EmbeddingAttribution(InputXGradient, tiny_bert, tiny_bert.bert.embeddings)}
    result = AttributionEvaluator(
        tiny_bert, methods, method_kwargs={"rollout": {"return_all_layers": True}},
        metrics=("infidelity", "sensitivity"), special_token_ids=(CLS, SEP), baseline_token_id=UNK,
        n_perturb_samples=2, batch_size=5, progress=False).evaluate(ids[:3], mask[:3], targets[:3])
    keys = [(row["metric"], row["method"], row["layer"]) for row in result.rows]
    assert keys == [("infidelity", "rollout", 1), ("infidelity", "rollout", 2), ("sensitivity", "rollout", 2),
                    ("infidelity", "ablation", None), ("sensitivity", "ablation", None),
                    ("infidelity", "ixg", None), ("sensitivity", "ixg", None)]
    assert all(row["n"] == 3 and row["mean"] >= 0 for row in result.rows)
    # Replacing a token changes the attention pattern, so rollout is not perfectly insensitive.
    assert result.select(metric="sensitivity", method="rollout")[0]["mean"] > 0


def test_executor_is_accepted_for_flow(tiny_bert, bert_data):
    from captum_attnflow import AttentionFlow

    ids, mask, targets = bert_data
    methods = {"blank_out": BlankOut(tiny_bert, UNK), "flow": AttentionFlow(tiny_bert)}
    settings = dict(reference="blank_out", metrics=("spearman",), progress=False)
    serial = evaluate_attributions(tiny_bert, methods, ids[:2], mask[:2], targets[:2], **settings)
    with CountingExecutor(max_workers=2) as executor:
        parallel = evaluate_attributions(tiny_bert, methods, ids[:2], mask[:2], targets[:2],
                                         executor=executor, **settings)
    assert executor.submitted > 0  # the flow problems really went through the executor
    assert parallel.rows == serial.rows


# --------------------------------------------------------------------------- exact values on a toy model


def test_reference_copy_correlates_perfectly_once_cls_is_excluded(toy_data):
    ids, mask, targets = toy_data
    blank = BlankOut(linear_probs, UNK, output_type="probs")

    def blank_with_loud_cls(ids, target=None, additional_forward_args=None):
        scores = blank.attribute(ids, target=target, additional_forward_args=additional_forward_args)
        scores[:, 0] = 10.0  # [CLS] ranked first, while blanking it changes nothing (|Δp| = 0)
        return scores

    methods = {"blank": blank, "copy": blank_with_loud_cls}
    settings = dict(reference="blank", metrics=("spearman",), output_type="probs", batch_size=2,
                    progress=False)
    excluded = evaluate_attributions(linear_probs, methods, ids, mask, targets, exclude_positions=(0,),
                                     special_token_ids=(SEP,), **settings)
    (row,) = excluded.rows
    assert (row["method"], row["layer"], row["n"]) == ("copy", None, 5)
    assert row["mean"] == pytest.approx(1.0) and row["std"] == pytest.approx(0.0)
    included = evaluate_attributions(linear_probs, methods, ids, mask, targets, **settings)
    # Ranked with the real tokens, the loud [CLS] (top in the copy, bottom in the reference)
    # breaks the agreement; the values equal scipy's on the unpadded tokens.
    reference = blank.attribute(ids, target=targets, additional_forward_args=(mask,))
    copy = reference.clone()
    copy[:, 0] = 10.0
    expected = [spearmanr(copy[b, mask[b].bool()], reference[b, mask[b].bool()])[0] for b in range(len(ids))]
    np.testing.assert_allclose(included.per_example[("spearman", "blank", "copy", None)], expected, atol=1e-12)
    assert included.rows[0]["mean"] < 0.5


def test_harness_aopc_equals_direct_computation_across_batches(toy_data):
    ids, mask, targets = toy_data
    scores = torch.tensor([[0.0, 0.3, 0.2, 0.1, 0.0]]).repeat(5, 1)
    methods = {"fixed": lambda ids, target=None, additional_forward_args=None: scores[: len(ids)]}
    result = evaluate_attributions(linear_probs, methods, ids, mask, targets, metrics=("aopc",),
                                   output_type="probs", exclude_positions=(0,), special_token_ids=(SEP,),
                                   baseline_token_id=UNK, batch_size=2, progress=False)
    eligible = eligible_tokens(ids, mask, exclude_positions=(0,), special_tokens_mask=(ids == SEP))
    direct = aopc_scores(linear_probs, ids, scores, targets, (mask,), baseline_token_id=UNK,
                         output_type="probs", eligible=eligible)
    for metric in ("comprehensiveness", "sufficiency"):
        # float32 model outputs: batches of 2 vs 5 round differently in the last bits
        np.testing.assert_allclose(result.per_example[(metric, None, "fixed", None)], direct[metric], atol=1e-6)
    # Example 0: ranking 4, 5, 6 (w .1, .2, .3), n = 3, k = 1,1,1,1,2 → (4·.1 + .3)/5 = .14
    assert result.per_example[("comprehensiveness", None, "fixed", None)][0] == pytest.approx(0.14)


def test_exact_attribution_has_zero_infidelity_and_a_wrong_one_does_not(toy_data):
    ids, mask, targets = toy_data
    methods = {"exact": exact_scores, "reversed": lambda ids, **kw: exact_scores(ids).flip(1)}
    result = evaluate_attributions(linear_probs, methods, ids, mask, targets, metrics=("infidelity",),
                                   output_type="probs", special_token_ids=(CLS, SEP), infidelity_normalize=False,
                                   n_perturb_samples=8, progress=False)
    assert result.select(method="exact")[0]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert result.select(method="reversed")[0]["mean"] > 1e-3


def test_runs_are_repeatable_with_a_seed(toy_data):
    ids, mask, targets = toy_data
    settings = dict(metrics=("infidelity", "sensitivity"), output_type="probs", n_perturb_samples=3,
                    progress=False, special_token_ids=(CLS, SEP))
    methods = {"reversed": lambda ids, **kw: exact_scores(ids).flip(1)}
    first = evaluate_attributions(linear_probs, methods, ids, mask, targets, seed=3, **settings)
    second = evaluate_attributions(linear_probs, methods, ids, mask, targets, seed=3, **settings)
    assert first.rows == second.rows


def test_progress_bar_can_be_switched_off(toy_data, capsys):
    ids, mask, targets = toy_data
    methods = {"exact": exact_scores}
    evaluate_attributions(linear_probs, methods, ids, mask, targets, metrics=("aopc",), progress=False)
    assert "evaluating" not in capsys.readouterr().err
    evaluate_attributions(linear_probs, methods, ids, mask, targets, metrics=("aopc",), progress=True)
    assert "evaluating" in capsys.readouterr().err


@pytest.mark.parametrize("settings, error", [
    (dict(reference="missing"), InvalidParameterError),
    (dict(metrics=("accuracy",)), InvalidParameterError),
    (dict(metrics=("spearman",)), InvalidParameterError),  # no reference
    (dict(method_kwargs={"other": {}}), InvalidParameterError),
    (dict(batch_size=0), InvalidParameterError),
    (dict(removal="drop"), InvalidParameterError),
])
def test_invalid_settings_are_refused(toy_data, settings, error):
    ids, mask, targets = toy_data
    settings = {"metrics": ("aopc",), "progress": False, **settings}
    with pytest.raises(error):
        evaluate_attributions(linear_probs, {"exact": exact_scores}, ids, mask, targets, **settings)


def test_invalid_data_and_outputs_are_refused(toy_data):
    ids, mask, targets = toy_data
    evaluator = AttributionEvaluator(linear_probs, {"exact": exact_scores}, metrics=("aopc",), progress=False)
    with pytest.raises(InvalidInputError):
        evaluator.evaluate(ids.float())
    with pytest.raises(InvalidInputError):
        evaluator.evaluate(ids, mask[:, :3])
    with pytest.raises(InvalidInputError):
        evaluator.evaluate(ids, mask, targets[:2])
    wrong_shape = {"bad": lambda ids, **kw: torch.ones(3, 2, 2)}
    for method_kwargs in (None, {"bad": {"return_all_layers": True}}):
        evaluator = AttributionEvaluator(linear_probs, wrong_shape, method_kwargs=method_kwargs,
                                         metrics=("aopc",), progress=False)
        with pytest.raises(InvalidInputError, match="bad"):
            evaluator.evaluate(ids, mask)


# --------------------------------------------------------------------------- outputs


@pytest.fixture()
def layered_result():
    values = {("spearman", "blank", "flow", layer): np.array([0.2 * layer, 0.2 * layer + 0.1, np.nan])
              for layer in range(1, 5)}  # layers numbered from 1, as the harness numbers them
    values[("spearman", "blank", "ablation", None)] = np.array([0.5, 0.7])
    values[("comprehensiveness", None, "flow", 3)] = np.array([0.01, 0.03])
    return EvaluationResult.from_values(values)


def test_rows_summarise_per_example_values(layered_result):
    row = layered_result.select(method="flow", layer=1)[0]
    assert row["mean"] == pytest.approx(0.25) and row["n"] == 2  # nan dropped
    assert row["std"] == pytest.approx(math.sqrt(0.005))
    with pytest.raises(ValueError):
        layered_result.select(colour="red")


def test_csv_round_trip(layered_result, tmp_path):
    path = tmp_path / "results.csv"
    layered_result.to_csv(path)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(layered_result.rows) == 6
    assert list(rows[0]) == list(COLUMNS)
    assert {key: rows[4][key] for key in ("metric", "reference", "method", "layer", "n")} == {
        "metric": "spearman", "reference": "blank", "method": "ablation", "layer": "", "n": "2"}
    assert float(rows[4]["mean"]) == pytest.approx(0.6)
    assert float(rows[4]["std"]) == pytest.approx(math.sqrt(0.02))
    assert rows[5]["reference"] == "" and float(rows[5]["mean"]) == pytest.approx(0.02)


def test_markdown_table(layered_result):
    lines = layered_result.to_markdown(digits=2).splitlines()
    assert lines[0] == "| metric | reference | method | layer | mean | std | n |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == "| spearman | blank | flow | 1 | 0.25 | 0.07 | 2 |"  # mean and std of 0.2, 0.3
    assert lines[6] == "| spearman | blank | ablation | - | 0.60 | 0.14 | 2 |"
    assert len(lines) == 2 + 6


def test_plot_correlations_writes_a_real_png(layered_result, tmp_path):
    path = tmp_path / "correlations.png"
    layered_result.plot_correlations(path, dpi=100)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (350, 700)  # a 7 × 3.5 inch panel with its legend at 100 dpi
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20  # lines, text, band


def test_plot_needs_correlation_rows(tmp_path):
    result = EvaluationResult.from_values({("sufficiency", None, "flow", None): np.array([0.1])})
    with pytest.raises(ValueError, match="Spearman"):
        result.plot_correlations(tmp_path / "empty.png")


def test_plot_has_one_panel_per_reference(tmp_path):
    values = {("spearman", reference, "flow", layer): np.array([0.1 * layer, 0.3])
              for reference in ("blank", "gradients") for layer in (1, 2, 3)}
    path = tmp_path / "two.png"
    EvaluationResult.from_values(values).plot_correlations(path, dpi=50)
    assert matplotlib.image.imread(path).shape[:2] == (175, 700)  # two 7 × 3.5 inch panels at 50 dpi


def test_csv_of_a_real_run_has_the_columns_and_one_row_per_result(toy_data, tmp_path):
    ids, mask, targets = toy_data
    result = evaluate_attributions(
        linear_probs, {"blank": BlankOut(linear_probs, UNK, output_type="probs"), "exact": exact_scores},
        ids, mask, targets, reference="blank", metrics=("spearman", "aopc"), output_type="probs",
        special_token_ids=(CLS, SEP), progress=False)
    path = tmp_path / "run.csv"
    result.to_csv(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS == ("metric", "reference", "method", "layer", "mean", "std", "n")
    assert [(row["metric"], row["method"]) for row in rows] == [
        ("spearman", "exact"), ("comprehensiveness", "blank"), ("sufficiency", "blank"),
        ("comprehensiveness", "exact"), ("sufficiency", "exact")]
    assert all(int(row["n"]) == 5 for row in rows)


def test_harness_spearman_equals_scipy_on_eligible_tokens_of_tiny_bert(tiny_bert, bert_data):
    # Independent recomputation: run the methods directly, drop [CLS], [SEP] and padding by hand,
    # and rank with scipy.
    from captum_attnflow import AttentionFlow

    ids, mask, targets = bert_data
    methods = {"blank_out": BlankOut(tiny_bert, UNK), "flow": AttentionFlow(tiny_bert)}
    result = evaluate_attributions(tiny_bert, methods, ids, mask, targets, reference="blank_out",
                                   method_kwargs={"flow": {"return_all_layers": True}}, metrics=("spearman",),
                                   special_token_ids=(CLS, SEP), batch_size=2, progress=False)
    blank = BlankOut(tiny_bert, UNK).attribute(ids, target=targets, additional_forward_args=(mask,))
    flow = AttentionFlow(tiny_bert).attribute(ids, additional_forward_args=(mask,), return_all_layers=True)
    keep = (mask == 1) & (ids != CLS) & (ids != SEP)
    for layer in (0, 1):
        expected = [spearmanr(flow[layer, b, keep[b]], blank[b, keep[b]])[0] for b in range(len(ids))]
        # Rows number layers from 1, as the paper; the attribution's axis indexes from 0.
        np.testing.assert_allclose(result.per_example[("spearman", "blank_out", "flow", layer + 1)], expected,
                                   atol=1e-6)


def test_embedding_methods_equal_captum_layer_methods(tiny_bert, bert_data):
    # Captum's LayerGradientXActivation is an independent implementation of the same quantity.
    ids, mask, targets = bert_data
    args = dict(target=targets, additional_forward_args=(mask,))
    embeddings = tiny_bert.bert.embeddings
    ixg = EmbeddingAttribution(InputXGradient, tiny_bert, embeddings).attribute(ids, **args)
    torch.testing.assert_close(ixg, LayerGradientXActivation(tiny_bert, embeddings).attribute(ids, **args))
    saliency = EmbeddingAttribution(Saliency, tiny_bert, embeddings).attribute(ids, **args)
    gradient = LayerGradientXActivation(tiny_bert, embeddings, multiply_by_inputs=False).attribute(ids, **args)
    torch.testing.assert_close(saliency, gradient.abs())


def test_plot_labels_the_band_and_keeps_the_legend_off_the_data(layered_result, tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from captum_attnflow.evaluation.reporting import _plot_reference

    figure = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    _plot_reference(axes, layered_result.select(metric="spearman"), "blank")
    figure.tight_layout()
    figure.canvas.draw()
    legend = axes.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [
        "flow", "ablation (one output)", "shaded: ± 1 std over examples"]
    renderer = figure.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= axes.get_window_extent(renderer).x1  # beside, not over
    assert list(axes.lines[0].get_xdata()) == [1, 2, 3, 4]  # layer numbers drawn as given (from 1)
    assert axes.get_xlabel().startswith("layer (1 = after the first)")


def test_sensitivity_keeps_a_small_internal_batch_size_valid(tiny_bert, bert_data):
    """sensitivity_max stacks perturbed copies: IG's internal_batch_size grows to one row per copy,
    silently (Captum would warn on every call) and with the same result as a large enough batch."""
    import warnings

    ids, mask, targets = bert_data
    ig = LayerIntegratedGradients(tiny_bert, tiny_bert.bert.embeddings)

    def sensitivity(internal_batch_size):
        torch.manual_seed(0)
        return AttributionEvaluator(
            tiny_bert, {"ig": ig}, method_kwargs={"ig": {"internal_batch_size": internal_batch_size, "n_steps": 4}},
            metrics=("sensitivity",), special_token_ids=(CLS, SEP), baseline_token_id=UNK,
            n_perturb_samples=3, batch_size=3, progress=False, seed=0).evaluate(ids[:3], mask[:3], targets[:3])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = sensitivity(2)
    large = sensitivity(1000)
    assert small.rows[0]["mean"] == pytest.approx(large.rows[0]["mean"], rel=1e-5)


def test_integrated_gradients_gets_the_harness_internal_batch_size(tiny_bert, bert_data):
    """Captum's IG runs all steps of all examples at once by default; the harness batches them."""
    ids, mask, targets = bert_data
    seen = []

    class RecordingIG(LayerIntegratedGradients):
        def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps=50,
                      method="gausslegendre", internal_batch_size=None, return_convergence_delta=False,
                      attribute_to_layer_input=False, grad_kwargs=None):
            seen.append(internal_batch_size)
            return super().attribute(inputs, baselines, target, additional_forward_args, n_steps, method,
                                     internal_batch_size, return_convergence_delta, attribute_to_layer_input)

    ig = RecordingIG(tiny_bert, tiny_bert.bert.embeddings)

    def evaluate(**settings):
        seen.clear()
        AttributionEvaluator(tiny_bert, {"ig": ig, "ablation": FeatureAblation(tiny_bert)}, metrics=("aopc",),
                             batch_size=3, progress=False, **settings).evaluate(ids[:3], mask[:3], targets[:3])
        return list(seen)

    assert evaluate() == [64]
    assert evaluate(internal_batch_size=None) == [None]
    assert evaluate(internal_batch_size=8, method_kwargs={"ig": {"internal_batch_size": 5}}) == [5]
    seen.clear()
    with pytest.raises(InvalidParameterError, match="internal_batch_size"):  # checked before any work
        AttributionEvaluator(tiny_bert, {"ig": ig}, metrics=("aopc",), internal_batch_size=0,
                             progress=False).evaluate(ids[:3], mask[:3], targets[:3])
    assert seen == []
