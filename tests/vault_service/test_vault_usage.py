"""The usage ledger over a real vault on SQLite and PostgreSQL: ingestion, queries, budgets, policy.

ReportUsage is idempotent on the request id (a retried batch adds nothing), its
rows are rolled up per day, provider and model, and a user reads only their own
usage. Budgets and policies set by the operator come back with the spend so far
in ResolveCredentials and AuthenticateToken.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SERVICE_TOKEN, Failure, Vault, md

from vault_service import accounts, invalidations, ledger, limits

Fails = Callable[[Awaitable[Any]], Awaitable[Failure]]
SERVICE = md(SERVICE_TOKEN)
DAY = 86_400


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    whole = int(seconds)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=int((seconds - whole) * 1e9))


def record(
    request_id: str,
    user_id: str,
    *,
    at: float,
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    token_id: str = "tok_x",  # noqa: S107 - a token id, not a token
    inputs: int = 10,
    outputs: int = 5,
    cost: float = 0.001,
    status: str = "OK",
    reason: str = "",
    **more: Any,
) -> pb.UsageRecord:
    return pb.UsageRecord(
        request_id=request_id,
        time=stamp(at),
        user_id=user_id,
        token_id=token_id,
        provider=provider,
        model=model,
        method=more.pop("method", "Chat"),
        input_tokens=inputs,
        output_tokens=outputs,
        usage_reported=True,
        cost_usd=cost,
        latency=duration_pb2.Duration(nanos=25_000_000),
        status_code=status,
        reason=reason,
        **more,
    )


async def report(vault: Vault, *batches: Sequence[pb.UsageRecord]) -> pb.ReportUsageResponse:
    async def messages() -> AsyncIterator[pb.ReportUsageRequest]:
        for batch in batches:
            yield pb.ReportUsageRequest(records=batch)

    reply: pb.ReportUsageResponse = await vault.stub.ReportUsage(messages(), metadata=SERVICE)
    return reply


def user(vault: Vault, name: str) -> tuple[str, str, str]:
    """(user id, token id, token) of a new user."""
    principal, token_id, token = vault.db.call(accounts.create_user, vault.db, name)
    return principal.user_id, token_id, token.reveal()


@pytest.fixture
async def ledger_vault(db_url: str, vault_factory: Callable[..., Awaitable[Vault]]) -> Vault:
    return await vault_factory(db_url)


async def test_ingestion_is_idempotent_and_rolled_up(ledger_vault: Vault) -> None:
    vault = ledger_vault
    alice, alice_token, alice_secret = user(vault, "alice")
    now = time.time()
    first = [
        record("r1", alice, at=now - 3, inputs=100, outputs=20, cost=0.01),
        record(
            "r2",
            alice,
            at=now - 2,
            provider="anthropic",
            model="claude-x",
            cost=0.02,
            cache_read_input_tokens=7,
            reasoning_tokens=3,
        ),
        record(
            "r3",
            alice,
            at=now - 1,
            status="UNAVAILABLE",
            reason="PROVIDER_UNAVAILABLE",
            cost=0.0,
            inputs=0,
            outputs=0,
        ),
    ]
    reply = await report(vault, first)
    assert (reply.accepted, reply.duplicates) == (3, 0)
    # The same batch again (a retry after a lost answer), plus one new record, in two messages.
    reply = await report(vault, first, [record("r4", alice, at=now, stream=True, method="StreamChat")])
    assert (reply.accepted, reply.duplicates) == (1, 3)

    summary = await vault.stub.GetUsageSummary(
        pb.GetUsageSummaryRequest(start_time=stamp(now - DAY)), metadata=md(alice_secret)
    )
    assert summary.totals.calls == 4
    assert summary.totals.failed_calls == 1
    assert summary.totals.input_tokens == 100 + 10 + 0 + 10
    assert summary.totals.cache_read_input_tokens == 7
    assert summary.totals.reasoning_tokens == 3
    assert summary.totals.cost_usd == pytest.approx(0.01 + 0.02 + 0.001)
    assert [(g.provider, g.totals.calls) for g in summary.by_provider] == [("anthropic", 1), ("openai", 3)]
    assert [(g.provider, g.model) for g in summary.by_model] == [
        ("anthropic", "claude-x"),
        ("openai", "gpt-4o-mini"),
    ]
    assert sum(g.totals.calls for g in summary.by_day) == 4
    only = await vault.stub.GetUsageSummary(
        pb.GetUsageSummaryRequest(start_time=stamp(now - DAY), provider="claude"), metadata=md(alice_secret)
    )
    assert only.totals.calls == 1 and [g.provider for g in only.by_provider] == ["anthropic"]
    # The rollups hold what the raw rows hold.
    rows = vault.db.call(lambda: vault.db.execute("SELECT SUM(calls) FROM usage_daily").fetchone())
    assert rows[0] == 4
    assert alice_token.startswith("tok_")


async def test_records_are_paged_newest_first_and_tokens_are_bound(ledger_vault: Vault, fails: Fails) -> None:
    vault = ledger_vault
    alice, _, alice_secret = user(vault, "alice")
    bob, _, bob_secret = user(vault, "bob")
    now = time.time()
    await report(vault, [record(f"a{i:02d}", alice, at=now - 100 + i) for i in range(25)])
    await report(vault, [record(f"b{i}", bob, at=now - 50 + i) for i in range(3)])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await vault.stub.ListUsageRecords(
            pb.ListUsageRecordsRequest(page_size=10, page_token=token), metadata=md(alice_secret)
        )
        seen += [r.request_id for r in page.records]
        assert all(r.user_id == alice for r in page.records)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"a{i:02d}" for i in reversed(range(25))]

    first = await vault.stub.ListUsageRecords(
        pb.ListUsageRecordsRequest(page_size=10), metadata=md(alice_secret)
    )
    # Bob cannot use Alice's token, nor the token with another query, nor a forged one.
    for metadata, request in (
        (md(bob_secret), pb.ListUsageRecordsRequest(page_size=10, page_token=first.next_page_token)),
        (
            md(alice_secret),
            pb.ListUsageRecordsRequest(page_size=10, page_token=first.next_page_token, provider="anthropic"),
        ),
        (md(alice_secret), pb.ListUsageRecordsRequest(page_token="not-a-token")),
        (md(alice_secret), pb.ListUsageRecordsRequest(page_token=first.next_page_token[:-3] + "AAA")),
    ):
        failed = await fails(vault.stub.ListUsageRecords(request, metadata=metadata))
        assert (failed.code, failed.reason, failed.fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            ["page_token"],
        )
    # Bob sees only his own records, and only his totals.
    page = await vault.stub.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=md(bob_secret))
    assert sorted(r.request_id for r in page.records) == ["b0", "b1", "b2"]
    summary = await vault.stub.GetUsageSummary(
        pb.GetUsageSummaryRequest(start_time=stamp(now - DAY)), metadata=md(bob_secret)
    )
    assert summary.totals.calls == 3
    assert bob != alice


async def test_bad_ranges_and_sizes_are_invalid(ledger_vault: Vault, fails: Fails) -> None:
    vault = ledger_vault
    _, _, secret = user(vault, "alice")
    now = time.time()
    calls = [
        ("GetUsageSummary", pb.GetUsageSummaryRequest(), "start_time"),  # unbounded
        (
            "GetUsageSummary",
            pb.GetUsageSummaryRequest(start_time=stamp(now), end_time=stamp(now - 60)),
            "end_time",
        ),
        ("GetUsageSummary", pb.GetUsageSummaryRequest(start_time=stamp(now - 400 * DAY)), "end_time"),
        (
            "GetUsageSummary",
            pb.GetUsageSummaryRequest(start_time=stamp(now - DAY), provider="nope"),
            "provider",
        ),
        (
            "ListUsageRecords",
            pb.ListUsageRecordsRequest(start_time=stamp(now), end_time=stamp(now - 1)),
            "end_time",
        ),
        ("ListUsageRecords", pb.ListUsageRecordsRequest(page_size=1001), "page_size"),
        ("ListUsageRecords", pb.ListUsageRecordsRequest(page_size=-1), "page_size"),
    ]
    for method, request, field in calls:
        failed = await fails(getattr(vault.stub, method)(request, metadata=md(secret)))
        assert failed.code == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
        assert failed.fields == [field], (method, request)


async def test_report_usage_needs_the_service_credential_and_valid_records(
    ledger_vault: Vault, fails: Fails
) -> None:
    vault = ledger_vault
    alice, _, secret = user(vault, "alice")

    async def one(rec: pb.UsageRecord) -> AsyncIterator[pb.ReportUsageRequest]:
        yield pb.ReportUsageRequest(records=[rec])

    failed = await fails(
        vault.stub.ReportUsage(one(record("x1", alice, at=time.time())), metadata=md(secret))
    )
    assert (failed.code, failed.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SERVICE_CREDENTIAL_REQUIRED")
    failed = await fails(
        vault.stub.ReportUsage(one(record("x2", alice, at=time.time(), inputs=-1)), metadata=SERVICE)
    )
    assert (failed.code, failed.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["records[0].tokens"])
    failed = await fails(
        vault.stub.ReportUsage(one(record("bad id!", alice, at=time.time())), metadata=SERVICE)
    )
    assert failed.fields == ["records[0].request_id"]
    count = vault.db.call(lambda: vault.db.execute("SELECT COUNT(*) FROM usage_records").fetchone()[0])
    assert count == 0


async def test_budgets_and_policies_come_back_with_the_spend(ledger_vault: Vault) -> None:
    vault = ledger_vault
    alice, token_id, secret = user(vault, "alice")
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key="sk-alice-0123456789abcdefWXYZ"),
        metadata=md(secret),
    )
    resolved = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=secret, provider="openai"), metadata=SERVICE
    )
    assert resolved.token_id == token_id
    assert list(resolved.budgets) == [] and not resolved.HasField("user_policy")

    db = vault.db

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return db.call(functools.partial(fn, **kwargs), *args)

    call(limits.set_budget, db, db.call(limits.user_target, db, "alice"), daily=1.0, monthly=20.0)
    call(limits.set_budget, db, db.call(limits.token_target, db, token_id), daily=0.5, monthly=None)
    call(
        limits.set_policy,
        db,
        db.call(limits.user_target, db, "alice"),
        allow="openai/*,anthropic/*",
        deny="openai/gpt-4o",
    )
    call(
        limits.set_policy,
        db,
        db.call(limits.token_target, db, token_id),
        allow="openai/gpt-4o-mini",
        deny=None,
    )
    other_id, _ = db.call(accounts.create_token, db, "alice")
    now = time.time()
    await report(
        vault,
        [
            record("s1", alice, at=now, token_id=token_id, cost=0.25),
            record("s2", alice, at=now, token_id=other_id, cost=0.5),
            record("s3", alice, at=now - 40 * DAY, token_id=token_id, cost=7.0),  # another month
        ],
    )
    resolved = await vault.stub.ResolveCredentials(
        pb.ResolveCredentialsRequest(user_token=secret, provider="openai"), metadata=SERVICE
    )
    got = {(b.scope, b.period): (b.limit_usd, round(b.spent_usd, 6)) for b in resolved.budgets}
    assert got == {
        (pb.LIMIT_SCOPE_USER, pb.BUDGET_PERIOD_DAILY): (1.0, 0.75),
        (pb.LIMIT_SCOPE_USER, pb.BUDGET_PERIOD_MONTHLY): (20.0, 0.75),
        (pb.LIMIT_SCOPE_TOKEN, pb.BUDGET_PERIOD_DAILY): (0.5, 0.25),
    }
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    resets = {b.period: b.reset_time.seconds for b in resolved.budgets}
    assert resets[pb.BUDGET_PERIOD_DAILY] == int((today + timedelta(days=1)).timestamp())
    assert datetime.fromtimestamp(resets[pb.BUDGET_PERIOD_MONTHLY], UTC).day == 1
    assert list(resolved.user_policy.allow) == ["openai/*", "anthropic/*"]
    assert list(resolved.user_policy.deny) == ["openai/gpt-4o"]
    assert list(resolved.token_policy.allow) == ["openai/gpt-4o-mini"]
    who = await vault.stub.AuthenticateToken(pb.AuthenticateTokenRequest(user_token=secret), metadata=SERVICE)
    assert who.token_id == token_id
    assert len(who.budgets) == 3 and list(who.token_policy.allow) == ["openai/gpt-4o-mini"]
    # Clearing removes the budgets; the policy stays.
    call(
        limits.set_budget, db, db.call(limits.user_target, db, "alice"), daily=None, monthly=None, clear=True
    )
    who = await vault.stub.AuthenticateToken(pb.AuthenticateTokenRequest(user_token=secret), metadata=SERVICE)
    assert [(b.scope, b.period) for b in who.budgets] == [(pb.LIMIT_SCOPE_TOKEN, pb.BUDGET_PERIOD_DAILY)]
    assert list(who.user_policy.deny) == ["openai/gpt-4o"]


def test_prune_keeps_the_rollups(database: Any) -> None:
    db = database
    principal, token_id, _ = db.call(accounts.create_user, db, "alice")
    now = ledger.now_us()
    old = ledger.Entry(
        "old",
        now - 10 * 86_400_000_000,
        principal.user_id,
        token_id,
        "openai",
        "m",
        "Chat",
        False,
        1,
        1,
        0,
        0,
        0,
        True,
        0.5,
        10,
        None,
        "OK",
        "",
        0,
    )
    new = ledger.Entry(
        "new",
        now,
        principal.user_id,
        token_id,
        "openai",
        "m",
        "Chat",
        False,
        1,
        1,
        0,
        0,
        0,
        True,
        0.25,
        10,
        None,
        "OK",
        "",
        0,
    )
    assert db.call(ledger.ingest, db, [old, new]) == ledger.Ingested(2, 0)
    assert db.call(ledger.prune, db, 5.0) == 1
    left = db.call(lambda: [r[0] for r in db.execute("SELECT request_id FROM usage_records").fetchall()])
    assert left == ["new"]
    total = db.call(ledger.summary, db, principal.user_id, now - 20 * 86_400_000_000, now + 1)
    assert total.totals.calls == 2 and total.totals.cost_usd == pytest.approx(0.75)


async def test_an_undecodable_report_message_is_malformed(ledger_vault: Vault, fails: Fails) -> None:
    chan: Any = ledger_vault.channel  # raw bytes: no stub types

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\x0a\xff\xff\xff"  # field 1, length far past the end

    call = chan.stream_unary("/realmultillm.vault.v1.VaultService/ReportUsage")(garbage(), metadata=SERVICE)
    failed = await fails(call)
    assert (failed.code, failed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


class _Changes:
    """The change sequence (``vault_service.invalidations``) as (kind, user id, token id), read back."""

    def __init__(self, db: Any) -> None:
        self._db = db

    @property
    def calls(self) -> list[tuple[str, str, str]]:
        changes = self._db.call(invalidations.since, self._db, 0)
        return [(c.kind.value, c.user_id, c.token_id) for c in changes[self._skip :]]

    _skip = 0

    def clear(self) -> None:
        self._skip += len(self.calls)


def test_ingestion_records_a_change_when_spend_crosses_a_budget(database: Any) -> None:
    db = database
    changes = _Changes(db)
    principal, token_id, _ = db.call(accounts.create_user, db, "alice")
    db.call(
        functools.partial(limits.set_budget, daily=1.0, monthly=None), db, limits.user_target(db, "alice")
    )
    db.call(
        functools.partial(limits.set_budget, daily=None, monthly=0.6), db, limits.token_target(db, token_id)
    )
    assert changes.calls == [
        ("BUDGET_CHANGED", principal.user_id, ""),
        ("BUDGET_CHANGED", principal.user_id, token_id),
    ]
    changes.clear()
    now = ledger.now_us()

    def spend(request_id: str, cost: float) -> None:
        entry = ledger.Entry(
            request_id,
            now,
            principal.user_id,
            token_id,
            "openai",
            "m",
            "Chat",
            False,
            1,
            1,
            0,
            0,
            0,
            True,
            cost,
            10,
            None,
            "OK",
            "",
            0,
        )
        db.call(ledger.ingest, db, [entry])

    spend("a", 0.5)  # under both
    assert changes.calls == []
    spend("b", 0.25)  # the token's monthly 0.6 crossed (0.5 -> 0.75)
    assert changes.calls == [("BUDGET_CHANGED", principal.user_id, token_id)]
    spend("b", 0.25)  # a duplicate adds nothing, crosses nothing
    spend("c", 0.1)  # over the token's budget already: no second change
    assert len(changes.calls) == 1
    spend("d", 0.2)  # the user's daily 1.0 crossed (0.85 -> 1.05)
    assert changes.calls[1:] == [("BUDGET_CHANGED", principal.user_id, "")]
    db.call(
        functools.partial(limits.set_policy, allow="openai/*", deny=None),
        db,
        limits.token_target(db, token_id),
    )
    assert changes.calls[-1] == ("POLICY_CHANGED", principal.user_id, token_id)


async def test_ids_are_free_text_but_bounded(ledger_vault: Vault, fails: Fails) -> None:
    vault = ledger_vault
    alice, _, secret = user(vault, "alice")
    # Model names come from callers and providers: anything printable is stored as it is.
    odd = "ft:gpt-4o-mini:org#1 (eval) ünï"
    reply = await report(vault, [record("odd1", alice, at=time.time(), model=odd)])
    assert reply.accepted == 1
    page = await vault.stub.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=md(secret))
    assert [r.model for r in page.records] == [odd]

    async def one(rec: pb.UsageRecord) -> AsyncIterator[pb.ReportUsageRequest]:
        yield pb.ReportUsageRequest(records=[rec])

    for bad in ("line\nbreak", "m" * 257):
        failed = await fails(
            vault.stub.ReportUsage(one(record("odd2", alice, at=time.time(), model=bad)), metadata=SERVICE)
        )
        assert failed.fields == ["records[0].model"]
