"""Issue 13's acceptance run: the LLM service, as a real process, against the hostile
provider. 20 concurrent calls of each behaviour (half Chat, half StreamChat, with no
caller deadline) all end with a clear status; health answers SERVING throughout;
and the service's RSS comes back to within 10% of its baseline afterwards.

The baseline is taken after one ordinary warm-up call per behaviour (imports, the
connection pool, gRPC's buffers), before any concurrent load. Limits are set small
(256 KiB per answer) so the run is short; the code paths are those of the defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fakes.hostile import HostileProvider
from grpc_health.v1 import health_pb2, health_pb2_grpc
from realmultillm.llm.v1 import llm_pb2_grpc
from testkit import procs
from testkit.llm_fake_vault import FakeVault, StoredKey
from testkit.llm_harness import SERVICE_TOKEN, auth, chat_request, stream_request

BEHAVIOURS = (
    "deltas-fast",
    "deltas-slow",
    "comments",
    "one-line",
    "huge-error",
    "nested-json",
    "redirect",
    "echo-key",
    "stall",
    "silent",
)
CONCURRENT = 20
KEY = "sk-live-0123456789abcdefghijklmnopqrstuv"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def one_call(stub: Any, token: str, streaming: bool) -> grpc.StatusCode:
    try:
        if streaming:
            async for _ in stub.StreamChat(stream_request(), metadata=auth(token)):
                pass
        else:
            await stub.Chat(chat_request(), metadata=auth(token))
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def hostile() -> AsyncIterator[HostileProvider]:
    async with HostileProvider(slow_interval=0.02) as server:
        yield server


@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_rss_returns_to_baseline_and_health_answers_throughout(
    hostile: HostileProvider, tmp_path: Path
) -> None:
    tokens = {b: f"rmk_{b.replace('-', '_')}_token_0123456789" for b in BEHAVIOURS}
    vault = FakeVault(SERVICE_TOKEN, users={t: f"u-{b}" for b, t in tokens.items()})  # type: ignore[abstract]
    for behaviour in BEHAVIOURS:
        vault.keys[(f"u-{behaviour}", "openai")] = StoredKey(KEY, base_url=hostile.base_url(behaviour))
    vault_addr = await vault.start()
    env = {
        "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
        "RMLLM_VAULT_ADDR": vault_addr,
        "RMLLM_DATA_DIR": str(tmp_path),
        "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
        "RMLLM_ALLOWED_ENDPOINT_NETWORKS": "127.0.0.0/8",
        "RMLLM_RETRY_ATTEMPTS": "1",
        "RMLLM_CHAT_RATE_PER_MINUTE": "0",
        "RMLLM_UPSTREAM_READ_IDLE_SECONDS": "1",
        "RMLLM_UPSTREAM_MAX_CALL_SECONDS": "3",
        "RMLLM_UPSTREAM_MAX_RESPONSE_BYTES": "262144",
        "RMLLM_UPSTREAM_MAX_EVENT_BYTES": "65536",
    }
    service = await asyncio.to_thread(
        procs.start, ["llm_service.cli", "serve", "--listen", "127.0.0.1:0"], env
    )
    channel = grpc.aio.insecure_channel(service.address)
    stub: Any = llm_pb2_grpc.LLMServiceStub(channel)
    health: Any = health_pb2_grpc.HealthStub(channel)
    answers: list[int] = []
    stop = asyncio.Event()

    async def watch_health() -> None:
        while not stop.is_set():
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            answers.append(reply.status)
            await asyncio.sleep(0.05)

    try:
        for behaviour in BEHAVIOURS:  # warm-up: one call each, then the baseline
            await one_call(stub, tokens[behaviour], streaming=False)
        await hostile.wait_idle()
        baseline = rss_kib(service.proc.pid)
        watcher = asyncio.create_task(watch_health())
        peak = baseline
        for behaviour in BEHAVIOURS:
            codes = await asyncio.gather(
                *(one_call(stub, tokens[behaviour], streaming=i % 2 == 1) for i in range(CONCURRENT))
            )
            assert grpc.StatusCode.OK not in codes, (behaviour, codes)
            assert len(set(codes)) == 1, (behaviour, codes)  # every call of a behaviour ends alike
            peak = max(peak, rss_kib(service.proc.pid))
        await hostile.wait_idle()
        stop.set()
        await watcher
        assert answers and set(answers) == {health_pb2.HealthCheckResponse.SERVING}
        for _ in range(150):  # freed memory may take a moment to go back: poll for up to ~30 s
            after = rss_kib(service.proc.pid)
            if after <= baseline * 1.10:
                break
            await asyncio.sleep(0.2)
        assert after <= baseline * 1.10, f"RSS KiB: baseline {baseline}, peak {peak}, after {after}"
        print(f"RSS KiB: baseline {baseline}, peak {peak}, after {after}; {len(answers)} health checks")
    finally:
        stop.set()
        await channel.close()
        await asyncio.to_thread(service.stop)
        await vault.stop()
    assert KEY[3:] not in service.logs and KEY[8:24] not in service.logs
    assert "Traceback" not in service.logs
