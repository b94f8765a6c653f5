"""The captum-attnflow command line: end to end on the bundled MiniLM, plus its pieces."""

import os
import random
import re
import subprocess
import sys

import matplotlib.image as mpimg
import pytest
import torch
from scipy.stats import spearmanr

from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention, cli

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
    assert err.startswith("captum-attnflow: error: cannot load --model") and str(missing) in err
    assert "no such folder" in err
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


# ---------------------------------------------------------------------------- issue 22: never refuse honest work


def flow_budget_of_one_call(monkeypatch, minilm_tokenizer, text):
    """Set the flow budget to exactly the size-only estimate of the CLI's explained-layer call.

    The engine's sampled refinement is pinned to the size-only bound, so the call for the
    explained layer fits the budget and the call for every layer (more, shallower problems)
    does not: what a long text meets with the real 60 s budget, at a test's size.
    """
    from captum_attnflow.functional import _cost, _maxflow

    seq_len = len(minilm_tokenizer(text)["input_ids"])
    budget = _cost.estimate_flow_cost(6, seq_len, 1, seq_len, residual_weight=0.5).seconds
    monkeypatch.setattr(_cost, "FLOW_TIME_BUDGET_S", budget)
    monkeypatch.setattr(_maxflow, "sample_steps_per_problem", lambda *args, **kwargs: float("inf"))
    return budget


def test_flow_over_the_budget_loses_its_layer_maps_first(minilm, minilm_tokenizer, monkeypatch):
    flow_budget_of_one_call(monkeypatch, minilm_tokenizer, TEXT)
    notes = []
    scores, maps = cli._attention_scores("flow", minilm, *encoded_text(minilm_tokenizer), notes,
                                         token_index="mean", layer=-1, head_fusion="mean", residual_weight=0.5,
                                         allow_large=False)
    assert maps is None and len(notes) == 1
    assert notes[0].startswith("flow: per-layer maps skipped, attention flow would solve")
    assert "--allow-large" in notes[0] and "allow_large=True" not in notes[0]
    ids, mask = encoded_text(minilm_tokenizer)
    expected = AttentionFlow(minilm).attribute(ids, additional_forward_args=(mask,), token_index="mean")
    torch.testing.assert_close(scores, expected)  # the Python API's call, under the same budget


def test_a_method_over_the_budget_is_skipped_and_the_others_run(minilm_path, tmp_path, monkeypatch, capsys):
    from captum_attnflow.functional import _cost

    monkeypatch.setattr(_cost, "FLOW_TIME_BUDGET_S", 0.0)  # every flow call is over it
    status = cli.main(["explain", "dogs bark", "--model", minilm_path, "--methods", "rollout,flow",
                       "--out", str(tmp_path)])
    assert status == 0
    captured = capsys.readouterr()
    assert "flow skipped (the other methods ran): attention flow would solve" in captured.err
    assert "Pass --allow-large to run it anyway" in captured.err and "per-layer maps" not in captured.err
    header = [line for line in captured.out.splitlines() if line.startswith("token")][0]
    assert "rollout" in header and "flow" not in header
    page = (tmp_path / "comparison.html").read_text(encoding="utf-8")
    assert "<b>rollout</b>" in page and "<b>flow</b>" not in page


def test_allow_large_runs_flow_over_the_budget(minilm_path, minilm_tokenizer, minilm, tmp_path, monkeypatch, capsys):
    from captum_attnflow.functional import _cost

    monkeypatch.setattr(_cost, "FLOW_TIME_BUDGET_S", 0.0)
    explanation = cli.explain([TEXT], minilm, minilm_tokenizer, methods=["flow"], allow_large=True, progress=False)
    assert explanation.notes == [] and explanation.layer_maps["flow"].shape[0] == 6
    ids, mask = encoded_text(minilm_tokenizer)
    expected = AttentionFlow(minilm).attribute(ids, additional_forward_args=(mask,), token_index="mean",
                                               allow_large=True)
    torch.testing.assert_close(explanation.attributions["flow"], expected)


def test_every_method_skipped_is_an_error(minilm, minilm_tokenizer, monkeypatch):
    from captum_attnflow.functional import _cost

    monkeypatch.setattr(_cost, "FLOW_TIME_BUDGET_S", 0.0)
    with pytest.raises(cli.CommandLineError, match="every method was skipped: flow skipped") as raised:
        cli.explain(["dogs bark"], minilm, minilm_tokenizer, methods=["flow"], progress=False)
    assert "per-layer maps" not in str(raised.value)  # one note per skipped method


@pytest.mark.slow
def test_a_200_token_text_runs_through_the_command(minilm_path, minilm_tokenizer, tmp_path, capsys):
    # Varied words: a text repeating one phrase has peaked attention, which the budget rightly
    # prices higher (the Python API refuses flow with token_index="mean" on it too).
    words = "the keys to cabinet are on table dogs bark at night while cats sleep in warm sun near old window".split()
    draw = random.Random(0)
    text = " ".join(draw.choice(words) for _ in range(198))
    assert len(minilm_tokenizer(text)["input_ids"]) == 200
    status = cli.main(["explain", text, "--model", minilm_path, "--methods", "rollout,flow", "--out", str(tmp_path)])
    assert status == 0
    captured = capsys.readouterr()
    assert "flow skipped" not in captured.err  # the explained layer runs under the API's budget
    header = [line for line in captured.out.splitlines() if line.startswith("token")][0]
    assert "flow" in header


def encoded_text(tokenizer, text=TEXT):
    encoded = tokenizer([text], return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


@pytest.mark.parametrize("value, expected", [("3", 3), ("-1", -1), ("mean", "mean"), ("last", "last")])
def test_token_index_option_takes_the_apis_values(value, expected):
    args = cli.build_parser().parse_args(["explain", TEXT, "--token-index", value])
    assert args.token_index == expected


@pytest.mark.parametrize("value, message", [("all", "Python API"), ("middle", "expected an int, 'mean' or 'last'")])
def test_token_index_option_refuses_what_the_table_cannot_show(capsys, value, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", TEXT, "--token-index", value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("token_index", [2, "last", -1])
def test_token_index_is_what_the_attention_methods_explain(minilm, minilm_tokenizer, token_index):
    explanation = cli.explain([TEXT], minilm, minilm_tokenizer, methods=["rollout", "raw"], token_index=token_index,
                              progress=False)
    assert explanation.token_index == token_index
    ids, mask = encoded_text(minilm_tokenizer)
    for name, method in (("rollout", AttentionRollout), ("raw", RawAttention)):
        expected = method(minilm).attribute(ids, additional_forward_args=(mask,), token_index=token_index)
        torch.testing.assert_close(explanation.attributions[name], expected)


def test_an_int_token_index_on_padding_is_a_clear_error(minilm, minilm_tokenizer):
    with pytest.raises(cli.CommandLineError, match=r"--token-index 5 is not a token of text 1 \(4 tokens, padded "
                                                   r"to 11.*pass 0 to 3, or last"):
        cli.explain([TEXT, "dogs bark"], minilm, minilm_tokenizer, methods=["rollout"], token_index=5,
                    progress=False)


def test_an_unknown_model_fails_fast_offline(tmp_path, capsys, monkeypatch):
    import socket

    attempts = []

    def no_network(self, address):
        attempts.append(address)
        raise OSError("the test forbids the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    status = cli.main(["explain", "dogs bark", "--model", "no-such-org/no-such-model", "--out", str(tmp_path)])
    assert status == 2 and attempts == []  # offline: no hub request, so no retries to wait for
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the command is offline (add --online" in err
    assert "local folder" in err and "captum-attnflow[model]" in err
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ  # restored after


@pytest.mark.parametrize("online", [False, True])
def test_the_command_is_offline_unless_online(tmp_path, monkeypatch, online):
    seen = {}

    def load_model(path, *, online):
        seen.update(online=online, variables=[os.environ.get(name) for name in cli.OFFLINE_VARIABLES])
        raise cli.CommandLineError("stop here")

    monkeypatch.setattr(cli, "load_model", load_model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert cli.main(["explain", "dogs bark", "--out", str(tmp_path)] + (["--online"] if online else [])) == 2
    assert seen == {"online": online, "variables": ["0", None] if online else ["1", "1"]}
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ


@pytest.fixture(scope="module")
def tiny_decoder_path(tmp_path_factory, minilm_tokenizer):
    """A 2-layer random GPT-2 (a decoder; GPT2Model.forward's second parameter is the cache) and a tokenizer."""
    import transformers as T

    path = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    config = T.GPT2Config(vocab_size=len(minilm_tokenizer), n_embd=8, n_layer=2, n_head=2, n_positions=32,
                          bos_token_id=minilm_tokenizer.cls_token_id, eos_token_id=minilm_tokenizer.sep_token_id)
    T.GPT2Model(config).save_pretrained(path)
    minilm_tokenizer.save_pretrained(path)
    return str(path)


def test_a_decoder_is_explained_directly(tiny_decoder_path, tmp_path, capsys):
    status = cli.main(["explain", "dogs bark", "a cat", "--model", tiny_decoder_path, "--pooling", "last",
                       "--methods", "raw,rollout,flow,ablation", "--out", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    assert "lambda" not in capsys.readouterr().err
    model, tokenizer = cli.load_model(tiny_decoder_path)
    explanation = cli.explain(["dogs bark", "a cat"], model, tokenizer, pooling="last", methods=["flow"],
                              progress=False)
    ids, mask = (tokenizer(["dogs bark", "a cat"], return_tensors="pt", padding=True)[key]
                 for key in ("input_ids", "attention_mask"))
    expected = AttentionFlow(cli.model_forward(model), model=model).attribute(
        ids, additional_forward_args=(mask,), token_index="last")
    torch.testing.assert_close(explanation.attributions["flow"], expected)
    # Causal: the last real token's flow reaches every real token; nothing reaches padding.
    assert torch.all(explanation.attributions["flow"][mask.bool()] > 0)
    assert torch.all(explanation.attributions["flow"][~mask.bool()] == 0)


def test_cls_pooling_of_a_decoder_is_refused_with_advice(tiny_decoder_path, tmp_path, capsys):
    status = cli.main(["explain", "dogs bark", "--model", tiny_decoder_path, "--pooling", "cls",
                       "--methods", "rollout", "--out", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "attends causally (a decoder)" in err and "--pooling last" in err and "lambda" not in err


def test_an_encoder_is_not_taken_for_a_decoder(minilm, minilm_tokenizer):
    ids, mask = encoded_text(minilm_tokenizer)
    assert not cli._attends_causally(minilm, ids, mask)


@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_text_is_a_clear_error(minilm_path, tmp_path, capsys, text):
    status = cli.main(["explain", "dogs bark", text, "--model", minilm_path, "--methods", "rollout",
                       "--out", str(tmp_path)])
    assert status == 2
    assert messages_of(capsys.readouterr().err) == [
        f"captum-attnflow: error: text 1 ({text!r}) has no tokens besides the special ones: nothing to explain; "
        "pass a text with at least one word"]


@pytest.mark.parametrize("max_length, message", [
    (1, "--max-length 1 leaves no room for a word: the tokenizer adds 2 special token(s) to every text; "
        "pass at least 3"),
    (2, "--max-length 2 leaves no room for a word"),
    (513, "--max-length 513: the model takes at most 512 tokens"),
])
def test_max_length_is_validated(minilm_path, tmp_path, capsys, max_length, message):
    status = cli.main(["explain", "dogs bark", "--model", minilm_path, "--methods", "rollout",
                       "--max-length", str(max_length), "--out", str(tmp_path)])
    assert status == 2
    assert message in capsys.readouterr().err


def test_max_length_reports_the_tokens_really_explained(minilm, minilm_tokenizer):
    explanation = cli.explain(["dogs bark loudly"], minilm, minilm_tokenizer, methods=["rollout"], max_length=3,
                              progress=False)
    assert explanation.tokens == [["[CLS]", "dogs", "[SEP]"]]
    assert explanation.attributions["rollout"].shape == (1, 3)
    assert explanation.notes == ["text 0 has 5 tokens; explained are its first 3 (the model's maximum or "
                                 "--max-length)"]


def test_last_pooling_takes_each_texts_last_real_token():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    right_padded = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left_padded = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert cli.pool(hidden, right_padded, "last")[:, 0].tolist() == [2.0, 7.0]
    assert cli.pool(hidden, left_padded, "last")[:, 0].tolist() == [3.0, 7.0]
