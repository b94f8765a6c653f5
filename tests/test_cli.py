"""The captum-attnflow command line: end to end on the bundled MiniLM, plus its pieces."""

import subprocess
import sys

import matplotlib.image as mpimg
import pytest
import torch

from captum_attnflow import cli

TEXT = "the keys to the cabinet are on the table"


def test_help_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "captum_attnflow.cli", "explain", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--model", "--methods", "--out", "--layer", "--head-fusion", "--query", "examples:"):
        assert option in result.stdout
    top = subprocess.run([sys.executable, "-m", "captum_attnflow.cli", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert top.returncode == 0 and "explain" in top.stdout and "Abnar" in top.stdout


def test_bad_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", TEXT, "--methods", "rollout,saliency"])
    assert exit_info.value.code == 2
    assert "saliency" in capsys.readouterr().err


def test_library_errors_become_exit_status_2(minilm_path, tmp_path, capsys):
    status = cli.main(["explain", "dogs bark", "--model", minilm_path, "--methods", "rollout",
                       "--layer", "10", "--out", str(tmp_path)])
    assert status == 2
    assert "layer=10" in capsys.readouterr().err


@pytest.mark.slow
def test_explain_end_to_end_writes_html_and_figures(minilm_path, tmp_path, capsys):
    out = tmp_path / "explained"
    status = cli.main(["explain", TEXT, "dogs bark", "--model", minilm_path, "--out", str(out),
                       "--ig-steps", "4", "--layer", "-2"])
    assert status == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "[CLS] norm" in printed

    page = (out / "comparison.html").read_text(encoding="utf-8")
    for method in cli.METHODS:
        assert page.count(f"<b>{method}</b>") == 2  # one row per text
    for token in TEXT.split() + ["dogs", "bark", "[CLS]", "[SEP]"]:
        assert f" {token}" in page
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
    scores = cli.feature_ablation(forward, minilm_tokenizer, ids, mask)
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


def test_query_output_is_cosine_similarity(minilm, minilm_tokenizer):
    query = cli.embed_query(minilm, minilm_tokenizer, TEXT)
    encoded = minilm_tokenizer([TEXT], return_tensors="pt")
    value = cli.scalar_output(minilm, query)(encoded["input_ids"], encoded["attention_mask"])
    assert value.item() == pytest.approx(1.0, abs=1e-5)  # a text is most similar to itself


def test_explain_attention_only_uses_mean_token_with_query(minilm, minilm_tokenizer):
    from captum_attnflow import AttentionRollout

    explanation = cli.explain([TEXT], minilm, minilm_tokenizer, methods=["rollout"], query="a table",
                              progress=False)
    assert set(explanation.attributions) == {"rollout"}
    encoded = minilm_tokenizer([TEXT], return_tensors="pt")
    expected = AttentionRollout(minilm).attribute(encoded["input_ids"], additional_forward_args=(
        encoded["attention_mask"],), token_index="mean")
    torch.testing.assert_close(explanation.attributions["rollout"], expected)
    assert explanation.layer_maps["rollout"].shape[0] == 6
