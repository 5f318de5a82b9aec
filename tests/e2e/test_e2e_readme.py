"""A newcomer's path, as CI walks it: ``dev.py up``, the steps its banner prints, then
every README command block marked ``readme-test`` (the tour), and then the tour
again, all against that one ``up``, so neither the banner nor the README can rot.

The tour runs in one bash shell per pass, with the addresses, the fake provider's
port and the state directory rewritten to the test's own. After each pass the fake
provider the tour started must be gone: the tour stops what it starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from testkit.stack import ROOT, VENV_BIN

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"^```sh readme-test\n(.*?)^```$", re.S | re.M)
BANNER_KEY = "sk-banner-0123456789abcdefghij"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def readme_script(llm: str, vault: str, fake_port: int, data_dir: Path) -> str:
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the README lost its tested command blocks"
    script = "\n".join(blocks)
    for old, new in (
        ("127.0.0.1:50051", llm),
        ("127.0.0.1:50052", vault),
        ("8089", str(fake_port)),
        ("$PWD/.rmllm", str(data_dir)),
    ):
        script = script.replace(old, new)
    return "set -euo pipefail\n" + script


def banner_steps(banner: str) -> str:
    """The commands under the banner's "Next, in another terminal:", as one script."""
    lines = banner.split("Next, in another terminal:\n", 1)[1].split("\n\n", 1)[0]
    return "set -euo pipefail\n" + "\n".join(line.strip() for line in lines.splitlines())


class DevUp:
    """``python3 scripts/dev.py up`` on free ports, its output collected as it comes."""

    def __init__(self, data_dir: Path, fake_port: int) -> None:
        self.llm, self.vault = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        env = {**os.environ, "RMLLM_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        for name in ("RMLLM_VAULT_SEED", "RMLLM_SERVICE_TOKEN", "RMLLM_DATABASE_URL", "RMLLM_WORKERS"):
            env.pop(name, None)
        # As the README's tour starts it.
        env["RMLLM_ALLOW_CUSTOM_BASE_URL"] = "1"
        env["RMLLM_ALLOWED_ENDPOINT_NETWORKS"] = f"127.0.0.1:{fake_port}"
        self.proc = subprocess.Popen(
            [sys.executable, "scripts/dev.py", "up", "--llm-listen", self.llm, "--vault-listen", self.vault],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Ctrl-C stops both services." in line:
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


def shell(script: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``script`` in bash; whatever it leaves running in the background is killed after."""
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a safety net only: the tour must stop its own
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.timeout(900)
def test_banner_steps_then_the_tour_twice_against_one_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    fake_port = free_port()
    up = DevUp(data_dir, fake_port)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("RMLLM_TOKEN", "RMLLM_TARGET", "RMLLM_VAULT_TARGET", "RMLLM_DATA_DIR"):
        env.pop(name, None)
    env["RMLLM_CONFIG"] = str(tmp_path / "cli-config.toml")
    try:
        assert up.ready.wait(240), up.output
        assert "custom base URLs  allowed" in up.output, up.output
        assert f"private endpoints 127.0.0.1:{fake_port}  (" in up.output, up.output

        # The banner's steps, as printed: they create alice and store an openai key (stdin).
        steps = banner_steps(up.output)
        assert "users create alice" in steps and up.llm in steps
        banner = shell(steps, env, stdin=BANNER_KEY + "\n")
        assert banner.returncode == 0, f"stdout:\n{banner.stdout}\nstderr:\n{banner.stderr}"
        assert "realmultillm.llm.v1.LLMService/ListProviders" not in banner.stderr
        assert '"providers"' in banner.stdout and "stored the openai key" in banner.stdout

        script = readme_script(up.llm, up.vault, fake_port, data_dir)
        for attempt in ("first", "second"):
            tour = shell(script, env)
            out, err = tour.stdout, tour.stderr
            assert tour.returncode == 0, f"{attempt} tour\nstdout:\n{out}\nstderr:\n{err}"
            assert "realmultillm.llm.v1.LLMService" in out
            assert '"status": "SERVING"' in out
            assert out.count('"done"') >= 2, out  # the tour's StreamChat and the grpcurl section's
            assert "FINISH_REASON_STOP" in out
            assert '"toolCallDelta"' in out and "FINISH_REASON_TOOL_CALLS" in out  # the tool round trip
            assert "TEST_KEY_REASON_VALID" in out
            assert '"provider": "anthropic"' in out
            assert "revoked" in out
            assert "the token was refused" in err and "disabled" in err, err  # while alice is disabled
            assert "deleted user bob" in out
            assert "Traceback" not in out + err
            deadline = time.monotonic() + 15
            while listening(fake_port) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not listening(fake_port), f"the {attempt} tour left its fake provider running"
    finally:
        code = up.stop()
    assert code == 0, up.output
