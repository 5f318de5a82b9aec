"""Pieces the ``serve`` commands share: flags, logging set-up and the run loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from rmllm_common import logs, telemetry
from rmllm_common.server import ServerHandle
from rmllm_common.telemetry import TelemetrySettings
from rmllm_common.workers import SHARED_PORT_FLAG, supervise

S = TypeVar("S")
log = logging.getLogger(__name__)


def add_serve_flags(parser: argparse.ArgumentParser, default_listen: str) -> None:
    """``--listen``, ``--data-dir`` and ``--log-level``."""
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help=f"address to serve on (default {default_listen})"
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", help="state directory (default: RMLLM_DATA_DIR or XDG state)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: info")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT); default RMLLM_WORKERS, else one per core",
    )
    # Set by the supervisor on its own workers only: they alone share the port.
    parser.add_argument(SHARED_PORT_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics there (default RMLLM_METRICS_LISTEN; unset: off)",
    )


def child_argv(module: str, args: argparse.Namespace) -> list[str]:
    """The ``serve`` arguments a worker process gets (the supervisor adds --listen and --workers)."""
    argv = [module, "serve"]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    return argv


def run_serve(
    settings: S,
    listen: str,
    grace_seconds: float,
    build: Callable[[S], Awaitable[ServerHandle]],
    *,
    telemetry_settings: TelemetrySettings | None = None,
    service_name: str = "",
) -> int:
    """Start this process's telemetry, build the server and serve until SIGTERM or SIGINT,
    on uvloop's event loop when it is installed (``run_loop``)."""

    async def main() -> None:
        handle = await build(settings)
        host = listen.rsplit(":", 1)[0]
        await handle.serve(f"{host}:{handle.port}", grace_seconds)

    try:
        stop_telemetry = telemetry.start(telemetry_settings or TelemetrySettings(), service_name)
    except OSError as exc:
        log.error("cannot serve metrics: %s", exc)
        return 1
    try:
        run_loop(main())
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    finally:
        stop_telemetry()
        logs.flush()
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` on uvloop's loop: less CPU per call than asyncio's own in both
    services (docs/PERFORMANCE.md). Where uvloop has no wheels (Windows), asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - the services' processes only
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def supervise_workers(
    module: str,
    args: argparse.Namespace,
    listen: str,
    workers: int,
    grace_seconds: float,
    *,
    telemetry_settings: TelemetrySettings,
) -> int:
    """``--workers N``: run the workers; with metrics on, serve their sum here (``prom``)."""
    if not telemetry_settings.metrics_listen:
        return supervise(child_argv(module, args), listen, workers, grace_seconds)
    from rmllm_common import prom  # noqa: PLC0415 - prometheus_client only when metrics are on

    try:
        with prom.supervisor_metrics(telemetry_settings.metrics_listen) as env:
            return supervise(child_argv(module, args), listen, workers, grace_seconds, env)
    except OSError as exc:
        log.error("cannot serve metrics: %s", exc)
        return 1


def fail(message: str) -> int:
    """Print one line to stderr (after any queued log lines) and return exit status 2."""
    logs.flush()
    print(f"error: {message}", file=sys.stderr)
    return 2
