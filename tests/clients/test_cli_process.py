"""``python -m clients.cli`` as a real process: piped keys, streaming, Ctrl-C cancels the RPC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-good-PROCESSSECRET-42ab"


@pytest.fixture
def env(fake: FakeServers, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RMLLM_")}
    return {
        **base,
        "RMLLM_TARGET": fake.llm_target,
        "RMLLM_VAULT_TARGET": fake.vault_target,
        "RMLLM_TOKEN": TOKEN,
        "RMLLM_CONFIG": str(tmp_path / "config.toml"),
        "PYTHONUNBUFFERED": "1",
    }


def rmllm(env: Mapping[str, str], *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_keys_set_from_a_pipe_then_chat(env: dict[str, str], fake: FakeServers) -> None:
    stored = rmllm(env, "keys", "set", "openai", stdin=SECRET + "\n")
    assert (stored.returncode, stored.stdout) == (0, "stored the openai key ending …42ab\n")
    assert fake.state.keys["openai"] == SECRET
    chat = rmllm(env, "chat", "-p", "openai", "hi")
    assert chat.returncode == 0
    assert chat.stdout == "Hello world\n"
    assert chat.stderr == "[openai gpt-4o-mini · 12 in / 34 out tokens · $0.000022 · stop]\n"
    for result in (stored, chat):
        assert SECRET not in result.stdout + result.stderr


def test_errors_are_one_line_not_a_traceback(env: dict[str, str]) -> None:
    result = rmllm(env, "chat", "-p", "openai", "hi")
    assert result.returncode == 5
    assert result.stderr == "rmllm: no openai key stored: run `rmllm keys set openai`\n"
    usage = rmllm(env, "keys", "set", "openai", SECRET)
    assert usage.returncode == 2 and SECRET not in usage.stderr


def test_ctrl_c_cancels_the_stream(env: dict[str, str], fake: FakeServers) -> None:
    fake.store("openai", SECRET)
    fake.state.stream_hang = True  # one delta, then nothing until cancelled
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "chat", "-p", "openai", "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.read(3) == b"Hel"  # the first delta was flushed as it arrived
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert out == b"\n"
    assert err.decode() == "rmllm: interrupted: the chat was cancelled\n"
    assert fake.wait_cancelled()
