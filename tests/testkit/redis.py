"""Redis for tests: the shared server at 127.0.0.1:6379 with a key prefix per test, or a private one.

``shared_prefix()`` yields a fresh prefix and deletes every key under it afterwards,
so tests never see each other's limits. ``PrivateRedis`` runs a ``redis-server`` of
its own on a free loopback port (no persistence) that a fault test can stop and
start again on the same port; ``redis_server(...)`` runs one with arguments of the
test's choosing (a Unix socket, TLS) until the test ends.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

SHARED_URL = "redis://127.0.0.1:6379/0"


@contextmanager
def shared_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    prefix = f"rmllm-test-{secrets.token_hex(6)}:"
    client = redis.Redis.from_url(SHARED_URL)
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` on a free loopback port, stoppable and restartable."""

    def __init__(self, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/dev.py test installs it)"
        self._binary = binary
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._password = password

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(["--requirepass", self._password] if self._password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=self._password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the private redis-server did not start"
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


@contextmanager
def redis_server(*args: str, listening: Path | int) -> Iterator[None]:
    """A private ``redis-server`` with these arguments and no persistence, from when it
    accepts connections on ``listening`` (a Unix socket's path, or a loopback port)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/dev.py test installs it)"
    proc = subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            family = socket.AF_UNIX if isinstance(listening, Path) else socket.AF_INET
            address = str(listening) if isinstance(listening, Path) else ("127.0.0.1", listening)
            with socket.socket(family) as probe:
                if probe.connect_ex(address) == 0:
                    break
            if proc.poll() is not None:
                raise AssertionError(
                    f"redis-server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(10)
