"""``serve --workers N``: N server processes sharing one port with SO_REUSEPORT.

A Python gRPC server runs on one core; to use every core, the ``serve`` command
becomes a small supervisor that starts N copies of itself (``--workers 1
--shared-port``) on the same address. The kernel spreads incoming connections
across them. Only these workers turn SO_REUSEPORT on, so only they share the port:
the supervisor first checks once that nothing else holds it (a plain bind, which
fails with "address in use" if any socket is bound there, SO_REUSEPORT or not),
then reserves it, for port 0 a free one, with a SO_REUSEPORT socket (bound, never
listening) that every worker joins and that keeps any other server out. SIGTERM
or SIGINT to the supervisor is passed to every worker, which drain gracefully;
the supervisor exits with the first non-zero worker status, and if a worker dies
unexpectedly it stops the others rather than serve at reduced capacity unnoticed.
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

from rmllm_common.server import address_of, bind_error, socket_for

log = logging.getLogger(__name__)


def default_workers() -> int:
    """The number of cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


SHARED_PORT_FLAG = "--shared-port"


def reserve_port(listen: str) -> tuple[str, socket.socket]:
    """Check that ``HOST:PORT`` is free, then hold it with SO_REUSEPORT (never listening).

    Returns the concrete address (port 0 becomes a free port). Raises ``OSError``
    ("address in use") when any other socket is bound there.
    """
    host = listen.rsplit(":", 1)[0]
    with socket_for(listen) as probe:
        try:
            probe.bind(address_of(listen))
        except OSError:
            raise bind_error(listen) from None
        port = probe.getsockname()[1]
    concrete = f"{host}:{port}"
    sock = socket_for(concrete)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address_of(concrete))
    except OSError:
        sock.close()
        raise bind_error(concrete) from None
    return concrete, sock


def supervise(
    child_argv: Sequence[str],
    listen: str,
    workers: int,
    grace_seconds: float,
    child_env: Mapping[str, str] | None = None,
) -> int:
    """Run ``workers`` copies of ``child_argv + ['--listen', ADDRESS, '--workers', '1', '--shared-port']``.

    A port held by anything else ends the supervisor at once, before any worker
    starts: one error line ("address in use") and exit status 1. ``child_env`` is
    added to the workers' environment (the metrics directory, see ``prom``).
    """
    try:
        address, reservation = reserve_port(listen)
    except OSError as exc:
        log.error("cannot serve: %s", exc, extra={"event": "bind_failed"})
        return 1
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
            argv = [
                *(sys.executable, "-m", *child_argv),
                *("--listen", address, "--workers", "1", SHARED_PORT_FLAG),
            ]
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
