"""`make bench` cannot rot: the quick run prints and writes every target row."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.mark.slow
def test_quick_benchmark_reports_every_target(tmp_path):
    output = tmp_path / "bench.md"
    completed = subprocess.run([sys.executable, str(BENCH), "--quick", "--output", str(output)],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = output.read_text(encoding="utf-8")
    for row in ("networkx Edmonds–Karp", "`AttentionFlow.attribute` / plain forward",
                "`AttentionRollout.attribute` / plain SDPA forward", "extra memory of capture", "## Scaling"):
        assert row in report
    target_rows = [line for line in report.splitlines() if line.startswith("| ") and line.rstrip().endswith("|")
                   and ("met" in line)]
    assert len(target_rows) == 4
    assert "| 2 | 32 |" in report  # the scaling table has its rows
