"""The processes under test: the fake provider, the vault, LLM services, and one benchmark user.

Every server is a real process started with ``python -m ...`` on ``127.0.0.1:0``;
its address comes from the ``serving`` line it prints. ``Stack`` starts the vault
(a fresh data directory, SQLite), creates the user ``bench`` with the vault CLI,
stores an OpenAI key whose ``base_url`` is the fake's, and starts LLM services with
the benchmark settings (rate limits off, custom base URLs allowed), each with
``--workers 1`` (one process per service) unless told otherwise: ``--workers 2``
runs the real supervisor with two processes on one port (SO_REUSEPORT).
The file-descriptor limit is raised first, since children inherit it.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (inherited by every process started here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


@dataclass
class Proc:
    """A running server process and the address it serves on."""

    name: str
    proc: subprocess.Popen[str]
    address: str = ""
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(
    name: str,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    serving_lines: int = 1,
    source: Path = ROOT,
) -> Proc:
    """Start ``python -m args`` and wait for ``serving_lines`` ``serving`` lines (one per worker).

    ``source``: the source tree to run the module from (another checkout, for a baseline).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        cwd=source,
    )
    started = Proc(name, proc)
    ready = threading.Event()
    seen = 0

    def drain() -> None:
        nonlocal seen
        assert proc.stdout is not None
        for line in proc.stdout:
            started.tail.append(line.rstrip("\n"))
            if not ready.is_set() and '"serving"' in line:
                try:
                    started.address = str(json.loads(line)["address"])
                except (ValueError, KeyError):
                    continue
                seen += 1
                if seen >= serving_lines:
                    ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(START_TIMEOUT) or not started.address:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{name} did not start:\n" + "\n".join(started.tail))
    return started


@dataclass
class Stack:
    """The fake provider(s), the vault, and the LLM services of one benchmark session."""

    data_dir: Path
    procs: list[Proc] = field(default_factory=list)
    vault: Proc | None = None
    token: str = ""

    def _keep(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    @property
    def common_env(self) -> dict[str, str]:
        return {
            "RMLLM_DATA_DIR": str(self.data_dir),
            "RMLLM_LOG_LEVEL": "info",
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
            "RMLLM_ALLOWED_ENDPOINT_NETWORKS": "127.0.0.0/8",  # the fake provider, on loopback
        }

    def start_fake(self, name: str, *extra: str) -> Proc:
        """The fake provider in fast mode (or slow, with ``--default slow ...``)."""
        env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
        return self._keep(start(name, ["fakes.server", "--port", "0", "--no-record", *extra], env))

    def start_vault(self) -> Proc:
        """The vault on a fresh data directory."""
        self.vault = self._keep(
            start(
                "vault",
                ["vault_service.cli", "serve", "--listen", "127.0.0.1:0", "--workers", "1"],
                self.common_env,
            )
        )
        return self.vault

    def start_llm(
        self,
        name: str,
        *,
        cache_seconds: float = 0.0,
        workers: int = 1,
        extra_env: Mapping[str, str] | None = None,
        source: Path = ROOT,
    ) -> Proc:
        """An LLM service (rate and stream limits off unless ``extra_env`` sets them): one process, or
        a ``--workers N`` supervisor and its N."""
        assert self.vault is not None
        env = {
            **self.common_env,
            "RMLLM_VAULT_ADDR": self.vault.address,
            "RMLLM_CHAT_RATE_PER_MINUTE": "0",
            "RMLLM_MAX_CONCURRENT_STREAMS": "0",  # one bench user holds thousands of streams
            "RMLLM_CREDENTIAL_CACHE_SECONDS": f"{cache_seconds:g}",
            **(extra_env or {}),
        }
        args = ["llm_service.cli", "serve", "--listen", "127.0.0.1:0", "--workers", str(workers)]
        return self._keep(start(name, args, env, serving_lines=workers, source=source))

    def create_user(self) -> str:
        """``rmllm-vault users create bench``; the token is the last line of stdout."""
        out = subprocess.run(
            [sys.executable, "-m", "vault_service.cli", "users", "create", f"bench{os.getpid()}"],
            env={**os.environ, **self.common_env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        self.token = out.stdout.strip().splitlines()[-1]
        return self.token

    def put_key(self, provider: str, api_key: str, base_url: str) -> None:
        """Store a key for the benchmark user through the vault's PutProviderConfig."""
        assert self.vault is not None
        with grpc.insecure_channel(self.vault.address) as channel:
            stub = vault_pb2_grpc.VaultServiceStub(channel)
            stub.PutProviderConfig(
                vault_pb2.PutProviderConfigRequest(provider=provider, api_key=api_key, base_url=base_url),
                metadata=(("authorization", f"Bearer {self.token}"),),
                timeout=30,
            )

    def stop_proc(self, proc: Proc) -> None:
        """Stop one process and forget it."""
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop(self) -> None:
        """Stop everything, LLM services first."""
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
