"""The tamper-evident audit log: hash-chained rows, appended under a lock, verified, and read.

Every audited operation calls ``append`` (or, for a group commit's batch,
``append_many``) inside its write transaction, so the operation and its audit row
commit together or not at all (no unaudited decrypt).
Rows carry who, what, which provider, the outcome and the request id, never a key
or a token. Row ``n`` stores ``hash_n = SHA-256(hash_{n-1} ‖ canonical row n)``;
``audit_head`` holds the last (seq, hash) and is locked for the append (``FOR
UPDATE`` on PostgreSQL; SQLite write transactions are already exclusive), so
concurrent vault processes extend one chain. ``verify`` recomputes the chain and
reports a modified, inserted or deleted row, and a head that does not match the
last row. The chain is unkeyed: it shows tampering by anyone who does not also
rewrite every later row; keep the printed head hash elsewhere to anchor it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vault_service import metrics
from vault_service.database import Database

GENESIS = "0" * 64
_BATCH = 500
_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
_HEAD_FOR_UPDATE = _HEAD + " FOR UPDATE"
_ADVANCE = "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1"
_INSERT_MANY = (
    "INSERT INTO audit_events (seq, time, actor, action, provider, outcome, request_id, detail, "
    "prev_hash, hash) VALUES "
)
_ROW_MARKS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ROWS_PER_INSERT = 16  # at most 16 statement texts, well inside SQLite's statement cache


@dataclass(frozen=True, slots=True)
class Event:
    """What one audit row says."""

    actor: str
    action: str
    provider: str = ""
    outcome: str = "ok"
    request_id: str = "-"
    detail: str = ""


def chain_hash(prev_hash: str, seq: int, when: int, event: Event) -> str:
    """The hash of one row, given the previous row's hash."""
    body = json.dumps(
        [seq, when, event.actor, event.action, event.provider, event.outcome, event.request_id, event.detail],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def append(db: Database, event: Event) -> int:
    """Add ``event`` to the chain; call inside the operation's write transaction."""
    return append_many(db, [event])


def append_many(db: Database, events: Sequence[Event]) -> int:
    """Add ``events`` to the chain in order (the head read and advanced once); call inside
    the write transaction. Returns the last row's seq (the head's when ``events`` is empty).

    The rows go in multi-row INSERTs of up to ``_ROWS_PER_INSERT``: each statement
    is a moment the writer thread lets go of the GIL and has to win it back from
    the event loop, so a batch costs a few statements, not one per row. Each row is
    one observation of the append metric, at its share of the batch's time."""
    started = time.perf_counter()
    head_seq, head_hash = db.execute(_HEAD_FOR_UPDATE if db.is_postgres else _HEAD).fetchone()
    seq, digest = int(head_seq), head_hash
    if not events:
        return seq
    rows: list[tuple[Any, ...]] = []
    for event in events:
        seq += 1
        when = time.time_ns() // 1000
        prev, digest = digest, chain_hash(digest, seq, when, event)
        rows.append(
            (
                seq,
                when,
                event.actor,
                event.action,
                event.provider,
                event.outcome,
                event.request_id,
                event.detail,
                prev,
                digest,
            )
        )
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        values = ", ".join([_ROW_MARKS] * len(chunk))
        db.execute(_INSERT_MANY + values, tuple(value for row in chunk for value in row))
    db.execute(_ADVANCE, (seq, digest))
    share = (time.perf_counter() - started) / len(events)
    for _ in events:
        metrics.audit_append(share)
    return seq


def record(db: Database, event: Event) -> int:
    """Append ``event`` in a transaction of its own (for outcomes that change nothing else)."""
    with db.write():
        return append(db, event)


@dataclass
class Report:
    """The outcome of ``verify``."""

    rows: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(db: Database) -> Iterator[Any]:
    model = db.tables.audit
    last = 0
    while True:
        batch = list(model.select().where(model.seq > last).order_by(model.seq).limit(_BATCH))
        if not batch:
            return
        yield from batch
        last = batch[-1].seq


def verify(db: Database) -> Report:
    """Recompute the whole chain; every inconsistency becomes one line in ``problems``."""
    report = Report()
    prev_seq, prev_hash = 0, GENESIS
    for row in _rows(db):
        report.rows += 1
        if row.seq != prev_seq + 1:
            report.problems.append(f"rows {prev_seq + 1}..{row.seq - 1} are missing (deleted)")
        if row.prev_hash != prev_hash:
            report.problems.append(f"row {row.seq}: does not follow row {prev_seq} (chain broken)")
        event = Event(row.actor, row.action, row.provider, row.outcome, row.request_id, row.detail)
        if chain_hash(row.prev_hash, row.seq, row.time, event) != row.hash:
            report.problems.append(f"row {row.seq}: content does not match its hash (modified)")
        prev_seq, prev_hash = row.seq, row.hash
    head = db.tables.audit_head.get_or_none(db.tables.audit_head.id == 1)
    if head is None:
        report.problems.append("the chain head is missing")
        return report
    report.head_seq, report.head_hash = head.seq, head.hash
    if (head.seq, head.hash) != (prev_seq, prev_hash):
        report.problems.append(
            f"the chain head says row {head.seq} is last but the log ends at row {prev_seq} "
            "(rows deleted from the end, or the head was altered)"
        )
    return report


@dataclass(frozen=True, slots=True)
class Row:
    """One audit row, as ``rmllm-vault audit list`` shows it."""

    seq: int
    time: int  # microseconds since the epoch
    actor: str
    action: str
    provider: str
    outcome: str
    request_id: str
    detail: str


def user_ids(db: Database, name: str) -> set[str]:
    """The ids a user name has had: the current user's, and those of deleted users of
    that name (their ``user.create`` rows say ``<id> <name>``)."""
    ids = {str(u.id) for u in db.tables.user.select().where(db.tables.user.name == name)}
    model = db.tables.audit
    for row in model.select(model.detail).where(model.action == "user.create"):
        words = row.detail.split()
        if len(words) == 2 and words[1] == name:
            ids.add(words[0])
    return ids


def rows(
    db: Database, *, since: int | None = None, action: str | None = None, users: set[str] | None = None
) -> Iterator[Row]:
    """Audit rows, oldest first: from ``since`` (microseconds) on, whose action matches the
    glob ``action`` (``user.*``), about one of ``users`` (as the actor, or the user id that
    starts an operator row's detail)."""
    model = db.tables.audit
    last = 0
    while True:
        query = model.select().where(model.seq > last)
        if since is not None:
            query = query.where(model.time >= since)
        batch = list(query.order_by(model.seq).limit(_BATCH))
        if not batch:
            return
        for row in batch:
            if action is not None and not fnmatch.fnmatchcase(row.action, action):
                continue
            if users is not None and row.actor not in users and row.detail.split(" ", 1)[0] not in users:
                continue
            yield Row(
                row.seq,
                row.time,
                row.actor,
                row.action,
                row.provider,
                row.outcome,
                row.request_id,
                row.detail,
            )
        last = batch[-1].seq
