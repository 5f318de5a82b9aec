"""Prometheus exposition: the opt-in ``/metrics`` listener, one process or many.

Metrics are off unless ``--metrics-listen`` / ``RMLLM_METRICS_LISTEN`` names an
address. One server process serves its own registry there. With ``--workers N``
the supervisor serves ``/metrics`` instead and the workers do not listen at all:
it makes a fresh directory for this run, hands it to every worker as
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode: each worker
writes its samples to memory-mapped files there), and answers each scrape with
the sum over all workers (``MultiProcessCollector``), so a scrape never shows one
worker's view as the whole. The directory is removed when the supervisor exits,
so counters of an earlier run never leak into a new one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from rmllm_common.telemetry import MULTIPROC_ENV

log = logging.getLogger(__name__)
__all__ = ["MULTIPROC_ENV", "serve_metrics", "split_listen", "supervisor_metrics"]


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); IPv6 hosts in brackets."""
    host, port = listen.rsplit(":", 1)
    return host.strip("[]"), int(port)


def serve_metrics(listen: str, multiproc_dir: str | None) -> tuple[Any, int]:
    """Serve ``/metrics`` on ``listen`` from a daemon thread; return (server, bound port).

    With ``multiproc_dir`` the answer aggregates every process writing there.
    """
    registry: CollectorRegistry = REGISTRY
    if multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    host, port = split_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    log.info(
        "serving metrics",
        extra={"address": f"{host}:{bound}", "multiprocess": bool(multiproc_dir), "event": "metrics"},
    )
    return server, bound


@contextmanager
def supervisor_metrics(listen: str) -> Iterator[dict[str, str]]:
    """For ``--workers N``: a per-run directory and the listener; yields the workers' extra env."""
    directory = tempfile.mkdtemp(prefix="rmllm-metrics-")
    server = None
    try:
        server, _ = serve_metrics(listen, directory)
        # The workers record into the directory; only the supervisor listens.
        yield {MULTIPROC_ENV: directory, "RMLLM_METRICS_LISTEN": ""}
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        shutil.rmtree(directory, ignore_errors=True)
