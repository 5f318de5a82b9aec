"""The README's first command brings up both services on the embedded defaults."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from testkit import grpcurl

from llm_service.netpolicy import DEFAULT_ALLOWED_ENDPOINT_NETWORKS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(180)
def test_dev_up_starts_both_services_with_generated_state(tmp_path: Path) -> None:
    llm, vault = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    env = {**os.environ, "RMLLM_DATA_DIR": str(state), "PYTHONUNBUFFERED": "1"}
    for name in (
        "RMLLM_VAULT_SEED",
        "RMLLM_SERVICE_TOKEN",
        "RMLLM_DATABASE_URL",
        "RMLLM_ALLOW_CUSTOM_BASE_URL",
        "RMLLM_ALLOWED_ENDPOINT_NETWORKS",
    ):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "scripts/dev.py", "up", "--llm-listen", llm, "--vault-listen", vault],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    up = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "RealMultiLLM is up." in line:
                up.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert up.wait(100), "".join(lines)
        time.sleep(0.5)  # the rest of the banner
        banner = "".join(lines)
        assert llm in banner and vault in banner and "users create" in banner
        # The environment above does not set RMLLM_ALLOW_CUSTOM_BASE_URL.
        assert "custom base URLs  not allowed" in banner, banner
        assert f"private endpoints {DEFAULT_ALLOWED_ENDPOINT_NETWORKS}  (" in banner, banner
        for address, service in (
            (llm, "realmultillm.llm.v1.LLMService"),
            (vault, "realmultillm.vault.v1.VaultService"),
        ):
            listed = grpcurl.run(address, "list")
            assert listed.returncode == 0, listed.stderr
            assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
                listed.stdout.split()
            )
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("vault_seed", "service_token"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        assert list(state.glob("*.sqlite3"))
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, "".join(lines)
    assert '"stopped"' in "".join(lines)
