"""Run a service as a real subprocess and learn the port it bound.

Services are started with ``--listen 127.0.0.1:0``; the port comes from the
structured ``serving`` log line the server writes at start. stderr is drained in a
thread into ``Service.logs`` so tests can assert on (and search for leaks in) it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    """A running service process."""

    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def logs(self) -> str:
        return "\n".join(self.lines)

    def events(self) -> list[dict[str, object]]:
        """The JSON log lines, parsed."""
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start(args: Sequence[str], env: Mapping[str, str] | None = None, *, timeout: float = 20.0) -> Service:
    """Start ``python -m <args>`` and wait for its ``serving`` log line."""
    # One worker process unless a test asks for more: per-process state (rate
    # limits, caches) stays predictable and the suite stays light.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "RMLLM_WORKERS": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=ROOT,
    )
    service = Service(proc)
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            service.lines.append(line.rstrip("\n"))
            if not ready.is_set() and '"serving"' in line:
                try:
                    service.port = int(json.loads(line)["address"].rsplit(":", 1)[1])
                except (ValueError, KeyError):
                    continue
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{args} did not start in {timeout}s:\n{service.logs}")
    if not service.port:
        proc.wait(5)
        raise RuntimeError(f"{args} exited with {proc.returncode} before serving:\n{service.logs}")
    return service
