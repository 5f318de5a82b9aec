"""The usage ledger: idempotent ingestion of call records, daily rollups, and the queries on them.

``ingest`` stores one batch in one write transaction: the records go in with
``ON CONFLICT (request_id) DO NOTHING RETURNING request_id``, so a record already
stored (a retried batch, two vaults given the same batch) is a duplicate and adds
nothing; only the rows actually inserted are added to ``usage_daily`` (per user,
token, UTC day, provider and model), and budgets those rows cross are reported
to ``limits`` in the same transaction. Summaries and budget spend read the
rollups, never the raw rows, so they cost the same however many calls were
made; raw rows are kept for ``retention`` and pruned by ``prune``.
``records`` pages one user's raw rows newest first with keyset page tokens bound
to the user and the query. Times are microseconds since the epoch (UTC).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final

from rmllm_common.errors import invalid
from vault_service import limits
from vault_service.database import Database

MAX_BATCH: Final = 1_000
MAX_RANGE_DAYS: Final = 366
DEFAULT_LIST_DAYS: Final = 31
MAX_PAGE_SIZE: Final = 1_000
DEFAULT_PAGE_SIZE: Final = 100
_CHUNK = 400  # rows per INSERT statement (21 parameters each stays under SQLite's limit)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_TEXT = 256  # user, token, provider and model ids: free text from the LLM service and providers
_STATUS = re.compile(r"^[A-Z_]{1,40}$")
_REASON = re.compile(r"^[A-Z0-9_]{0,64}$")
_METHODS = frozenset({"Chat", "StreamChat", "TestKey", "ListModels"})
_DAY_US = 86_400_000_000


def now_us() -> int:
    """The current time in microseconds."""
    return time.time_ns() // 1000


def day_of(micros: int) -> str:
    """The UTC day (``YYYY-MM-DD``) of a time."""
    return datetime.fromtimestamp(micros / 1_000_000, UTC).strftime("%Y-%m-%d")


def _text(value: str) -> bool:
    """An id the ledger can store and show: short, and no control characters."""
    return len(value) <= MAX_TEXT and value.isprintable()


@dataclass(frozen=True, slots=True)
class Entry:
    """One call as stored: the proto ``UsageRecord`` in the database's units."""

    request_id: str
    time: int
    user_id: str
    token_id: str
    provider: str
    model: str
    method: str
    stream: bool
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    reasoning_tokens: int
    usage_reported: bool
    cost_usd: float
    latency_us: int
    ttft_us: int | None
    status_code: str
    reason: str
    retries: int

    def check(self, where: str) -> None:
        """Refuse a record that cannot be stored as it is (a bug in the reporter)."""
        problems = [
            ("request_id", _REQUEST_ID.match(self.request_id) is not None),
            ("user_id", bool(self.user_id) and _text(self.user_id)),
            ("token_id", _text(self.token_id)),
            ("provider", bool(self.provider) and _text(self.provider)),
            ("model", _text(self.model)),
            ("method", self.method in _METHODS),
            ("time", self.time > 0),
            ("status_code", _STATUS.match(self.status_code) is not None),
            ("reason", _REASON.match(self.reason) is not None),
            ("cost_usd", math.isfinite(self.cost_usd) and self.cost_usd >= 0),
            ("latency", self.latency_us >= 0 and (self.ttft_us is None or self.ttft_us >= 0)),
            ("retries", 0 <= self.retries <= 100),
            (
                "tokens",
                min(
                    self.input_tokens,
                    self.output_tokens,
                    self.cache_read_input_tokens,
                    self.cache_creation_input_tokens,
                    self.reasoning_tokens,
                )
                >= 0,
            ),
        ]
        for name, ok in problems:
            if not ok:
                raise invalid(f"{where}.{name}", "out of range or malformed")

    @property
    def failed(self) -> bool:
        return self.status_code != "OK"


_COLUMNS: Final = tuple(f.name for f in fields(Entry))
_INSERT_HEAD = f"INSERT INTO usage_records ({', '.join(_COLUMNS)}, ingest_time) VALUES "  # noqa: S608 - fixed names
_INSERT_ROW = "(" + ", ".join("?" for _ in range(len(_COLUMNS) + 1)) + ")"
_INSERT_TAIL = " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
_COUNTERS: Final = (
    "calls",
    "failed_calls",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_tokens",
    "cost_usd",
)
_ROLLUP = (
    "INSERT INTO usage_daily (user_id, token_id, day, provider, model, "  # noqa: S608 - fixed names
    + ", ".join(_COUNTERS)
    + ") VALUES (?, ?, ?, ?, ?, "
    + ", ".join("?" for _ in _COUNTERS)
    + ") ON CONFLICT (user_id, day, provider, model, token_id) DO UPDATE SET "
    + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in _COUNTERS)
)


@dataclass(slots=True)
class Totals:
    """Usage added up (the proto ``UsageTotals``)."""

    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0

    def add_entry(self, entry: Entry) -> None:
        self.calls += 1
        self.failed_calls += int(entry.failed)
        self.input_tokens += entry.input_tokens
        self.output_tokens += entry.output_tokens
        self.cache_read_input_tokens += entry.cache_read_input_tokens
        self.cache_creation_input_tokens += entry.cache_creation_input_tokens
        self.reasoning_tokens += entry.reasoning_tokens
        self.cost_usd += entry.cost_usd

    def add(self, other: Totals) -> None:
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _COUNTERS)


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one batch did: records stored, and records that were already there."""

    accepted: int
    duplicates: int


def check_batch(entries: Sequence[Entry]) -> None:
    """Refuse a batch the ledger would not store: an invalid record, or too many."""
    for index, entry in enumerate(entries):
        entry.check(f"records[{index}]")
    if len(entries) > MAX_BATCH:
        raise invalid("records", f"at most {MAX_BATCH} records per message")


def ingest(db: Database, entries: Sequence[Entry]) -> Ingested:
    """Store a batch idempotently, roll it up, and note budgets it crossed (one transaction)."""
    check_batch(entries)
    with db.write():
        return store(db, entries)


def store(db: Database, entries: Sequence[Entry]) -> Ingested:
    """``ingest``'s writes, for a batch already checked; call inside a write transaction
    (the vault's group writer runs it in the transaction of the batch it belongs to)."""
    unique = list({entry.request_id: entry for entry in entries}.values())
    ingest_time = now_us()
    inserted: set[str] = set()
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start : start + _CHUNK]
        params: list[Any] = []
        for entry in chunk:
            params.extend(getattr(entry, name) for name in _COLUMNS)
            params.append(ingest_time)
        sql = _INSERT_HEAD + ", ".join(_INSERT_ROW for _ in chunk) + _INSERT_TAIL
        inserted.update(row[0] for row in db.execute(sql, tuple(params)).fetchall())
    stored = [entry for entry in unique if entry.request_id in inserted]
    groups: dict[tuple[str, str, str, str, str], Totals] = {}
    for entry in stored:
        key = (entry.user_id, entry.token_id, day_of(entry.time), entry.provider, entry.model)
        groups.setdefault(key, Totals()).add_entry(entry)
    for key in sorted(groups):  # one order in every transaction: no lock-order deadlocks
        db.execute(_ROLLUP, (*key, *groups[key].values()))
    limits.note_spend(
        db,
        [limits.Spend(e.user_id, e.token_id, day_of(e.time), e.cost_usd) for e in stored if e.cost_usd],
    )
    return Ingested(accepted=len(stored), duplicates=len(entries) - len(stored))


def prune(db: Database, retention_days: float, now: int | None = None) -> int:
    """Delete raw records older than ``retention_days``; the rollups stay. Returns the count."""
    cutoff = (now if now is not None else now_us()) - int(retention_days * _DAY_US)
    with db.write():
        return int(db.execute("DELETE FROM usage_records WHERE time < ?", (cutoff,)).rowcount)


# Queries.


@dataclass(frozen=True, slots=True)
class Group:
    """The usage of one day, provider, model or user."""

    day: str = ""
    provider: str = ""
    model: str = ""
    user: str = ""
    totals: Totals = field(default_factory=Totals)


@dataclass(frozen=True, slots=True)
class Summary:
    """A range's totals and its breakdowns."""

    totals: Totals
    by_day: list[Group]
    by_provider: list[Group]
    by_model: list[Group]


def check_range(start: int | None, end: int | None, *, default_days: int | None = None) -> tuple[int, int]:
    """A ``[start, end)`` range in microseconds: bounded, not inverted, at most a year long."""
    end_us = end if end is not None else now_us()
    if start is None:
        if default_days is None:
            raise invalid("start_time", "required: the range must have a start")
        start = end_us - default_days * _DAY_US
    if end_us <= start:
        raise invalid("end_time", "must be after start_time")
    if end_us - start > MAX_RANGE_DAYS * _DAY_US:
        raise invalid("end_time", f"the range may span at most {MAX_RANGE_DAYS} days")
    return start, end_us


def _day_bounds(start: int, end: int) -> tuple[str, str]:
    """The first and last UTC day a ``[start, end)`` range touches."""
    return day_of(start), day_of(end - 1)


def _rollup_rows(db: Database, where: str, params: tuple[Any, ...], by: Sequence[str]) -> list[Any]:
    sums = ", ".join(f"SUM({c})" for c in _COUNTERS)
    keys = ", ".join(by)
    group = f" GROUP BY {keys} ORDER BY {keys}" if by else ""
    select = f"SELECT {keys + ', ' if by else ''}{sums} FROM usage_daily d WHERE {where}{group}"  # noqa: S608
    return list(db.execute(select, params).fetchall())


def _totals(values: Sequence[Any]) -> Totals:
    calls, failed, inputs, outputs, cache_read, cache_creation, reasoning = (int(v or 0) for v in values[:-1])
    return Totals(
        calls, failed, inputs, outputs, cache_read, cache_creation, reasoning, float(values[-1] or 0)
    )


def summary(db: Database, user_id: str, start: int, end: int, provider: str = "") -> Summary:
    """One user's usage over the UTC days ``[start, end)`` touches, from the rollups."""
    first, last = _day_bounds(start, end)
    where = "d.user_id = ? AND d.day >= ? AND d.day <= ?"
    params: tuple[Any, ...] = (user_id, first, last)
    if provider:
        where += " AND d.provider = ?"
        params += (provider,)
    total_row = _rollup_rows(db, where, params, ())[0]
    by_day = [Group(day=r[0], totals=_totals(r[1:])) for r in _rollup_rows(db, where, params, ("day",))]
    by_provider = [
        Group(provider=r[0], totals=_totals(r[1:])) for r in _rollup_rows(db, where, params, ("provider",))
    ]
    by_model = [
        Group(provider=r[0], model=r[1], totals=_totals(r[2:]))
        for r in _rollup_rows(db, where, params, ("provider", "model"))
    ]
    return Summary(_totals(total_row), by_day, by_provider, by_model)


REPORT_KEYS: Final = {
    "user": ("u.name",),
    "provider": ("d.provider",),
    "model": ("d.provider", "d.model"),
    "day": ("d.day",),
}


def report(db: Database, start: int, end: int, by: str) -> list[Group]:
    """Every user's usage over the UTC days ``[start, end)`` touches, grouped for operators."""
    first, last = _day_bounds(start, end)
    keys = REPORT_KEYS[by]
    sums = ", ".join(f"SUM(d.{c})" for c in _COUNTERS)
    joined = ", ".join(keys)
    sql = (
        f"SELECT {joined}, {sums} FROM usage_daily d LEFT OUTER JOIN users u ON u.id = d.user_id "  # noqa: S608
        f"WHERE d.day >= ? AND d.day <= ? GROUP BY {joined} ORDER BY {joined}"
    )
    groups = []
    for row in db.execute(sql, (first, last)).fetchall():
        named = dict(zip(keys, row, strict=False))
        groups.append(
            Group(
                day=named.get("d.day", ""),
                provider=named.get("d.provider", ""),
                model=named.get("d.model", ""),
                user=named.get("u.name") or "",
                totals=_totals(row[len(keys) :]),
            )
        )
    return groups


# Records, newest first, with page tokens.


@dataclass(frozen=True, slots=True)
class Page:
    """One page of records and the token of the next (empty on the last page)."""

    entries: list[Entry]
    next_token: str


def _query_digest(user_id: str, start: int | None, end: int | None, provider: str) -> str:
    text = json.dumps([user_id, start, end, provider])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _decode_token(token: str, digest: str) -> tuple[int, int, int, str]:
    """(range start, range end, last time, last request id) of a page token of this query."""
    bad = invalid("page_token", "malformed, or issued for another query or user; start again without it")
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if data["q"] != digest:
            raise bad
        start, end, last_time, last_id = int(data["s"]), int(data["e"]), int(data["t"]), str(data["r"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError) as exc:
        raise bad from exc
    if not _REQUEST_ID.match(last_id) or end <= start:
        raise bad
    return start, end, last_time, last_id


def _encode_token(digest: str, start: int, end: int, last: Entry) -> str:
    data = {"q": digest, "s": start, "e": end, "t": last.time, "r": last.request_id}
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def records(
    db: Database,
    user_id: str,
    start: int | None,
    end: int | None,
    *,
    page_size: int,
    page_token: str = "",
    provider: str = "",
) -> Page:
    """One user's records in ``[start, end)``, newest first, one page at a time.

    The token carries the range as the first page resolved it (an unset end is
    "now" once, not on every page) and the last row shown (keyset paging on
    ``(time, request_id)``), plus a digest of the user and the query as asked,
    so a token of another user or query is refused.
    """
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise invalid("page_size", f"from 1 to {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})")
    size = page_size or DEFAULT_PAGE_SIZE
    digest = _query_digest(user_id, start, end, provider)
    model = db.tables.usage_record
    if page_token:
        range_start, range_end, last_time, last_id = _decode_token(page_token, digest)
        after = (model.time < last_time) | ((model.time == last_time) & (model.request_id < last_id))
    else:
        range_start, range_end = check_range(start, end, default_days=DEFAULT_LIST_DAYS)
        after = None
    query = model.select().where(model.user_id == user_id, model.time >= range_start, model.time < range_end)
    if provider:
        query = query.where(model.provider == provider)
    if after is not None:
        query = query.where(after)
    rows = list(query.order_by(model.time.desc(), model.request_id.desc()).limit(size + 1))
    entries = [_entry(row) for row in rows[:size]]
    token = _encode_token(digest, range_start, range_end, entries[-1]) if len(rows) > size else ""
    return Page(entries, token)


def _entry(row: Any) -> Entry:
    return Entry(**{name: getattr(row, name) for name in _COLUMNS})
