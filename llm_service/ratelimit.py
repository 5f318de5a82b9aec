"""Per-user token buckets: our own rate limits on Chat/StreamChat and on TestKey.

Each user (the vault's user id, so limits follow the person, not the token) has a
bucket holding up to ``burst`` tokens, refilled at ``rate_per_minute``; a call takes
one token or fails with RESOURCE_EXHAUSTED / RATE_LIMITED and a RetryInfo saying
when the next token comes. Buckets live in memory, per process; a bucket that has
refilled completely carries no information, so full buckets are dropped when the
table grows past its bound. A rate of 0 disables the limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rmllm_common.errors import RateLimited

MAX_BUCKETS = 100_000


class RateLimiter:
    """Token buckets keyed by user id."""

    __slots__ = ("_buckets", "_burst", "_clock", "_per_second", "name")

    def __init__(
        self,
        name: str,
        rate_per_minute: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._per_second = rate_per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        # user id -> (tokens after the last take, time of the last take)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, user_id: str) -> None:
        """Take one token for ``user_id`` or raise RATE_LIMITED with the wait."""
        if self._per_second <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get(user_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._per_second)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self._per_second
            raise RateLimited(
                f"too many {self.name} requests; the limit is {self._per_second * 60:g} a minute "
                f"(bursts of {self._burst:g}); retry in {wait:.1f}s",
                retry_after=wait,
            )
        if user_id not in self._buckets and len(self._buckets) >= MAX_BUCKETS:
            self._prune(now)
        self._buckets[user_id] = (tokens - 1.0, now)

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled (they would start full anyway)."""
        full = [
            user
            for user, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self._per_second >= self._burst
        ]
        for user in full:
            del self._buckets[user]
        if len(self._buckets) >= MAX_BUCKETS:  # all busy: drop the oldest half rather than grow
            for user in list(self._buckets)[: MAX_BUCKETS // 2]:
                del self._buckets[user]
