"""The LLM targets of ``make bench``: explaining generated text, timed side by side.

``token_attr`` of ``LLMAttentionAttribution`` for 32 generated tokens after a 64-token prompt
(teacher forcing: one forward pass over the 96 tokens gives all 32 rows) against one plain
forward pass of the model over the same 96 tokens, as loaded (SDPA attention). Both timings
are taken in the same run, in alternating blocks, so the ratio travels between machines.

:func:`llm_targets` returns the measured rows; ``python benchmarks/llm_bench.py [--quick]``
prints them as a Markdown table.
"""

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from captum.attr import TextTokenInput  # noqa: E402

from captum_attnflow import AttentionFlow, AttentionRollout, LLMAttentionAttribution  # noqa: E402
from captum_attnflow.toy import word_level_tokenizer  # noqa: E402

#: A small random Llama with a real model's proportions (hidden 256, 4 layers, 8 heads with 4
#: key/value heads, SwiGLU 688, vocabulary 32,000 as Llama 2's), and the tutorial's word-level
#: GPT-2 (3 layers, hidden 96, vocabulary 5,004), randomly initialised: timing does not depend
#: on the weights (only flow's max-flow work does, a little).
MODELS = {
    "tiny random Llama": dict(family="llama", vocab_size=32000, hidden_size=256, num_hidden_layers=4,
                              num_attention_heads=8, num_key_value_heads=4, intermediate_size=688),
    "tutorial-sized GPT-2": dict(family="gpt2", vocab_size=5004, n_embd=96, n_layer=3, n_head=4),
}
GOAL = 1.3


def build_model(family: str, **config):
    import transformers as T

    torch.manual_seed(0)
    if family == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(max_position_embeddings=128, **config)).eval()
    return T.GPT2LMHeadModel(T.GPT2Config(n_positions=128, **config)).eval()


def _seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def side_by_side(functions: Dict[str, Callable[[], object]], rounds: int) -> Dict[str, float]:
    """Median seconds of each function over ``rounds`` rounds of one call each, after a warm-up call.

    Calls alternate one by one, so bursts of other work on a shared machine hit every function
    alike (blocks of several calls let one burst fall on a single function).
    """
    for function in functions.values():
        function()
    times: Dict[str, List[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            times[name].append(_seconds(function))
    return {name: statistics.median(values) for name, values in times.items()}


def token_attr_vs_forward(model_name: str, prompt_len: int = 64, target_len: int = 32, rounds: int = 25,
                          settle_s: float = 1.0) -> Dict:
    """Seconds of one plain forward over prompt + target, and of rollout / flow ``token_attr``."""
    config = dict(MODELS[model_name])
    model = build_model(**config)
    vocab_size = model.config.vocab_size
    tokenizer = word_level_tokenizer([f"w{i}" for i in range(vocab_size - 4)])
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(4, vocab_size, (prompt_len - 1 + target_len,), generator=generator)
    prompt = " ".join(tokenizer.convert_ids_to_tokens(words[:prompt_len - 1].tolist()))  # + <s>: 64 tokens
    inp = TextTokenInput(prompt, tokenizer)
    target = words[prompt_len - 1:]
    sequence = torch.cat([inp.inp_tensor[0], target])[None]
    assert sequence.shape[1] == prompt_len + target_len
    rollout = LLMAttentionAttribution(AttentionRollout(model), tokenizer)
    flow = LLMAttentionAttribution(AttentionFlow(model), tokenizer)

    def forward():
        with torch.no_grad():
            model(sequence)

    # Flow is timed after the rollout/forward rounds: a flow call (numba's OpenMP threading layer)
    # leaves torch's OpenMP thread count at numba's and its worker threads spinning for a moment,
    # which slows whatever torch runs next; the thread count is put back and the threads let park.
    threads = torch.get_num_threads()
    timings = side_by_side({"forward": forward, "rollout": lambda: rollout.attribute(inp, target=target)}, rounds)
    timings.update(side_by_side({"flow": lambda: flow.attribute(inp, target=target)}, max(2, rounds // 5)))
    torch.set_num_threads(threads)
    time.sleep(settle_s)
    shape = rollout.attribute(inp, target=target).token_attr.shape
    assert tuple(shape) == (target_len, prompt_len), shape
    return dict(model=model_name, prompt_len=prompt_len, target_len=target_len, forward_s=timings["forward"],
                rollout_s=timings["rollout"], flow_s=timings["flow"],
                rollout_ratio=timings["rollout"] / timings["forward"], flow_ratio=timings["flow"] / timings["forward"])


def llm_targets(quick: bool = False, threads: int = 1) -> List[Dict]:
    """The measured LLM rows of ``make bench``: one per model, each with its verdict.

    ``threads`` torch threads (default 1: on a small machine shared with other work, two
    threads per operation wait on each other and make both timings noisy and slow).

    Each row: ``target`` (what is measured), ``measured`` (the ratios and times, formatted),
    ``goal``, ``status`` (``"met"`` / ``"NOT met"`` for rollout; flow is reported beside it),
    and the raw numbers (``forward_s``, ``rollout_s``, ``flow_s``, ``rollout_ratio``,
    ``flow_ratio``).
    """
    torch.set_num_threads(threads)
    rows = []
    for model_name in MODELS:
        lengths = dict(prompt_len=16, target_len=8, rounds=2, settle_s=0.0) if quick else {}
        result = token_attr_vs_forward(model_name, **lengths)
        result.update(
            target=(f"`LLMAttentionAttribution` `token_attr`, {result['target_len']} generated tokens after a "
                    f"{result['prompt_len']}-token prompt / one plain forward over the "
                    f"{result['prompt_len'] + result['target_len']} tokens ({model_name})"),
            measured=(f"rollout **{result['rollout_ratio']:.2f}×** ({result['rollout_s'] * 1e3:.1f} ms vs "
                      f"{result['forward_s'] * 1e3:.1f} ms); flow {result['flow_ratio']:.2f}× "
                      f"({result['flow_s'] * 1e3:.1f} ms)"),
            goal=f"rollout ≤ {GOAL}×; flow reported",
            status="met" if result["rollout_ratio"] <= GOAL else "NOT met")
        rows.append(result)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args(argv)
    print("| target | measured | goal | status |\n|---|---|---|---|")
    for row in llm_targets(args.quick, args.threads):
        print(f"| {row['target']} | {row['measured']} | {row['goal']} | {row['status']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
