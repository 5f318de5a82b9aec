"""Failed authentications: limited per peer and per token prefix, and audited as counts.

An unknown token (random, revoked, expired, or not a token at all) used to cost the
vault an fsync'd audit row per attempt, so anyone who could reach it could make it
write as fast as they could call. Now:

- ``AuthGuard.check`` runs before a token is looked up. Each failed authentication
  takes one unit from two token buckets: the caller's peer address (user RPCs, where
  the caller is the client itself; not the service RPCs, whose peer is the LLM
  service serving everyone) and the token's first 12 characters (any RPC). A key
  whose bucket is empty is refused with ``RESOURCE_EXHAUSTED`` / ``RATE_LIMITED`` and
  a ``RetryInfo``, before any database work. Successful calls take nothing. Buckets
  live in memory, per process, at most ``MAX_KEYS`` of them (the least recently
  used go first); a prefix is never logged or stored.
- Every failure (and every refusal by the limit) is counted, not written: once per
  interval, and at shutdown, each (action, outcome) with a non-zero count becomes
  one audit row, actor ``-``, detail ``count=N peers=P from=T0 to=T1``
  (microseconds). A known user's refusals (no key configured, a key that cannot be
  decrypted) are still audited one row each, by ``configs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from rmllm_common.errors import RateLimited
from vault_service import audit
from vault_service.database import Database

log = logging.getLogger(__name__)
MAX_KEYS: Final = 10_000
PREFIX_CHARS: Final = 12


@dataclass(frozen=True)
class Limits:
    """Failed-authentication budgets (a rate of 0 turns that limit off) and the audit interval."""

    peer_per_minute: float = 600.0
    peer_burst: int = 100
    prefix_per_minute: float = 60.0
    prefix_burst: int = 10
    audit_interval_seconds: float = 60.0


class FailureBuckets:
    """Token buckets by key, refilled at ``per_minute``, holding at most ``burst``; bounded in number."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (level, stamp)

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def _level(self, key: str, now: float) -> float:
        level, stamp = self._buckets.get(key, (self._burst, now))
        return min(self._burst, level + (now - stamp) * self._rate)

    def wait(self, key: str) -> float | None:
        """Seconds until ``key`` may fail again, or None if it may now."""
        if not self.enabled or key not in self._buckets:
            return None
        level = self._level(key, self._clock())
        return None if level >= 1.0 else (1.0 - level) / self._rate

    def spend(self, key: str) -> None:
        """Take one unit for a failure of ``key``."""
        if not self.enabled:
            return
        now = self._clock()
        self._buckets[key] = (max(0.0, self._level(key, now) - 1.0), now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)


@dataclass
class _Count:
    count: int = 0
    peers: set[str] = field(default_factory=set)
    first: int = 0
    last: int = 0


def peer_host(peer: str | None) -> str:
    """``ipv4:10.0.0.5:51234`` -> ``ipv4:10.0.0.5`` (the port changes per connection)."""
    if not peer:
        return "unknown"
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer


class AuthGuard:
    """The limits on failed authentications, and their aggregated audit rows."""

    def __init__(self, db: Database, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._limits = limits
        self._peers = FailureBuckets(limits.peer_per_minute, limits.peer_burst, clock)
        self._prefixes = FailureBuckets(limits.prefix_per_minute, limits.prefix_burst, clock)
        self._counts: dict[tuple[str, str], _Count] = {}
        self._task: asyncio.Task[None] | None = None

    def check(self, action: str, token: str, peer: str | None = None) -> None:
        """Refuse (RATE_LIMITED) a caller or token prefix that has failed too often."""
        waits = [self._prefixes.wait(token[:PREFIX_CHARS])]
        if peer is not None:
            waits.append(self._peers.wait(peer_host(peer)))
        longest = max((w for w in waits if w is not None), default=None)
        if longest is None:
            return
        self._count(action, "RATE_LIMITED", peer)
        raise RateLimited(
            "too many failed authentications from this caller or with this token; retry later",
            retry_after=math.ceil(longest),
        )

    def failed(
        self, action: str, token: str, peer: str | None = None, outcome: str = "TOKEN_INVALID"
    ) -> None:
        """Count a failed authentication against the token's prefix (and the peer, if given)."""
        if token:  # no token at all (no or malformed metadata) has no prefix to hold back
            self._prefixes.spend(token[:PREFIX_CHARS])
        if peer is not None:
            self._peers.spend(peer_host(peer))
        self._count(action, outcome, peer)

    def _count(self, action: str, outcome: str, peer: str | None) -> None:
        now = time.time_ns() // 1000
        entry = self._counts.setdefault((action, outcome), _Count(first=now))
        entry.count += 1
        entry.last = now
        if len(entry.peers) < MAX_KEYS:
            entry.peers.add(peer_host(peer))

    async def flush(self) -> int:
        """Write one audit row per (action, outcome) counted since the last flush; return how many.

        If the write fails, the counts are kept for the next flush.
        """
        counts, self._counts = self._counts, {}
        events = [
            audit.Event(
                actor="-",
                action=action,
                outcome=outcome,
                detail=f"count={c.count} peers={len(c.peers)} from={c.first} to={c.last}",
            )
            for (action, outcome), c in sorted(counts.items())
        ]
        if not events:
            return 0
        try:
            await self._db.run(_append_all, self._db, events)
        except BaseException:
            for key, c in counts.items():
                entry = self._counts.setdefault(key, _Count(first=c.first))
                entry.count += c.count
                entry.first, entry.last = min(entry.first, c.first), max(entry.last, c.last)
                entry.peers |= c.peers
            raise
        return len(events)

    def start(self) -> None:
        """Flush every ``audit_interval_seconds`` until ``stop``."""
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._limits.audit_interval_seconds)
            try:
                await self.flush()
            except Exception:
                log.exception("could not write the failed-authentication audit rows; will retry")

    async def stop(self) -> None:
        """Stop the timer and write what is still counted."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


def _append_all(db: Database, events: list[audit.Event]) -> None:
    with db.write():
        for event in events:
            audit.append(db, event)
