"""The HTML pages render in a real browser (headless Chromium), as a user opens them.

The comparison page is the one HTML page the package writes (``captum-attnflow explain``,
``make demo`` and the quickstart notebook all call :func:`comparison_html`). Chromium loads
it from disk, must report no console errors, and its DOM and screenshot must show every
row and colored words. CI installs Chromium (``.ci/run``); elsewhere the test is skipped
with the reason when no Chromium is installed.
"""

import shutil
import subprocess

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from captum_attnflow.visualization import comparison_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                                                          "chromium; CI installs it in .ci/run)")


def chromium(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, *arguments], capture_output=True, text=True,
                          timeout=600)  # a hang guard, not a budget


def console_errors(stderr: str) -> list:
    """Messages the page itself caused (Chromium also logs its own sandbox/D-Bus noise)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
            or "Failed to load resource" in line]


@pytest.mark.parametrize("scale", ["rank", "max"])
def test_the_comparison_page_renders_without_errors(tmp_path, scale):
    tokens = [["[CLS]", "the", "keys", "<b>", "&", "table", "[SEP]"], ["[CLS]", "dogs", "bark", "[SEP]"]]
    generator = torch.Generator().manual_seed(0)
    attributions = {"flow": torch.rand(2, 7, generator=generator),
                    "integrated gradients": torch.randn(2, 7, generator=generator)}
    page = tmp_path / "comparison.html"
    comparison_html(tokens, attributions, pred_labels=["0.504", "-0.003"], pred_header="cosine similarity to 'q'",
                    scale=scale, unranked=[[t.startswith("[") for t in row] for row in tokens],
                    correlations={"flow": [0.3, float("nan")], "integrated gradients": ["reference"] * 2},
                    correlation_header="Spearman vs integrated gradients", description="What the rows explain.",
                    path=page)

    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    assert not console_errors(dom.stderr), console_errors(dom.stderr)
    assert dom.stdout.count("<tr") == 1 + 2 * 2  # the browser parsed the header and every row
    assert dom.stdout.count("<mark") == 2 * (7 + 4) + 3  # every token of every row, and the legend
    assert "&lt;b&gt;" in dom.stdout and "&amp;" in dom.stdout  # tokens shown, not interpreted

    screenshot = tmp_path / "page.png"
    shot = chromium("--window-size=1200,700", f"--screenshot={screenshot}", page.as_uri())
    assert shot.returncode == 0 and not console_errors(shot.stderr), shot.stderr
    pixels = mpimg.imread(str(screenshot))[..., :3]
    green = (pixels[..., 1] > pixels[..., 0] + 0.1) & (pixels[..., 1] > pixels[..., 2] + 0.1)
    assert green.mean() > 0.002, "no colored words on the rendered page"
    assert np.mean(pixels < 0.3) > 0.002, "no text on the rendered page"
