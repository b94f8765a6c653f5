"""`make bench` cannot rot: the quick run prints and writes every target row."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
sys.path.insert(0, str(BENCH.parent))
from llm_bench import MODELS as LLM_MODELS  # noqa: E402


@pytest.mark.slow
def test_quick_benchmark_reports_every_target(tmp_path):
    output = tmp_path / "bench.md"
    completed = subprocess.run([sys.executable, str(BENCH), "--quick", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = output.read_text(encoding="utf-8")
    verdicts = ("| met |", "| NOT met |", "| not measurable here |")
    targets = [line for line in report.split("## Anchors")[0].splitlines()
               if line.startswith("| ") and line.rstrip().endswith(verdicts)]
    for row in ("vs scipy's Dinic", "vs networkx's fastest algorithm", "all positions",
                "`AttentionFlow.attribute` / plain forward", "`AttentionRollout.attribute` / plain SDPA forward",
                "floor: eager / SDPA forward", "extra memory of capture", "cost estimate",
                "`AttentionRollout.attribute(edge_weights=\"gradient\")` / plain forward + backward"):
        assert sum(row in line for line in targets) == 1, row
    llm_rows = [line for line in targets if "`LLMAttentionAttribution` `token_attr`" in line]
    assert len(llm_rows) == len(LLM_MODELS) and all("rollout **" in line for line in llm_rows)
    assert len(targets) == 8 + len(LLM_MODELS)  # the two absolute one-position targets need the full sizes
    assert "**Load:**" in report and "scipy " in report.split("**Machine:**")[1]  # versions and load
    for section in ("## Anchors: networkx and scipy", "## Scaling"):
        assert section in report
    assert "| random | 2 | 32 |" in report and "| MiniLM | 6 | 16 |" in report  # scaling rows of both kinds
    assert "networkx `edmonds_karp`" in report and "networkx `preflow_push`" in report
