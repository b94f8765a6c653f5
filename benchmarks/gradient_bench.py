"""The gradient-weighted rollout target of ``make bench`` (issue 20), timed side by side.

``AttentionRollout.attribute(..., edge_weights="gradient")`` (Chefer et al.'s rule: one eager
forward pass, one backward pass to the attention weights, the rollout of the explained rows)
against a plain forward + backward of the same model as loaded (SDPA attention): the gradient
of the same target with respect to the input embeddings, what a Captum gradient method such as
``Saliency`` costs. The target is a similarity score per example: the mean-pooled MiniLM
sentence embedding dotted with a fixed reference vector. Both are timed in alternating blocks
in the same run, so the ratio travels between machines.

``python benchmarks/gradient_bench.py [--quick]`` prints the row on its own.
"""

import argparse
import statistics
import time
from typing import Callable, Dict

import torch

from captum_attnflow import AttentionRollout

LIMIT = 1.3


def _seconds(function: Callable[[], object]) -> tuple:
    """``(wall, CPU)`` seconds of one call; CPU time (all threads) is not inflated by waiting for a core."""
    start, start_cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - start, time.process_time() - start_cpu


def gradient_rollout_vs_backward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                 repeats: int) -> Dict:
    """Median seconds of gradient-weighted rollout and of a plain forward + backward, and their ratio."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(model.config.hidden_size, generator=generator)

    def similarity(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return pooled @ reference

    def score(ids, mask):
        return similarity(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    explainer = AttentionRollout(score, model=model)

    def attribute():
        explainer.attribute(input_ids, additional_forward_args=(attention_mask,), edge_weights="gradient")

    def forward_backward():
        embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        hidden = model(inputs_embeds=embeddings, attention_mask=attention_mask).last_hidden_state
        torch.autograd.grad(similarity(hidden, attention_mask).sum(), embeddings)

    attribute(), forward_backward()  # warm both
    plain_times, attribute_times = [], []
    for _ in range(max(1, repeats // 3)):
        plain_times += [_seconds(forward_backward) for _ in range(3)]
        attribute_times += [_seconds(attribute) for _ in range(3)]
    plain_s, attribute_s = (statistics.median(t[0] for t in times) for times in (plain_times, attribute_times))
    plain_cpu, attribute_cpu = (statistics.median(t[1] for t in times) for times in (plain_times, attribute_times))
    assert all(p.grad is None for p in model.parameters())  # neither leaves parameter gradients
    return dict(batch_size=input_ids.shape[0], seq_len=input_ids.shape[1], plain_s=plain_s,
                attribute_s=attribute_s, ratio=attribute_s / plain_s, cpu_ratio=attribute_cpu / plain_cpu)


def target_row(result: Dict, verdict: Callable[[float, float, bool], str]) -> list:
    """``[target, measured, goal, status]`` for bench.py's table."""
    return [f"`AttentionRollout.attribute(edge_weights=\"gradient\")` / plain forward + backward (MiniLM, "
            f"{result['batch_size']} × {result['seq_len']} tokens; backward to the input embeddings, SDPA)",
            f"**{result['ratio']:.2f}×** ({result['attribute_s'] * 1e3:.1f} ms vs {result['plain_s'] * 1e3:.1f} ms); "
            f"in CPU time {result['cpu_ratio']:.2f}×",
            f"≤ {LIMIT}×", verdict(result["ratio"], LIMIT, False)]


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import load_minilm, token_batch, verdict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_minilm()
    sizes = (2, 16, 3) if args.quick else (8, 64, 15)
    ids, mask = token_batch(tokenizer, *sizes[:2])
    row = target_row(gradient_rollout_vs_backward(model, ids, mask, sizes[2]), verdict)
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
