"""The change sequence: what made cached credentials stale, recorded in the changing transaction.

Every place that changes what a resolve would answer (a config put, update or
delete, a token revoke or expiry, a user disable, enable or delete, a budget or
policy change or crossing) calls ``record_change`` inside its own write
transaction, so the change and its sequence row commit together or not at all.
Sequence numbers come from the one-row ``invalidation_head`` counter, locked for
the write (``FOR UPDATE`` on PostgreSQL; SQLite write transactions are already
exclusive): they increase by exactly one per change across every vault process,
and commit in order, so a reader that sees a gap has really missed changes. On
PostgreSQL the same transaction also sends ``NOTIFY rmllm_invalidations`` (delivered
at commit) to wake every vault's watcher at once; SQLite watchers tail the table
(``vault_service.watch``). Old rows are pruned as new ones are written: a watcher
only ever needs the rows since the last one it saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Final

from vault_service.database import Database

CHANNEL: Final = "rmllm_invalidations"
KEEP_ROWS: Final = 10_000
PRUNE_EVERY: Final = 1_000
_HEAD = "SELECT seq FROM invalidation_head WHERE id = 1"
_HEAD_FOR_UPDATE = _HEAD + " FOR UPDATE"
_INSERT = "INSERT INTO invalidations (seq, time, kind, user_id, provider, token_id) VALUES (?, ?, ?, ?, ?, ?)"
_ADVANCE = "UPDATE invalidation_head SET seq = ? WHERE id = 1"
_PRUNE = "DELETE FROM invalidations WHERE seq <= ?"
_SINCE = (
    "SELECT seq, time, kind, user_id, provider, token_id FROM invalidations "
    "WHERE seq > ? ORDER BY seq LIMIT ?"
)


class Kind(Enum):
    """What changed; the values are the proto's ``InvalidationKind`` names without the prefix."""

    CONFIG_CHANGED = "CONFIG_CHANGED"
    TOKEN_REVOKED = "TOKEN_REVOKED"  # noqa: S105 - a kind, not a secret
    USER_CHANGED = "USER_CHANGED"
    BUDGET_CHANGED = "BUDGET_CHANGED"
    POLICY_CHANGED = "POLICY_CHANGED"


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the change sequence."""

    seq: int
    time: int
    kind: Kind
    user_id: str
    provider: str = ""
    token_id: str = ""


def record_change(db: Database, kind: Kind, user_id: str, *, provider: str = "", token_id: str = "") -> int:
    """Record a change inside the caller's write transaction; returns its sequence number.

    Call it in the same ``with db.write():`` block as the change itself.
    """
    (head,) = db.execute(_HEAD_FOR_UPDATE if db.is_postgres else _HEAD).fetchone()
    seq = int(head) + 1
    db.execute(_INSERT, (seq, time.time_ns() // 1000, kind.value, user_id, provider, token_id))
    db.execute(_ADVANCE, (seq,))
    if db.is_postgres:
        db.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(seq)))
    if seq % PRUNE_EVERY == 0:
        db.execute(_PRUNE, (seq - KEEP_ROWS,))
    return seq


def head(db: Database) -> int:
    """The sequence number of the last committed change (0: none yet)."""
    (seq,) = db.execute(_HEAD).fetchone()
    return int(seq)


def since(db: Database, after: int, limit: int = 1_000) -> list[Change]:
    """The committed changes after sequence ``after``, oldest first, at most ``limit``."""
    rows = db.execute(_SINCE, (after, limit)).fetchall()
    return [Change(int(r[0]), int(r[1]), Kind(r[2]), r[3], r[4], r[5]) for r in rows]
