"""Both services start as real processes: health, reflection, graceful SIGTERM.

Checked through the generated Python stubs and through grpcurl, a client nobody
here wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from testkit import grpcurl, procs

SERVICES = {
    "vault": ("vault_service.cli", "realmultillm.vault.v1.VaultService"),
    "llm": ("llm_service.cli", "realmultillm.llm.v1.LLMService"),
}


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[tuple[procs.Service, str]]:
    module, name = SERVICES[request.param]
    running = procs.start([module, "serve", "--listen", "127.0.0.1:0"], {"RMLLM_DATA_DIR": str(data_dir)})
    yield running, name
    running.stop()


def test_health_serving_through_stubs(service: tuple[procs.Service, str]) -> None:
    running, name = service
    with grpc.insecure_channel(running.address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        for svc in ("", name):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_service_through_stubs(service: tuple[procs.Service, str]) -> None:
    running, name = service
    with grpc.insecure_channel(running.address) as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {name, "grpc.health.v1.Health"} <= names


def test_grpcurl_list_describe_and_health(service: tuple[procs.Service, str]) -> None:
    running, name = service
    listed = grpcurl.run(running.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
        listed.stdout.split()
    )
    described = grpcurl.run(running.address, "describe", name)
    assert described.returncode == 0, described.stderr
    assert "rpc " in described.stdout
    assert described.stdout.count("//") >= 5, "describe should show the proto comments"
    health = grpcurl.run(running.address, "grpc.health.v1.Health/Check", data={"service": name})
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_unknown_health_service_is_not_found(service: tuple[procs.Service, str]) -> None:
    running, _ = service
    result = grpcurl.run(running.address, "grpc.health.v1.Health/Check", data={"service": "nope"})
    assert result.returncode != 0
    assert "NotFound" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(service: tuple[procs.Service, str], sig: int) -> None:
    running, name = service
    assert running.stop(sig) == 0
    events = [e.get("event") for e in running.events()]
    # The LLM service flushes its usage records to the vault after draining, before it stops.
    lifecycle = [e for e in events if e in ("start", "stop", "usage_reporter_stopped", "stopped")]
    if name.endswith("LLMService"):
        expected = ["start", "stop", "usage_reporter_stopped", "stopped"]
    else:
        expected = ["start", "stop", "stopped"]
    assert lifecycle[-len(expected) :] == expected, running.logs
    assert events[-1] == "stopped", running.logs
    assert "Traceback" not in running.logs


def test_start_log_line_names_the_address(service: tuple[procs.Service, str]) -> None:
    running, name = service
    start = next(e for e in running.events() if e.get("event") == "start")
    assert start["address"] == running.address
    assert start["service"] == name
    assert start["level"] == "info"
    assert start["loop"] == "uvloop"  # both services, for less CPU per call (a dependency but on Windows)


@pytest.mark.parametrize("kind", ["llm", "vault"])
def test_workers_share_one_port_and_stop_together(kind: str, data_dir: Path) -> None:
    module, name = SERVICES[kind]
    running = procs.start(
        [module, "serve", "--listen", "127.0.0.1:0", "--workers", "2"], {"RMLLM_DATA_DIR": str(data_dir)}
    )
    try:
        deadline = time.monotonic() + 20
        while sum('"serving"' in line for line in running.lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        starts = [e for e in running.events() if e.get("event") == "start"]
        assert len(starts) == 2, running.logs
        assert {e["address"] for e in starts} == {running.address}
        with grpc.insecure_channel(running.address) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == 1
    finally:
        code = running.stop()
    assert code == 0, running.logs
    assert sum(e.get("event") == "stopped" for e in running.events()) == 2, running.logs


def _run_to_exit(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("kind", ["llm", "vault"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_server_on_a_port_in_use_fails_at_start(
    kind: str, workers: str, data_dir: Path, tmp_path: Path
) -> None:
    """Issue 13 item 4: SO_REUSEPORT was always on, so a second server bound silently and took
    half the calls. Now one process refuses the port, and a supervisor checks before its workers."""
    module, _ = SERVICES[kind]
    first = procs.start([module, "serve", "--listen", "127.0.0.1:0"], {"RMLLM_DATA_DIR": str(data_dir)})
    other_dir = tmp_path / "other"
    other_dir.mkdir(mode=0o700)
    try:
        second = _run_to_exit(
            [module, "serve", "--listen", first.address, "--workers", workers],
            {"RMLLM_DATA_DIR": str(other_dir), "RMLLM_WORKERS": "1"},
        )
        assert second.returncode == 1, second.stderr
        assert f"could not listen on {first.address}: address in use" in second.stderr
        assert "serving" not in second.stderr  # no worker started
        with grpc.insecure_channel(first.address) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    finally:
        assert first.stop() == 0


def test_a_single_server_does_not_join_a_supervisors_workers(data_dir: Path, tmp_path: Path) -> None:
    """The workers set SO_REUSEPORT, but a server outside their group still cannot share the port."""
    module, _ = SERVICES["vault"]
    group = procs.start(
        [module, "serve", "--listen", "127.0.0.1:0", "--workers", "2"], {"RMLLM_DATA_DIR": str(data_dir)}
    )
    other_dir = tmp_path / "other"
    other_dir.mkdir(mode=0o700)
    try:
        intruder = _run_to_exit(
            [module, "serve", "--listen", group.address, "--workers", "1"], {"RMLLM_DATA_DIR": str(other_dir)}
        )
        assert intruder.returncode == 1, intruder.stderr
        assert "address in use" in intruder.stderr
    finally:
        assert group.stop() == 0
