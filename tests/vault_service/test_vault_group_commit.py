"""Group commit of the resolves' writes, on SQLite and PostgreSQL.

Many resolves at once share transactions (fewer commits than writes) and still
leave exactly one audit row per resolve, in one intact chain, and the exact use
count per configuration; a refusal is audited in the same way; an unknown token
writes nothing. A vault killed with SIGKILL in the middle of a resolve soak
leaves the chain intact and every count equal to its configuration's audited
resolves, and every key a caller received has its audit row (no unaudited decrypt).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
from realmultillm.vault.v1 import vault_pb2 as pb
from realmultillm.vault.v1 import vault_pb2_grpc
from testkit import procs
from testkit.vault import SEED, SERVICE_TOKEN, Vault, md

from rmllm_common.secret import Secret
from vault_service import accounts, audit, configs, ledger, migrations, writes
from vault_service.crypto import Keyring
from vault_service.database import Database
from vault_service.groupcommit import GroupCommit

PROVIDERS = ("openai", "anthropic")
KEYS = {"openai": "sk-proj-0123456789abcdefghij", "anthropic": "sk-ant-api03-0123456789abcdefghij"}


def resolve_request(token: str, provider: str, request_id: str) -> pb.ResolveCredentialsRequest:
    return pb.ResolveCredentialsRequest(user_token=token, provider=provider, request_id=request_id)


def audited(db: Database, action: str = "config.resolve") -> list[tuple[str, str, str, str]]:
    model = db.tables.audit
    rows = db.call(lambda: list(model.select().where(model.action == action).order_by(model.seq)))
    return [(r.actor, r.provider, r.outcome, r.request_id) for r in rows]


def use_counts(db: Database) -> dict[tuple[str, str], int]:
    model = db.tables.config
    rows = db.call(lambda: list(model.select()))
    return {(r.user_id, r.provider): r.usage_count for r in rows}


async def test_the_writer_batches_concurrent_writes_into_fewer_transactions(database: Database) -> None:
    applied: list[list[int]] = []

    def apply(db: Database, items: Sequence[int]) -> None:
        db.execute("UPDATE audit_head SET seq = seq WHERE id = 1")  # a real write in the transaction
        applied.append(list(items))

    writer: GroupCommit[int] = GroupCommit(database, apply, max_batch=16)
    await asyncio.gather(*(writer.commit(i) for i in range(100)))
    assert sorted(i for batch in applied for i in batch) == list(range(100))
    assert writer.items == 100
    assert writer.batches < 100
    assert max(len(batch) for batch in applied) <= 16


async def test_a_failed_batch_fails_every_caller_and_the_next_batch_still_commits(database: Database) -> None:
    calls = 0

    def apply(db: Database, items: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk on fire")

    writer: GroupCommit[int] = GroupCommit(database, apply)
    results = await asyncio.gather(*(writer.commit(i) for i in range(5)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, RuntimeError)]
    assert failed and all(r is None or isinstance(r, RuntimeError) for r in results)
    assert calls >= 1
    await writer.commit(99)  # the writer is not wedged by the failure


async def test_a_caller_that_goes_away_does_not_take_its_write_with_it(database: Database) -> None:
    applied: list[int] = []
    writer: GroupCommit[int] = GroupCommit(database, lambda db, items: applied.extend(items))
    gone = asyncio.ensure_future(writer.commit(1))
    await asyncio.sleep(0)  # queued, and the writer started
    gone.cancel()
    await writer.commit(2)
    assert gone.cancelled()
    assert applied == [1, 2]


LAST_CONFIG = "SELECT MAX(id) FROM provider_configs"


def test_one_batch_of_many_uses_counts_each_configuration_exactly_and_chains_every_row(
    database: Database,
) -> None:
    """More configurations and rows than one multi-row statement holds, some used many times."""
    keyring = Keyring(Secret(SEED))
    config_ids = []
    for i in range(20):
        principal, _, _ = database.call(accounts.create_user, database, f"user{i}")
        blob = keyring.encrypt(Secret(KEYS["openai"]), principal.user_id, "openai")
        draft = configs.Draft(blob, keyring.current.key_id, "ghij", "", configs.Settings())
        database.call(configs.put, database, principal.user_id, "openai", draft, "put")
        config_ids.append(
            database.call(database.execute, "SELECT MAX(id) FROM provider_configs").fetchone()[0]
        )
    uses = [
        configs.Use(audit.Event("someone", "config.resolve", "openai", "ok", f"r-{n}"), config_ids[n % 20], n)
        for n in range(45)  # configurations 0-4 used three times, the others twice
    ]
    uses.append(configs.Use(audit.Event("someone", "config.resolve", "openai", "KEY_NOT_CONFIGURED", "r-x")))

    def batch(db: Database) -> None:
        with db.write():
            configs.record_uses(db, uses)

    database.call(batch, database)
    model = database.tables.config
    rows = {r.id: r for r in database.call(lambda: list(model.select()))}
    for i, config_id in enumerate(config_ids):
        used = [n for n in range(45) if n % 20 == i]
        assert (rows[config_id].usage_count, rows[config_id].last_used_time) == (len(used), max(used))
    assert [r[3] for r in audited(database)] == [f"r-{n}" for n in range(45)] + ["r-x"]
    report = database.call(audit.verify, database)
    assert report.ok, report.problems


async def test_concurrent_resolves_leave_one_audit_row_each_and_exact_counts(
    db_url: str, vault_factory: Callable[..., Awaitable[Vault]]
) -> None:
    vault = await vault_factory(db_url)
    tokens = [vault.make_user(f"user{i}") for i in range(6)]
    for token in tokens:
        for provider in PROVIDERS:
            await vault.stub.PutProviderConfig(
                pb.PutProviderConfigRequest(provider=provider, api_key=KEYS[provider]),
                metadata=md(token),
            )
    calls = [
        (t, p if (i + j) % 5 else "google", f"r-{i}-{j}")
        for i, t in enumerate(tokens)
        for j in range(30)
        for p in (PROVIDERS[j % 2],)
    ]
    calls += [("rmu_" + "x" * 43, "openai", f"junk-{j}") for j in range(5)]  # unknown token: no row
    answers = await asyncio.gather(
        *(
            vault.stub.ResolveCredentials(resolve_request(t, p, r), metadata=md(SERVICE_TOKEN))
            for t, p, r in calls
        ),
        return_exceptions=True,
    )
    ok = [c for c, a in zip(calls, answers, strict=True) if not isinstance(a, BaseException)]
    refused = [c for c, a in zip(calls, answers, strict=True) if isinstance(a, grpc.aio.AioRpcError)]
    assert len(ok) + len(refused) == len(calls)
    assert {a.code() for a in answers if isinstance(a, grpc.aio.AioRpcError)} == {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
    }
    rows = audited(vault.db)
    assert sorted(r[3] for r in rows if r[2] == "ok") == sorted(r for _, _, r in ok)
    refused_known = [r for _, _, r in refused if not r.startswith("junk-")]
    assert sorted(r[3] for r in rows if r[2] != "ok") == sorted(refused_known)
    counts = use_counts(vault.db)
    per_config: dict[tuple[str, str], int] = {}
    for actor, provider, outcome, _ in rows:
        if outcome == "ok":
            per_config[(actor, provider)] = per_config.get((actor, provider), 0) + 1
    assert counts == {key: per_config.get(key, 0) for key in counts}
    assert sum(counts.values()) == len(ok)
    report = vault.db.call(audit.verify, vault.db)
    assert report.ok, report.problems


def soak(address: str, tokens: list[str], answered: list[str], stop: asyncio.Event) -> Awaitable[None]:
    async def worker(n: int) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = vault_pb2_grpc.VaultServiceStub(channel)
            i = 0
            while not stop.is_set():
                i += 1
                request_id = f"soak-{n}-{i}"
                try:
                    await stub.ResolveCredentials(
                        resolve_request(tokens[(n + i) % len(tokens)], PROVIDERS[i % 2], request_id),
                        metadata=md(SERVICE_TOKEN),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError:
                    return  # the vault is gone
                answered.append(request_id)

    async def run() -> None:
        await asyncio.gather(*(worker(n) for n in range(16)))

    return run()


async def test_sigkill_during_a_resolve_soak_leaves_counts_exact_and_the_chain_intact(
    db_url: str, tmp_path: Path
) -> None:
    db = Database(db_url)
    migrations.migrate(db)
    env = {
        "RMLLM_DATABASE_URL": db_url,
        "RMLLM_VAULT_SEED": SEED,
        "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
        "RMLLM_DATA_DIR": str(tmp_path),
    }
    service = procs.start(["vault_service.cli", "serve", "--listen", "127.0.0.1:0"], env)
    try:
        tokens = [db.call(accounts.create_user, db, f"soak{i}")[2].reveal() for i in range(4)]
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = vault_pb2_grpc.VaultServiceStub(channel)
            for token in tokens:
                for provider in PROVIDERS:
                    await stub.PutProviderConfig(
                        pb.PutProviderConfigRequest(provider=provider, api_key=KEYS[provider]),
                        metadata=md(token),
                    )
        answered: list[str] = []
        stop = asyncio.Event()
        running = asyncio.ensure_future(soak(service.address, tokens, answered, stop))
        deadline = time.monotonic() + 60
        while len(answered) < 150:  # in the middle of the soak
            assert time.monotonic() < deadline and not running.done(), "the soak did not get going"
            await asyncio.sleep(0.01)
        service.stop(signal.SIGKILL)
        await asyncio.wait_for(running, 30)
    finally:
        service.stop(signal.SIGKILL)
    try:
        rows = audited(db)
        ok_ids = {r[3] for r in rows if r[2] == "ok"}
        assert set(answered) <= ok_ids  # every key handed out was audited first
        assert len(ok_ids) == len([r for r in rows if r[2] == "ok"])  # and only once
        per_config: dict[tuple[str, str], int] = {}
        for actor, provider, outcome, _ in rows:
            if outcome == "ok":
                per_config[(actor, provider)] = per_config.get((actor, provider), 0) + 1
        counts = use_counts(db)
        assert counts == {key: per_config.get(key, 0) for key in counts}
        report = db.call(audit.verify, db)
        assert report.ok, report.problems
    finally:
        db.close()


async def test_usage_batches_and_resolve_writes_share_the_writers_transactions(database: Database) -> None:
    """Issue 15: one writer takes every resolve's write and every usage batch in flight."""
    principal, token_id, _ = database.call(accounts.create_user, database, "alice")
    now = ledger.now_us()

    def entry(request_id: str) -> ledger.Entry:
        fields = (principal.user_id, token_id, "openai", "m", "Chat", False, 3, 4, 0, 0, 0, True, 0.5, 10)
        return ledger.Entry(request_id, now, *fields, None, "OK", "", 0)

    writer: GroupCommit[writes.Write] = GroupCommit(database, writes.apply)
    use = configs.Use(audit.Event(principal.user_id, "config.resolve", "openai", "ok", "r-resolve"))
    first = writes.UsageBatch([entry("u-1"), entry("u-2")])
    again = writes.UsageBatch([entry("u-2"), entry("u-3")])  # u-2 repeated within one transaction
    await asyncio.gather(writer.commit(use), writer.commit(first), writer.commit(again))
    assert writer.batches == 1 and writer.items == 3  # queued in one tick: one transaction for all three
    assert first.ingested == ledger.Ingested(accepted=2, duplicates=0)
    assert again.ingested == ledger.Ingested(accepted=1, duplicates=1)
    assert audited(database)[-1] == (principal.user_id, "openai", "ok", "r-resolve")
    model = database.tables.usage_record
    stored = database.call(lambda: sorted(r.request_id for r in model.select()))
    assert stored == ["u-1", "u-2", "u-3"]
    assert database.call(audit.verify, database).ok
