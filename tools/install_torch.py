"""Install the CPU build of torch: PyTorch's CPU wheel index where it answers, else the plain pin.

    python tools/install_torch.py 2.13.0            # what `make install` runs
    TORCH_INDEX=https://download.pytorch.org/whl/cu126 python tools/install_torch.py 2.13.0   # CUDA 12.6
    TORCH_INDEX= python tools/install_torch.py 2.13.0                                      # the default index

A plain ``pip install torch`` on Linux brings the CUDA build from PyPI (about 18 nvidia
packages, several GB). The index is probed first with one short request (``PROBE_SECONDS``,
DNS included), so an unreachable index costs seconds, not pip's long retries; then pip runs
with that index, or with the default one where the probe failed or ``TORCH_INDEX`` is empty.
"""

import os
import subprocess
import sys
import threading
import urllib.request
from typing import List, Optional

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_SECONDS = 5.0


def index_answers(index: str, timeout: float = PROBE_SECONDS) -> bool:
    """True when ``index``/torch/ answers within ``timeout`` seconds, name lookup included."""
    answered = []

    def probe():
        try:
            with urllib.request.urlopen(index.rstrip("/") + "/torch/", timeout=timeout) as response:
                answered.append(response.status < 400)
        except (OSError, ValueError):  # unreachable, refused, HTTP error, malformed URL
            answered.append(False)

    # A thread bounds the whole probe: the socket timeout does not cover the name lookup.
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answered and answered[0])


def pip_command(version: str, index: Optional[str], python: str = sys.executable) -> List[str]:
    """The pip call: ``torch==version`` from ``index``, or from pip's configured indexes when None."""
    command = [python, "-m", "pip", "install", "-q", f"torch=={version}"]
    return command + (["--index-url", index] if index else [])


def choose_index(requested: str, answers=index_answers) -> Optional[str]:
    """The index to use (None: pip's default) and why, printed for the user."""
    if not requested:
        print("torch: TORCH_INDEX is empty, using pip's default index (on Linux, PyPI's CUDA build)")
        return None
    if answers(requested):
        print(f"torch: installing from {requested}")
        return requested
    print(f"torch: {requested} did not answer (probed for at most {PROBE_SECONDS:g} s); using pip's default "
          "index, which gives the CPU build only where it has one (on Linux, PyPI's torch is the CUDA "
          "build: set TORCH_INDEX to a CPU index or mirror you can reach)")
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dry_run = "--dry-run" in argv
    versions = [arg for arg in argv if arg != "--dry-run"]
    if len(versions) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    command = pip_command(versions[0], choose_index(os.environ.get("TORCH_INDEX", CPU_INDEX)))
    print(" ".join(command))
    return 0 if dry_run else subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
