"""Installation promises: tested dependency bounds, the lock file, the CPU torch installer."""

import configparser
import http.server
import importlib.util
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("install_torch", ROOT / "tools" / "install_torch.py")
install_torch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_torch)


def requirements() -> dict:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


def pins(name: str) -> dict:
    lines = (ROOT / name).read_text().splitlines()
    pinned = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {package.strip().lower().replace("_", "-"): Version(version.strip()) for package, version in pinned}


def lower_bound(requirement: Requirement) -> Version:
    (bound,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    return Version(bound)


def test_every_lower_bound_is_the_version_the_oldest_environment_tests():
    oldest = pins("constraints-oldest.txt")
    declared = requirements()
    assert set(oldest) == set(declared), "constraints-oldest.txt pins exactly the runtime dependencies"
    for name, requirement in declared.items():
        assert oldest[name] == lower_bound(requirement), f"{name}: setup.cfg says {requirement}"


def test_the_lock_file_lies_within_the_declared_bounds():
    locked = pins("constraints.txt")
    for name, requirement in requirements().items():
        assert name in locked, f"{name} is not locked in constraints.txt"
        assert requirement.specifier.contains(locked[name]), f"locked {name}=={locked[name]} outside {requirement}"
    assert "captum-attnflow" not in locked  # the project itself is never pinned


def test_transformers_has_an_upper_bound():
    upper = [spec for spec in requirements()["transformers"].specifier if spec.operator == "<"]
    assert upper and Version(upper[0].version) > pins("constraints.txt")["transformers"]


def test_every_make_target_that_installs_uses_the_lock(tmp_path):
    plan = subprocess.run(["make", "-n", "-B", "bench", "reproduce", "demo", "test", f"VENV={tmp_path / 'v'}"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "tools/install_torch.py 2.13.0" in plan
    assert "-c constraints.txt -e .[test,model,docs]" in plan.replace('"', "")
    oldest = subprocess.run(["make", "-n", "-B", "test-oldest", f"OLDEST_VENV={tmp_path / 'o'}"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert "-c constraints-oldest.txt" in oldest and '-m "not slow"' in oldest


# ------------------------------------------------------------------ tools/install_torch.py


def test_an_index_that_does_not_resolve_falls_back_to_the_plain_pin(capsys):
    assert install_torch.choose_index("http://no-such-host.invalid/whl/cpu") is None
    assert "did not answer" in capsys.readouterr().out
    assert install_torch.pip_command("2.13.0", None, python="py") == ["py", "-m", "pip", "install", "-q",
                                                                      "torch==2.13.0"]


def test_an_empty_torch_index_means_the_default_index(capsys):
    assert install_torch.choose_index("", answers=lambda index: pytest.fail("no probe expected")) is None
    assert "pip's default index" in capsys.readouterr().out


def test_a_silent_index_costs_only_the_probe_time():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection but never answers
    try:
        assert install_torch.index_answers(f"http://127.0.0.1:{listener.getsockname()[1]}/cpu", timeout=0.5) is False
    finally:
        listener.close()


def test_an_answering_index_is_used():
    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        index = f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
        assert install_torch.choose_index(index) == index
        assert install_torch.pip_command("2.13.0", index, python="py")[-2:] == ["--index-url", index]
        assert install_torch.index_answers(index.replace("/cpu", "/cu999")) is False  # 404: no such index
    finally:
        server.shutdown()
