"""``serve --workers N``: N server processes sharing one port with SO_REUSEPORT.

A Python gRPC server runs on one core; to use every core, the ``serve`` command
becomes a small supervisor that starts N copies of itself (``--workers 1``) on the
same address. The kernel spreads incoming connections across them. When the
requested port is 0, the supervisor first reserves a free port with a
SO_REUSEPORT socket (bound, never listening) so that every worker binds the same
one. SIGTERM or SIGINT to the supervisor is passed to every worker, which drain
gracefully; the supervisor exits with the first non-zero worker status, and if a
worker dies unexpectedly it stops the others rather than serve at reduced
capacity unnoticed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


def default_workers() -> int:
    """The number of cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def reserve_port(listen: str) -> tuple[str, socket.socket]:
    """Bind ``HOST:PORT`` with SO_REUSEPORT (without listening); return the concrete address."""
    host, port = listen.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), int(port)))
    bound_port = sock.getsockname()[1]
    return f"{host}:{bound_port}", sock


def supervise(
    child_argv: Sequence[str],
    listen: str,
    workers: int,
    grace_seconds: float,
    child_env: Mapping[str, str] | None = None,
) -> int:
    """Run ``workers`` copies of ``child_argv + ['--listen', ADDRESS, '--workers', '1']``.

    ``child_env`` is added to the workers' environment (the metrics directory, see ``prom``).
    """
    address, reservation = reserve_port(listen)
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for _ in range(workers):
            argv = [sys.executable, "-m", *child_argv, "--listen", address, "--workers", "1"]
            env = {**os.environ, **child_env} if child_env else None
            children.append(subprocess.Popen(argv, env=env))
        log.info("supervising workers", extra={"workers": workers, "address": address, "event": "workers"})
        while True:
            codes = [child.poll() for child in children]
            if all(code is not None for code in codes):
                break
            if not stopping and any(code is not None for code in codes):
                log.error("a worker exited unexpectedly; stopping the others", extra={"codes": str(codes)})
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        reservation.close()
        deadline = time.monotonic() + grace_seconds + 5
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return next((c.returncode for c in children if c.returncode not in (0, None)), 0)
