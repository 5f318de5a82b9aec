"""Two LLM replicas, two vault processes, one PostgreSQL and Redis: limits, revocation, faults.

Real processes throughout: a fake provider, two vaults on one PostgreSQL schema,
two LLM replicas whose vault target names both vaults (round robin), limits on
the shared Redis at 127.0.0.1:6379 under a key prefix of this module's own, and
the credential cache on (its default). Both LLM replicas start while only the
first vault runs, so their watch streams are on it; the fault tests kill it.
Tests run in file order: the last two kill a vault and a replica.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import peewee as pw
import pytest
import redis
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc
from testkit import procs
from testkit.llm_harness import rich_error
from testkit.redis import SHARED_URL, free_port, shared_prefix
from testkit.vault import SEED, SERVICE_TOKEN

pytestmark = pytest.mark.postgres

PG_ADMIN: dict[str, Any] = {"database": "test", "host": "127.0.0.1", "port": 5432, "user": "postgres"}
LEASE_SECONDS = 2.0
KEY_A = "sk-test-replicas-key-AAAA-0123456789"
KEY_B = "sk-test-replicas-key-BBBB-0123456789"
SLOW = {"pieces": ["tick "] * 120, "chunks": [256], "delay": 0.05}  # about 3 s per stream


@dataclass
class Cluster:
    env: dict[str, str]
    fake: procs.Service
    vaults: list[procs.Service]
    llms: list[procs.Service]
    prefix: str
    redis: Any
    channels: list[grpc.Channel] = field(default_factory=list)

    def llm_stub(self, i: int) -> Any:
        return llm_pb2_grpc.LLMServiceStub(self.channels[i])

    def vault_stub(self, i: int) -> Any:
        return vault_pb2_grpc.VaultServiceStub(self.channels[2 + i])

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "vault_service.cli", *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **self.env},
            cwd=procs.ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def token_id(self, user: str) -> str:
        """The id of ``user``'s (only) token, from ``rmllm-vault tokens list``."""
        rows = [line.split()[0] for line in self.cli("tokens", "list", user).splitlines()[1:]]
        assert len(rows) == 1 and rows[0].startswith("tok_"), rows
        return rows[0]

    def user(self, name: str) -> tuple[str, str]:
        """A new user: (user id, token), with an OpenAI key on the fake stored through a live vault."""
        out = self.cli("users", "create", name).strip().splitlines()
        user_id = out[0].rsplit("(", 1)[1].rstrip(")")
        token = out[-1]
        self.put_key(0 if self.vaults[0].proc.poll() is None else 1, token, KEY_A)
        return user_id, token

    def put_key(self, vault: int, token: str, key: str) -> None:
        from fakes.server import FakeProvider

        helper = FakeProvider()
        helper.host, helper.port = "127.0.0.1", self.fake.port
        self.vault_stub(vault).PutProviderConfig(
            vault_pb2.PutProviderConfigRequest(
                provider="openai", api_key=key, base_url=helper.base_url("openai")
            ),
            metadata=auth(token),
            timeout=10,
        )

    def fake_control(self, method: str, path: str, body: Any) -> Any:
        import json
        import urllib.request

        request = urllib.request.Request(
            f"http://{self.fake.address}/_fake/{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - the loopback fake
            return json.loads(reply.read())

    def last_key_seen(self) -> str:
        records = self._requests()
        return str(records[-1]["headers"]["authorization"]).removeprefix("Bearer ")

    def _requests(self) -> list[dict[str, Any]]:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://{self.fake.address}/_fake/requests", timeout=10) as reply:
            return list(json.loads(reply.read()))


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def chat_request() -> llm_pb2.ChatRequest:
    return llm_pb2.ChatRequest(
        provider="openai", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="Hi")]
    )


def stream_request() -> llm_pb2.StreamChatRequest:
    return llm_pb2.StreamChatRequest(
        provider="openai", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="Hi")]
    )


def reason_of(call: Any) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return rich_error(exc).reason  # type: ignore[arg-type]
    return "OK"


def until(condition: Any, timeout: float, what: str) -> float:
    """Poll ``condition`` until it is true; returns the seconds it took (fails past ``timeout``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    schema = "replicas_" + secrets.token_hex(6)
    admin: Any = pw.PostgresqlDatabase(**PG_ADMIN)
    admin.execute_sql(f"CREATE SCHEMA {schema}")
    data_dir = tmp_path_factory.mktemp("replicas") / "state"
    data_dir.mkdir(mode=0o700)
    started: list[procs.Service] = []
    channels: list[grpc.Channel] = []
    with shared_prefix() as prefix:
        env = {
            "RMLLM_DATA_DIR": str(data_dir),
            "RMLLM_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}",
            "RMLLM_VAULT_SEED": SEED,
            "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
            "RMLLM_ALLOWED_ENDPOINT_NETWORKS": "127.0.0.0/8",  # the fake provider on loopback
            "RMLLM_RETRY_ATTEMPTS": "1",
            "RMLLM_REDIS_URL": SHARED_URL,
            "RMLLM_REDIS_PREFIX": prefix,
            "RMLLM_CHAT_RATE_PER_MINUTE": "0",  # off unless a test sets it in Redis
            "RMLLM_MAX_CONCURRENT_STREAMS": "100",
            "RMLLM_STREAM_LEASE_SECONDS": str(LEASE_SECONDS),
        }
        try:
            fake = procs.start(["fakes.server", "--port", "0"], {"PYTHONPATH": str(procs.ROOT / "tests")})
            started.append(fake)
            first = procs.start(["vault_service.cli", "serve", "--listen", "127.0.0.1:0"], env)
            started.append(first)
            # The second vault's port is chosen now, the vault started after the replicas
            # (so their watch streams go to the first).
            second_port = free_port()
            llm_env = {**env, "RMLLM_VAULT_ADDR": f"ipv4:{first.address},127.0.0.1:{second_port}"}
            llms = [
                procs.start(["llm_service.cli", "serve", "--listen", "127.0.0.1:0"], llm_env) for _ in "ab"
            ]
            started += llms
            second = procs.start(["vault_service.cli", "serve", "--listen", f"127.0.0.1:{second_port}"], env)
            started.append(second)
            channels = [grpc.insecure_channel(s.address) for s in (*llms, first, second)]
            client = redis.Redis.from_url(SHARED_URL)
            running = Cluster(env, fake, [first, second], llms, prefix, client, channels)
            yield running
            client.close()
        finally:
            for channel in channels:
                channel.close()
            for service in reversed(started):
                service.stop(signal.SIGKILL if service.proc.poll() is None else signal.SIGTERM, timeout=5)
            admin.execute_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.close()


def test_a_users_rate_holds_across_both_replicas(cluster: Cluster) -> None:
    _, token = cluster.user("rate")
    warm_both(cluster, token)  # the vault round trip and the caches, outside the measured window
    rate_per_minute, burst = 1200.0, 5  # 20 a second, shared; set in Redis: no restart
    cluster.redis.hset(
        cluster.prefix + "limits", mapping={"chat_rate_per_minute": rate_per_minute, "chat_burst": burst}
    )
    try:
        outcomes, elapsed = asyncio.run(hammer(cluster, token, seconds=4.0, per_replica=3))
    finally:
        cluster.redis.delete(cluster.prefix + "limits")
    assert set(outcomes) <= {"OK", "RATE_LIMITED"}, outcomes
    allowed = sum(1 for o in outcomes if o == "OK")
    expected = burst + rate_per_minute / 60 * elapsed
    assert abs(allowed - expected) <= 0.05 * expected, (allowed, expected, len(outcomes))
    assert len(outcomes) > 2 * allowed  # the replicas were really asked for more than the rate


async def hammer(
    cluster: Cluster, token: str, *, seconds: float, per_replica: int
) -> tuple[list[str], float]:
    outcomes: list[str] = []
    channels = [grpc.aio.insecure_channel(s.address) for s in cluster.llms]
    stubs = [llm_pb2_grpc.LLMServiceStub(c) for c in channels]
    started = time.monotonic()
    stop = started + seconds

    async def worker(stub: Any) -> None:
        while time.monotonic() < stop:
            try:
                await stub.Chat(chat_request(), metadata=auth(token), timeout=10)
                outcomes.append("OK")
            except grpc.aio.AioRpcError as exc:
                outcomes.append(rich_error(exc).reason)

    await asyncio.gather(*(worker(stub) for stub in stubs for _ in range(per_replica)))
    elapsed = time.monotonic() - started
    for channel in channels:
        await channel.close()
    return outcomes, elapsed


def test_the_concurrent_stream_limit_holds_across_both_replicas(cluster: Cluster) -> None:
    user_id, token = cluster.user("streams")
    cluster.redis.hset(cluster.prefix + "limits", "max_concurrent_streams", "3")
    cluster.fake_control("PUT", "default", {**SLOW, "pieces": ["tick "] * 5000})  # held until cancelled
    held: list[Any] = []
    try:
        for i in (0, 1, 0):
            call = cluster.llm_stub(i).StreamChat(stream_request(), metadata=auth(token), timeout=60)
            assert next(call).delta
            held.append(call)
        for i in (0, 1):
            with pytest.raises(grpc.RpcError) as caught:
                next(cluster.llm_stub(i).StreamChat(stream_request(), metadata=auth(token), timeout=60))
            error = rich_error(caught.value)  # type: ignore[arg-type]
            assert (error.reason, error.metadata.get("limit")) == ("RATE_LIMITED", "concurrent_streams")
        assert cluster.redis.zcard(f"{cluster.prefix}streams:{user_id}") == 3
        held.pop(1).cancel()  # one ends (on replica 1): a slot comes back at once
        until(lambda: cluster.redis.zcard(f"{cluster.prefix}streams:{user_id}") == 2, 5, "slot released")
        call = cluster.llm_stub(1).StreamChat(stream_request(), metadata=auth(token), timeout=60)
        assert next(call).delta
        held.append(call)
    finally:
        for call in held:
            call.cancel()
        cluster.fake_control("PUT", "default", None)
        cluster.redis.hdel(cluster.prefix + "limits", "max_concurrent_streams")
    until(lambda: cluster.redis.zcard(f"{cluster.prefix}streams:{user_id}") == 0, 5, "all released")


def warm_both(cluster: Cluster, token: str) -> None:
    for i in (0, 1):
        cluster.llm_stub(i).Chat(chat_request(), metadata=auth(token), timeout=10)


def cached_on_both(cluster: Cluster, user_id: str, token: str) -> None:
    """Chat on both replicas until both answer from their caches (no new resolve at the vaults).

    A resolve that overlapped any invalidation is not cached, so the first rounds may miss.
    """

    def round_is_cached() -> bool:
        before = resolves(cluster, user_id)
        warm_both(cluster, token)
        return resolves(cluster, user_id) == before

    warm_both(cluster, token)
    until(round_is_cached, 10, "both replicas caching")


def resolves(cluster: Cluster, user_id: str) -> int:
    """How many keys the vaults handed out for ``user_id`` (the audit's resolve rows)."""
    db: Any = pw.PostgresqlDatabase(**PG_ADMIN)
    try:
        schema = cluster.env["RMLLM_DATABASE_URL"].rsplit("%3D", 1)[1]
        row = db.execute_sql(
            f"SELECT COUNT(*) FROM {schema}.audit_events "  # noqa: S608 - a test's own schema name
            "WHERE action = 'config.resolve' AND outcome = 'ok' AND actor = %s",
            (user_id,),
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def test_a_token_revoked_through_one_vault_is_refused_by_both_replicas_within_a_second(
    cluster: Cluster,
) -> None:
    user_id, token = cluster.user("revoked")
    cached_on_both(cluster, user_id, token)
    token_id = cluster.token_id("revoked")
    cluster.cli("tokens", "revoke", token_id)
    for i in (0, 1):
        took = until(
            lambda i=i: (
                reason_of(lambda: cluster.llm_stub(i).Chat(chat_request(), metadata=auth(token), timeout=5))
                == "TOKEN_INVALID"
            ),
            1.0,
            f"replica {i} refusing the revoked token",
        )
        assert took < 1.0


def test_a_key_replaced_through_the_other_vault_is_used_by_both_replicas_within_a_second(
    cluster: Cluster,
) -> None:
    user_id, token = cluster.user("rekeyed")
    cached_on_both(cluster, user_id, token)
    assert cluster.last_key_seen() == KEY_A
    cluster.put_key(1, token, KEY_B)  # through the second vault; the watches are on the first

    def uses_new_key(i: int) -> bool:
        cluster.llm_stub(i).Chat(chat_request(), metadata=auth(token), timeout=5)
        return cluster.last_key_seen() == KEY_B

    for i in (0, 1):
        until(lambda i=i: uses_new_key(i), 1.0, f"replica {i} using the replaced key")


def test_a_killed_vault_cuts_the_watch_drops_the_caches_and_revocation_still_holds(
    cluster: Cluster,
) -> None:
    user_id, token = cluster.user("survivor")
    spare_id, spare_token = cluster.user("revoked-later")
    cached_on_both(cluster, user_id, token)
    cached_on_both(cluster, spare_id, spare_token)
    cluster.vaults[0].stop(signal.SIGKILL)
    for llm in cluster.llms:  # both replicas watched the first vault: their streams are cut
        until(lambda llm=llm: '"vault_watch_down"' in llm.logs, 5, "the watch stream noticed as down")
    # Calls go on through the second vault (a call caught mid-failover may be VAULT_UNAVAILABLE).
    for i in (0, 1):
        until(
            lambda i=i: (
                reason_of(lambda: cluster.llm_stub(i).Chat(chat_request(), metadata=auth(token), timeout=5))
                == "OK"
            ),
            10,
            f"replica {i} serving through the second vault",
        )
        for _ in range(5):
            cluster.llm_stub(i).Chat(chat_request(), metadata=auth(token), timeout=5)
    # Once the replicas watch the second vault, revocation reaches both within a second again.
    for llm in cluster.llms:
        until(lambda llm=llm: '"vault_watch_up"' in llm.logs, 10, "the watch stream back on the second vault")
    token_id = cluster.token_id("revoked-later")
    cluster.cli("tokens", "revoke", token_id)
    for i in (0, 1):
        until(
            lambda i=i: (
                reason_of(
                    lambda: cluster.llm_stub(i).Chat(chat_request(), metadata=auth(spare_token), timeout=5)
                )
                == "TOKEN_INVALID"
            ),
            1.0,
            f"replica {i} refusing the token revoked after the failover",
        )


def test_a_replica_killed_mid_stream_fails_its_caller_only_and_its_slots_free_themselves(
    cluster: Cluster,
) -> None:
    user_id, token = cluster.user("mid-stream")
    cluster.fake_control("PUT", "default", SLOW)
    key = f"{cluster.prefix}streams:{user_id}"
    try:
        doomed = [
            cluster.llm_stub(1).StreamChat(stream_request(), metadata=auth(token), timeout=60) for _ in "ab"
        ]
        for call in doomed:
            assert next(call).delta
        survivor = cluster.llm_stub(0).StreamChat(stream_request(), metadata=auth(token), timeout=60)
        assert next(survivor).delta
        assert cluster.redis.zcard(key) == 3
        cluster.llms[1].stop(signal.SIGKILL)
        for call in doomed:
            with pytest.raises(grpc.RpcError) as caught:
                list(call)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        rest = list(survivor)  # the other replica is unaffected: its stream completes
        assert rest[-1].HasField("done")
        # The dead replica never released its two slots: their leases expire.
        took = until(lambda: cluster.redis.zcard(key) == 0, LEASE_SECONDS * 2 + 1, "dead replica's slots")
        assert took <= LEASE_SECONDS * 2 + 1
    finally:
        cluster.fake_control("PUT", "default", None)
