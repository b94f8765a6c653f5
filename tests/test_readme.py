"""The README's code runs exactly as written, and what it claims holds.

Every ```python block is executed in order in one namespace, like a notebook session: the
first example loads the bundled MiniLM and defines ``model``, ``tokenizer``, ``input_ids`` and
``attention_mask`` for the blocks after it. Only a block that names an object the README
leaves to the user (the evaluation example's ``classifier`` ...) gets a tiny stand-in,
injected just before it runs (:data:`STAND_INS`). Shell blocks are checked against the
Makefile and the command line's parser.
"""

import os
import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON_BLOCKS = [code for language, code in BLOCKS if language == "python"]
SHELL_BLOCKS = [code for language, code in BLOCKS if language in ("bash", "sh", "console")]


def evaluation_stand_ins() -> dict:
    """A tiny BERT classifier and a padded batch for the evaluation example."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32)).eval()
    head = torch.nn.Linear(16, 2)

    def classifier(input_ids, attention_mask):
        return head(encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 40, (3, 7), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 5:] = 0
    input_ids[2, 5:], input_ids[2, 4] = 0, 3  # padding after the last example's [SEP]
    return dict(classifier=classifier, encoder=encoder, unk_id=1, cls_id=2, sep_id=3, input_ids=input_ids,
                attention_mask=attention_mask, targets=torch.tensor([0, 1, 0]))


#: Objects the README leaves to the user, by a line that identifies the block naming them.
STAND_INS = {"evaluator = AttributionEvaluator(": evaluation_stand_ins}


def block_id(code: str) -> str:
    first = next(line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from")))
    return first[:40]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The namespace the blocks share; files the blocks write land in a temporary folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = tmp_path_factory.mktemp("readme")
    previous = os.getcwd()
    os.chdir(folder)
    yield {"__name__": "readme", "__ran__": set()}, folder
    os.chdir(previous)


def test_the_readme_has_its_examples():
    assert len(PYTHON_BLOCKS) >= 4 and all(any(marker in code for code in PYTHON_BLOCKS) for marker in STAND_INS)


def slow_if_heavy(index: int):
    """Blocks that run IG or the evaluation harness take tens of seconds: they belong to the slow group."""
    heavy = any(marker in PYTHON_BLOCKS[index] for marker in ("LayerIntegratedGradients(", "AttributionEvaluator("))
    return pytest.param(index, marks=pytest.mark.slow, id=block_id(PYTHON_BLOCKS[index])) if heavy else pytest.param(
        index, id=block_id(PYTHON_BLOCKS[index]))


@pytest.mark.parametrize("index", [slow_if_heavy(index) for index in range(len(PYTHON_BLOCKS))])
def test_python_block_runs_as_written(session, index, capsys):
    namespace, _ = session
    for earlier in range(index):  # blocks build on the ones above (when run alone, e.g. `-m slow`)
        if earlier not in namespace["__ran__"]:
            run_block(namespace, earlier)
    capsys.readouterr()
    run_block(namespace, index)
    check_block_results(PYTHON_BLOCKS[index], namespace, capsys.readouterr().out)


def run_block(namespace: dict, index: int) -> None:
    code = PYTHON_BLOCKS[index]
    for marker, make in STAND_INS.items():
        if marker in code:
            namespace.update(make())
    namespace["__ran__"].add(index)
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)


def check_block_results(code: str, namespace: dict, printed: str) -> None:
    """What each block says it gives, checked on what it gave."""
    batch, seq_len = namespace["input_ids"].shape
    if "flow = AttentionFlow(model)" in code:  # the first example
        assert (batch, seq_len) == (2, 11)
        assert printed.startswith("(2, 11)") and tuple(namespace["flow"].shape) == (2, 11)
        torch.testing.assert_close(namespace["flow"].sum(dim=1), torch.ones(2))
        assert torch.all(namespace["flow"][namespace["attention_mask"] == 0] == 0)
    if "capture_attention(" in code:  # the functional API on a normally loaded (SDPA) model
        assert namespace["model"].config._attn_implementation == "sdpa"  # as loaded, and restored
        assert tuple(namespace["attentions"].shape) == (6, batch, 12, seq_len, seq_len)
        assert tuple(namespace["rollout"].shape) == (6, batch, seq_len, seq_len)
        from captum_attnflow import AttentionFlow

        expected = AttentionFlow(namespace["model"]).attribute(
            namespace["input_ids"], additional_forward_args=(namespace["attention_mask"],), token_index="mean")
        torch.testing.assert_close(namespace["flow"], expected)
    if "for name, (method, options) in methods.items()" in code:  # the side-by-side loop
        assert list(namespace["scores"]) == ["raw", "rollout", "flow", "ig", "ablation"]
        for name, scores in namespace["scores"].items():
            assert tuple(scores.shape) == (batch, seq_len), name
            assert f"{name:>8}: ({batch}, {seq_len})" in printed
    if "LLMAttentionAttribution(AttentionRollout(lm)" in code:  # explaining generated text
        from captum.attr import LLMAttributionResult

        for name in ("result", "flow_result", "ablation"):
            assert isinstance(namespace[name], LLMAttributionResult), name
            assert tuple(namespace[name].token_attr.shape) == (1, 5), name
        assert printed.strip() == "torch.Size([1, 5])"
    if "evaluator = AttributionEvaluator(" in code:
        assert Path("results.csv").read_text().startswith("metric,reference,method,layer")
        assert Path("layers.png").read_bytes()[1:4] == b"PNG"
        assert "| spearman | blank-out | flow |" in printed


def test_shell_commands_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    from captum_attnflow import cli

    commands = [line.split("#")[0].strip() for block in SHELL_BLOCKS for line in block.splitlines()]
    commands = [command for command in commands if command]
    assert commands, "the README shows no shell commands"
    for command in commands:
        words = shlex.split(command)
        if words[0] == "make":
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target!r}"
        elif words[0] == "captum-attnflow":
            cli.build_parser().parse_args(words[1:])  # exits with status 2 on an unknown option
        else:
            pytest.fail(f"a README shell command this test does not know how to check: {command}")
    for target in re.findall(r"`make ([a-z-]+)", README):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"README names `make {target}`"


def test_flow_from_cls_saturates_as_the_readme_explains(minilm, minilm_tokenizer):
    """Raw flow into each word = a common C_l + the first layer's edge [CLS] -> word."""
    from captum_attnflow import capture_attention
    from captum_attnflow.functional import attention_flow, transition_matrices

    encoded = minilm_tokenizer(["the keys to the cabinet are on the table"], return_tensors="pt")
    attentions = capture_attention(minilm, encoded["input_ids"], (encoded["attention_mask"],),
                                   head_fusion=None).attentions
    raw = attention_flow(attentions, token_index=0, return_all_layers=True, normalize=False)[:, 0].double()
    first_edge = transition_matrices(attentions)[0, 0, 0].double()
    words = slice(1, -1)
    common = raw[:, words] - first_edge[words]  # (L, words): the same C_l for every word
    torch.testing.assert_close(common, common[:, :1].expand_as(common), atol=1e-6, rtol=0)  # float32 attention
    levels = common[:, 0]
    assert levels[0].abs() < 1e-6 and torch.all(levels[1:] > levels[:-1])  # C_1 = 0, growing with depth
    stated = re.search(r"`C_l` is ([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+) and ([\d.]+) at layers 2–6",
                       " ".join(README.split()))
    assert stated, "the README no longer quotes C_l"
    assert [float(value) for value in stated.groups()] == pytest.approx(levels[1:].tolist(), abs=0.006)
    ranks = raw[:, words].argsort(dim=1)
    assert torch.equal(ranks, ranks[:1].expand_as(ranks))  # the same ranking after every layer


def test_the_flow_budget_paragraph_quotes_the_cost_model():
    from captum_attnflow.functional import estimate_flow_cost

    text = " ".join(README.split())
    stated = re.search(r"one token of a 12-layer, 128-token input is estimated at ([\d.]+) s and every token "
                       r"of a 12-layer, 512-token input at ([\d,]+) s", text)
    assert stated, "the README no longer quotes the size-only estimates"
    one_token = estimate_flow_cost(12, 128, 1, 1, residual_weight=0.5).seconds
    every_token = estimate_flow_cost(12, 512, 1, 512, residual_weight=0.5).seconds
    assert float(stated.group(1)) == pytest.approx(one_token, abs=0.05)
    assert float(stated.group(2).replace(",", "")) == pytest.approx(every_token, rel=0.01)
