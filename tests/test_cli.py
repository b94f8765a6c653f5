"""The captum-attnflow command line: end to end on the bundled MiniLM, plus its pieces."""

import re
import subprocess
import sys

import matplotlib.image as mpimg
import pytest
import torch
from scipy.stats import spearmanr

from captum_attnflow import AttentionRollout, cli

TEXT = "the keys to the cabinet are on the table"


def messages_of(stderr: str) -> list:
    """The command's own lines on stderr (transformers may add a progress bar of its own)."""
    assert "Traceback" not in stderr
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("captum-attnflow:")]


@pytest.mark.slow
def test_help_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "captum_attnflow.cli", "explain", "--help"],
                            capture_output=True, text=True, timeout=600)  # a hang guard, not a budget
    assert result.returncode == 0, result.stderr
    for option in ("--model", "--methods", "--out", "--layer", "--head-fusion", "--query", "--pooling",
                   "--max-length", "examples:"):
        assert option in result.stdout
    for action in cli.build_parser()._subparsers._group_actions[0].choices["explain"]._actions:
        assert action.help, f"{action.dest} has no help text"


def test_top_level_help_names_the_command_and_the_paper(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "explain" in printed and "Abnar" in printed


@pytest.mark.parametrize("arguments, message", [
    (["--methods", "rollout,saliency"], "saliency"),
    (["--layer", "0"], "numbered from 1"),
    (["--ig-steps", "0"], "positive"),
    (["--pooling", "max"], "invalid choice"),
])
def test_bad_options_are_usage_errors(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", TEXT, *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_model_path_is_one_line_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert cli.main(["explain", "dogs bark", "--model", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("captum-attnflow: error: cannot load a model") and str(missing) in err
    (tmp_path / "empty").mkdir()  # a folder without a model in it
    assert cli.main(["explain", "dogs bark", "--model", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "cannot load" in err


def test_a_layer_beyond_the_model_is_reported_in_the_options_numbering(minilm_path, tmp_path, capsys):
    status = cli.main(["explain", "dogs bark", "--model", minilm_path, "--methods", "rollout",
                       "--layer", "7", "--out", str(tmp_path)])
    assert status == 2
    messages = messages_of(capsys.readouterr().err)
    assert messages == ["captum-attnflow: error: --layer 7: the model has 6 layers; pass 1 to 6, "
                        "or -1 to -6 counting from the last"]


def test_cuts_and_skipped_graphs_are_reported(minilm_path, tmp_path, capsys):
    long_text = "the keys to the old cabinet in the hall are on the kitchen table by the window"
    status = cli.main(["explain", long_text, "dogs bark", "--model", minilm_path, "--methods", "rollout",
                       "--max-length", "18", "--out", str(tmp_path)])
    assert status == 0
    err = capsys.readouterr().err
    assert re.search(r"note: text 0 has 19 tokens; explained are its first 18", err)
    assert "note: text 0: attention graph not drawn (18 tokens" in err
    assert "text 1" not in err  # the short text is neither cut nor skipped
    assert (tmp_path / "attention_graph_1.png").exists() and not (tmp_path / "attention_graph_0.png").exists()


def test_the_default_length_limit_is_the_models(minilm, minilm_tokenizer):
    assert cli.model_max_length(minilm, minilm_tokenizer) == 512
    encoded, notes = cli.encode(["word " * 600], minilm_tokenizer, 512)
    assert encoded["input_ids"].shape == (1, 512) and notes == [
        "text 0 has 602 tokens; explained are its first 512 (the model's maximum or --max-length)"]


@pytest.mark.slow
def test_explain_end_to_end_writes_html_and_figures(minilm_path, tmp_path, capsys):
    out = tmp_path / "explained"
    status = cli.main(["explain", TEXT, "dogs bark", "--model", minilm_path, "--out", str(out),
                       "--ig-steps", "4", "--layer", "5", "--query", "furniture"])
    assert status == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "cosine similarity to 'furniture'" in printed
    assert printed.count("each column divided by its largest |score|") == 2

    page = (out / "comparison.html").read_text(encoding="utf-8")
    for method in cli.METHODS:
        assert page.count(f"<b>{cli.METHOD_TITLES[method]}</b>") == 2  # one row per text
    for token in TEXT.split() + ["dogs", "bark", "[CLS]", "[SEP]"]:
        assert f">{token}</mark>" in page
    assert "cosine similarity to &#x27;furniture&#x27;" in page and "after layer 5" in page
    for name in ("methods_0", "layer_maps_0", "attention_graph_0", "methods_1", "layer_maps_1",
                 "attention_graph_1"):
        pixels = mpimg.imread(str(out / f"{name}.png"))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels[..., :3].var() > 1e-4
        assert str(out / f"{name}.png") in printed


@pytest.fixture(scope="module")
def encoded(minilm_tokenizer):
    return minilm_tokenizer([TEXT, "dogs bark"], return_tensors="pt", padding=True)


def test_ablation_scores_are_output_drops(minilm, minilm_tokenizer, encoded):
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    forward = cli.scalar_output(minilm, None)
    scores = cli.feature_ablation(forward, minilm_tokenizer, ids, mask, progress=False)
    assert scores.shape == ids.shape
    masked = ids.clone()
    masked[0, 3] = minilm_tokenizer.mask_token_id
    with torch.no_grad():
        expected = forward(ids, mask)[0] - forward(masked, mask)[0]
    assert scores[0, 3].item() == pytest.approx(expected.item(), abs=1e-4)
    special_or_pad = cli._special_tokens(minilm_tokenizer, ids) | ~mask.bool()
    assert torch.all(scores[special_or_pad] == 0)


def test_integrated_gradients_completeness(minilm, minilm_tokenizer, encoded):
    ids, mask = encoded["input_ids"][:1], encoded["attention_mask"][:1]
    query = cli.embed_query(minilm, minilm_tokenizer, "furniture")
    forward = cli.scalar_output(minilm, query)
    scores = cli.integrated_gradients(forward, minilm, minilm_tokenizer, ids, mask, steps=48)
    baseline = torch.where(cli._special_tokens(minilm_tokenizer, ids), ids,
                           torch.full_like(ids, minilm_tokenizer.pad_token_id))
    with torch.no_grad():
        gap = (forward(ids, mask) - forward(baseline, mask)).item()
    assert scores.sum().item() == pytest.approx(gap, rel=0.1, abs=0.02)


def test_outputs_follow_the_pooling(minilm, minilm_tokenizer):
    query = cli.embed_query(minilm, minilm_tokenizer, TEXT)
    encoded = minilm_tokenizer([TEXT], return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    value = cli.scalar_output(minilm, query)(ids, mask)
    assert value.item() == pytest.approx(1.0, abs=1e-5)  # a text is most similar to itself
    with torch.no_grad():
        hidden = minilm(input_ids=ids, attention_mask=mask).last_hidden_state
    norm_cls = cli.scalar_output(minilm, None, pooling="cls")(ids, mask)
    torch.testing.assert_close(norm_cls, hidden[:, 0].norm(dim=-1))
    norm_mean = cli.scalar_output(minilm, None, pooling="mean")(ids, mask)
    torch.testing.assert_close(norm_mean, hidden.mean(dim=1).norm(dim=-1))


@pytest.mark.parametrize("pooling, token_index", [("mean", "mean"), ("cls", 0)])
def test_attention_methods_explain_the_pooled_tokens(minilm, minilm_tokenizer, pooling, token_index):
    explanation = cli.explain([TEXT], minilm, minilm_tokenizer, methods=["rollout"], query="a table",
                              pooling=pooling, progress=False)
    assert set(explanation.attributions) == {"rollout"} and explanation.token_index == token_index
    encoded = minilm_tokenizer([TEXT], return_tensors="pt")
    expected = AttentionRollout(minilm).attribute(encoded["input_ids"], additional_forward_args=(
        encoded["attention_mask"],), token_index=token_index)
    torch.testing.assert_close(explanation.attributions["rollout"], expected)
    assert explanation.layer_maps["rollout"].shape[0] == 6


def test_table_and_correlations_leave_special_tokens_out():
    tokens = [["[CLS]", "a", "b", "c", "d", "[SEP]"]]
    scores = {"rollout": torch.tensor([[0.5, 0.1, 0.2, 0.05, 0.1, 0.05]]),
              "ablation": torch.tensor([[0.0, -0.3, 0.1, 0.2, 0.4, 0.0]])}
    explanation = cli.Explanation(tokens, scores, {}, torch.tensor([0.7]), "norm", torch.zeros(1, 6),
                                  special=[[True, False, False, False, False, True]])
    correlations = cli.rank_correlations(explanation, 0)
    words = slice(1, 5)
    assert correlations["rollout"] == pytest.approx(
        spearmanr(scores["rollout"][0, words].abs(), scores["ablation"][0, words].abs())[0])
    assert correlations["ablation"] == pytest.approx(1.0)
    table = cli.format_table(explanation, 0)
    assert table.startswith("each column divided by its largest |score|")
    assert "1.000" in table.splitlines()[3]  # [CLS] is rollout's top token: 0.5 / 0.5
    assert f"{correlations['rollout']:.2f}" in table.splitlines()[-2]
