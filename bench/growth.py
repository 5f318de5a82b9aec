"""Cost as the data grows: ``python -m bench.growth [--users N --configs N --usage N --audit N]``.

Fills a fresh vault database straight through bulk inserts (no RPCs): ``--users``
users with one token each, ``--configs`` provider configurations spread over them,
``--usage`` usage records (their daily rollups derived in SQL) of which one heavy
user owns ``--heavy-share`` within one month, and ``--audit`` hash-chained audit
rows. Then, printed as one JSON object:

* resolve: wall time (p50, p95) and CPU per resolve (lookup, decryption, use count
  and audit row committed: a batch of one) for 10 users, on the same database
  before the bulk data goes in (10 users) and after; their ratio;
* ``GetUsageSummary``'s query for the heavy user over the month (p50);
* ``ListUsageRecords``' pages (100 rows) through the heavy user's month (p50 per page);
* ``audit verify`` over every row: seconds, rows per second, seconds per 1M rows.

The default sizes are the issue's (100,000 / 300,000 / 2,000,000 / 1,000,000);
the smoke test runs it with tiny ones. SQLite by default (a temporary file);
``--database-url postgresql://...`` for PostgreSQL (an empty schema).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rmllm_common.secret import Secret
from vault_service import accounts, audit, configs, ledger, migrations
from vault_service.crypto import Keyring, key_id_of
from vault_service.database import Database

PROVIDERS = ("openai", "anthropic", "google", "openrouter", "grok")
MODELS = ("gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash")
KEYS = {"openai": "sk-proj-", "anthropic": "sk-ant-api03-", "google": "AIza"}
DAY_US = 86_400_000_000
CHUNK = 5_000


def _chunks(rows: Iterator[tuple[Any, ...]], size: int = CHUNK) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def bulk_insert(db: Database, table: str, columns: Sequence[str], rows: Iterator[tuple[Any, ...]]) -> int:
    """Insert ``rows`` in large multi-row statements, one transaction per chunk."""
    count = 0
    names = ", ".join(columns)

    def insert(batch: list[tuple[Any, ...]]) -> None:
        with db.write():
            cursor = db.db.cursor()
            if db.is_postgres:
                from psycopg2.extras import execute_values  # type: ignore[import-untyped]

                statement = f"INSERT INTO {table} ({names}) VALUES %s"  # noqa: S608 (fixed names)
                execute_values(cursor, statement, batch, page_size=len(batch))
            else:
                marks = ", ".join("?" for _ in columns)
                cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", batch)  # noqa: S608

    for batch in _chunks(rows):
        db.call(insert, batch)
        count += len(batch)
    return count


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Wall ms p50/p95 and CPU ms per call of ``fn`` (after one warm-up call)."""
    fn()
    walls: list[float] = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - started) * 1e3)
    cpu = (time.process_time() - cpu0) * 1e3 / repeat
    return {
        "p50_ms": statistics.median(walls),
        "p95_ms": _percentile(walls, 0.95),
        "cpu_ms": cpu,
        "n": repeat,
    }


def sample_users(db: Database, keyring: Keyring, count: int, prefix: str) -> list[str]:
    """``count`` real users (tokens, encrypted keys) made the way the vault makes them; their tokens."""
    tokens = []
    for i in range(count):
        principal, _, token = db.call(accounts.create_user, db, f"{prefix}{i}")
        for provider, key_prefix in KEYS.items():
            blob = keyring.encrypt(Secret(key_prefix + secrets.token_hex(20)), principal.user_id, provider)
            draft = configs.Draft(blob, key_id_of(blob), "…abcd", "", configs.Settings())
            db.call(configs.put, db, principal.user_id, provider, draft, "growth-put")
        tokens.append(token.reveal())
    return tokens


def resolve_cost(db: Database, keyring: Keyring, tokens: Sequence[str], repeat: int) -> dict[str, float]:
    counter = iter(range(10**9))

    def once() -> None:
        i = next(counter)
        db.call(configs.resolve, db, keyring, tokens[i % len(tokens)], "openai", f"growth-{i}")

    return _timed(once, repeat)


def fill(db: Database, args: argparse.Namespace, now: int) -> str:
    """The bulk data; returns the heavy user's id."""
    users, configs_count, usage, heavy_share = args.users, args.configs, args.usage, args.heavy_share
    created = now - 40 * DAY_US
    bulk_insert(
        db,
        "users",
        ("id", "name", "disabled", "create_time"),
        ((f"gu{i:07d}", f"growth{i:07d}", False, created) for i in range(users)),
    )
    bulk_insert(
        db,
        "tokens",
        ("id", "user_id", "token_hash", "create_time"),
        ((f"gt{i:07d}", f"gu{i:07d}", secrets.token_hex(32), created) for i in range(users)),
    )
    blob = b"\x01" + bytes(16) + bytes(12) + secrets.token_bytes(48)  # never decrypted: filler rows
    per_user = max(1, -(-configs_count // max(1, users)))
    bulk_insert(
        db,
        "provider_configs",
        (
            "user_id",
            "provider",
            "ciphertext",
            "key_id",
            "format_version",
            "key_hint",
            "base_url",
            "settings",
            "is_active",
            "create_time",
            "update_time",
            "usage_count",
        ),
        (
            (
                f"gu{i // per_user:07d}",
                PROVIDERS[i % per_user],
                blob,
                "0" * 32,
                1,
                "…abcd",
                "",
                "{}",
                True,
                created,
                created,
                0,
            )
            for i in range(configs_count)
        ),
    )
    heavy = "gu0000000"
    heavy_rows = int(usage * heavy_share)
    month = 30 * DAY_US

    def record(i: int) -> tuple[Any, ...]:
        user = heavy if i < heavy_rows else f"gu{1 + (i * 7919) % max(1, users - 1):07d}"
        when = now - 1 - (i * 104_729) % month
        return (
            f"g-{i:09d}",
            when,
            user,
            f"gt{user[2:]}",
            PROVIDERS[i % 3],
            MODELS[i % 3],
            "Chat",
            False,
            100 + i % 50,
            20 + i % 30,
            0,
            0,
            0,
            True,
            0.0001,
            120_000,
            None,
            "OK",
            "",
            0,
            when,
        )

    bulk_insert(
        db,
        "usage_records",
        (*(f.name for f in dataclasses.fields(ledger.Entry)), "ingest_time"),
        (record(i) for i in range(usage)),
    )
    day = (
        "to_char(to_timestamp(time / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        if db.is_postgres
        else "strftime('%Y-%m-%d', time / 1000000, 'unixepoch')"
    )
    failed = "CASE WHEN status_code = 'OK' THEN 0 ELSE 1 END"
    counters = (
        "calls, failed_calls, input_tokens, output_tokens, cache_read_input_tokens, "
        "cache_creation_input_tokens, reasoning_tokens, cost_usd"
    )
    sums = (
        f"COUNT(*), SUM({failed}), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_input_tokens), "
        "SUM(cache_creation_input_tokens), SUM(reasoning_tokens), SUM(cost_usd)"
    )
    keys = f"user_id, token_id, {day}, provider, model"
    rollup = (
        f"INSERT INTO usage_daily (user_id, token_id, day, provider, model, {counters}) "  # noqa: S608
        f"SELECT {keys}, {sums} FROM usage_records GROUP BY {keys}"
    )

    def derive() -> None:
        with db.write():
            db.db.execute_sql(rollup)

    db.call(derive)
    return heavy


def fill_audit(db: Database, rows: int, now: int) -> None:
    """``rows`` chained audit rows after the current head, and the head moved to the last."""
    head_seq, head_hash = db.call(
        lambda: db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    )
    state = {"seq": int(head_seq), "hash": head_hash}

    def chained() -> Iterator[tuple[Any, ...]]:
        for i in range(rows):
            seq = state["seq"] + 1
            event = audit.Event(f"gu{i % 1000:07d}", "config.resolve", "openai", "ok", f"growth-audit-{i}")
            digest = audit.chain_hash(state["hash"], seq, now + i, event)
            yield (seq, now + i, *event_fields(event), state["hash"], digest)
            state["seq"], state["hash"] = seq, digest

    bulk_insert(
        db,
        "audit_events",
        (
            "seq",
            "time",
            "actor",
            "action",
            "provider",
            "outcome",
            "request_id",
            "detail",
            "prev_hash",
            "hash",
        ),
        chained(),
    )

    def advance() -> None:
        with db.write():
            db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (state["seq"], state["hash"]))

    db.call(advance)


def event_fields(event: audit.Event) -> tuple[str, ...]:
    return (event.actor, event.action, event.provider, event.outcome, event.request_id, event.detail)


def run(args: argparse.Namespace) -> dict[str, Any]:
    keyring = Keyring(Secret(secrets.token_urlsafe(32)))
    now = ledger.now_us()
    result: dict[str, Any] = {
        "sizes": {"users": args.users, "configs": args.configs, "usage": args.usage, "audit": args.audit},
    }
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'growth.sqlite3'}"
        db = Database(url)
        try:
            migrations.migrate(db)
            result["backend"] = "postgresql" if db.is_postgres else "sqlite"
            tokens = sample_users(db, keyring, 10, "sample")
            result["resolve_10_users"] = resolve_cost(db, keyring, tokens, args.repeat)  # before the growth
            started = time.perf_counter()
            heavy = fill(db, args, now)
            result["fill_seconds"] = time.perf_counter() - started
            result["resolve_big"] = resolve_cost(db, keyring, tokens, args.repeat)  # the same users, after
            small, big = result["resolve_10_users"], result["resolve_big"]
            result["resolve_p50_ratio"] = big["p50_ms"] / small["p50_ms"]
            start = now - 30 * DAY_US
            result["usage_summary_heavy_month"] = _timed(
                lambda: db.call(ledger.summary, db, heavy, start, now), max(5, args.repeat // 20)
            )
            pages: list[float] = []
            token, rows = "", 0
            while len(pages) < args.pages:
                started = time.perf_counter()
                page = db.call(
                    lambda t=token: ledger.records(db, heavy, start, now, page_size=100, page_token=t)
                )
                pages.append((time.perf_counter() - started) * 1e3)
                rows += len(page.entries)
                token = page.next_token
                if not token:
                    break
            result["list_records_pages"] = {
                "pages": len(pages),
                "rows": rows,
                "p50_ms": statistics.median(pages),
                "p95_ms": _percentile(pages, 0.95),
            }
            started = time.perf_counter()
            fill_audit(db, args.audit, now)
            result["audit_fill_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            report = db.call(audit.verify, db)
            seconds = time.perf_counter() - started
            result["audit_verify"] = {
                "rows": report.rows,
                "ok": report.ok,
                "seconds": seconds,
                "rows_per_second": report.rows / seconds if seconds else 0.0,
                "seconds_per_million_rows": seconds * 1e6 / max(1, report.rows),
            }
        finally:
            db.close()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--configs", type=int, default=300_000)
    parser.add_argument("--usage", type=int, default=2_000_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument(
        "--heavy-share", type=float, default=0.01, help="the heavy user's share of the usage rows"
    )
    parser.add_argument("--repeat", type=int, default=400, help="resolves measured per database")
    parser.add_argument("--pages", type=int, default=50, help="ListUsageRecords pages measured at most")
    parser.add_argument(
        "--database-url", default="", help="an empty database (default: a temporary SQLite file)"
    )
    print(json.dumps(run(parser.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
