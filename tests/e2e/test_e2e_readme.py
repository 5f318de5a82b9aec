"""Every README command block marked ``readme-test`` runs against the live stack, in
order, in one shell, so the README cannot rot. Addresses, the fake provider's port
and the state directory are rewritten to the test's own."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess

import pytest
from testkit.stack import ROOT, VENV_BIN, Stack

BLOCK = re.compile(r"^```sh readme-test\n(.*?)^```$", re.S | re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def readme_script(stack: Stack) -> str:
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the README lost its tested command blocks"
    script = "\n".join(blocks)
    fake_port = str(free_port())
    for old, new in (
        ("127.0.0.1:50051", stack.llm.address),
        ("127.0.0.1:50052", stack.vault.address),
        ("8089", fake_port),
        ("$PWD/.rmllm", str(stack.data_dir)),
    ):
        script = script.replace(old, new)
    return "set -euo pipefail\n" + script


@pytest.mark.timeout(300)
def test_readme_commands_run(stack: Stack) -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("RMLLM_TOKEN", "RMLLM_TARGET", "RMLLM_VAULT_TARGET", "RMLLM_CONFIG"):
        env.pop(name, None)
    env["RMLLM_CONFIG"] = str(stack.data_dir / "cli-config.toml")
    proc = subprocess.Popen(
        ["bash", "-c", readme_script(stack)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the fake provider the README starts in the background
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "realmultillm.llm.v1.LLMService" in out
    assert '"status": "SERVING"' in out
    assert out.count('"done"') >= 2, out  # the tour's StreamChat and the grpcurl section's
    assert "FINISH_REASON_STOP" in out
    assert '"toolCallDelta"' in out and "FINISH_REASON_TOOL_CALLS" in out  # the tool round trip
    assert "TEST_KEY_REASON_VALID" in out
    assert '"provider": "anthropic"' in out
    assert "revoked" in (out + err).lower()
