"""The vault at ``--log-level debug`` under concurrent load: it keeps answering.

Issue 13 item 3: a debug-level vault deadlocked permanently under 2,000 calls at 50
concurrent, half with random tokens (the logging handler's lock was taken by a
database thread while gRPC's finalizers, run by the garbage collector, waited on
it). These tests run a real vault process at debug level and send it mixed valid
and invalid calls at 50 concurrent, checking every answer, that health answers
throughout and afterwards, and that the process still drains and exits cleanly
with every log line written. The issue's 10,000 calls take about 20 to 30 seconds
on a loaded 2-core machine, so the full count runs in the ordinary suite. Before
the fix, two runs in three hung for good.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from realmultillm.vault.v1 import vault_pb2 as pb
from realmultillm.vault.v1 import vault_pb2_grpc
from testkit import procs
from testkit.vault import SEED, SERVICE_TOKEN, md

from vault_service import accounts, migrations
from vault_service.database import Database

CONCURRENCY = 50
CALL_TIMEOUT = 60.0  # generous: a deadlocked vault never answers; a slow machine answers late


def _random_token() -> str:
    return accounts.TOKEN_PREFIX + secrets.token_urlsafe(32)


async def _one(stub: Any, kind: int, token: str) -> str:
    """One call of four kinds: valid and invalid, user and service RPCs. Returns the outcome."""
    try:
        if kind == 0:
            await stub.ListProviderConfigs(
                pb.ListProviderConfigsRequest(), metadata=md(token), timeout=CALL_TIMEOUT
            )
        elif kind == 1:
            await stub.ListProviderConfigs(
                pb.ListProviderConfigsRequest(), metadata=md(_random_token()), timeout=CALL_TIMEOUT
            )
        elif kind == 2:
            await stub.ResolveCredentials(
                pb.ResolveCredentialsRequest(user_token=token, provider="openai"),
                metadata=md(SERVICE_TOKEN),
                timeout=CALL_TIMEOUT,
            )
        else:
            await stub.ResolveCredentials(
                pb.ResolveCredentialsRequest(user_token=secrets.token_hex(8), provider="openai"),
                metadata=md(SERVICE_TOKEN),
                timeout=CALL_TIMEOUT,
            )
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def _health(channel: grpc.aio.Channel) -> int:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
    return int(reply.status)


async def _load(address: str, token: str, calls: int) -> tuple[Counter[tuple[int, str]], int]:
    """``calls`` mixed calls at ``CONCURRENCY``; returns outcomes by kind, and health checks answered."""
    outcomes: Counter[tuple[int, str]] = Counter()
    health_answers = 0
    done = asyncio.Event()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)
        queue = iter(range(calls))

        async def worker() -> None:
            for index in queue:
                kind = index % 4
                outcomes[(kind, await _one(stub, kind, token))] += 1

        async def prober() -> None:
            nonlocal health_answers
            async with grpc.aio.insecure_channel(address) as health_channel:
                while not done.is_set():
                    assert await _health(health_channel) == health_pb2.HealthCheckResponse.SERVING
                    health_answers += 1
                    await asyncio.sleep(0.2)

        probe = asyncio.create_task(prober())
        try:
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        finally:
            done.set()
            await probe
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    return outcomes, health_answers


def _run(tmp_path: Path, data_dir: Path, calls: int) -> None:
    db_url = f"sqlite:///{tmp_path / 'vault.sqlite3'}"
    db = Database(db_url)
    migrations.migrate(db)
    _, _, token = db.call(accounts.create_user, db, "alice")
    db.close()
    env = {
        "RMLLM_DATABASE_URL": db_url,
        "RMLLM_VAULT_SEED": SEED,
        "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
        "RMLLM_DATA_DIR": str(data_dir),
        # Every call comes from one peer: the per-peer limit on failed authentications
        # (tests/vault_service/test_vault_authguard.py) would refuse half of them.
        "RMLLM_VAULT_AUTH_FAILURES_PER_MINUTE": "0",
    }
    service = procs.start(
        ["vault_service.cli", "serve", "--listen", "127.0.0.1:0", "--log-level", "debug"], env
    )
    try:
        started = time.monotonic()
        outcomes, health_answers = asyncio.run(
            asyncio.wait_for(_load(service.address, token.reveal(), calls), timeout=420)
        )
        elapsed = time.monotonic() - started
    finally:
        code = service.stop(signal.SIGTERM, timeout=30)
    per_kind = calls // 4
    assert outcomes == {
        (0, "OK"): per_kind,
        (1, "UNAUTHENTICATED"): per_kind,
        (2, "FAILED_PRECONDITION"): per_kind,  # alice has no openai key: KEY_NOT_CONFIGURED
        (3, "UNAUTHENTICATED"): per_kind,
    }, outcomes
    assert health_answers >= 1
    assert code == 0, service.logs[-3000:]
    events = service.events()
    assert any(e.get("level") == "debug" for e in events), "the vault did not log at debug level"
    assert events[-1].get("event") == "stopped", "the last log lines were lost at shutdown"
    print(f"{calls} calls at {CONCURRENCY} concurrent in {elapsed:.1f}s, {len(events)} log lines")


@pytest.mark.timeout(600)
def test_debug_level_vault_survives_ten_thousand_mixed_calls(tmp_path: Path, data_dir: Path) -> None:
    _run(tmp_path, data_dir, 10_000)
