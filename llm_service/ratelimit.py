"""Per-user limits kept in this process: token buckets, and concurrent-stream slots.

Each user (the vault's user id, so limits follow the person, not the token) has a
bucket holding up to ``burst`` tokens, refilled at ``rate_per_minute``; a call takes
one token or fails with RESOURCE_EXHAUSTED / RATE_LIMITED and a RetryInfo saying
when the next token comes. A user may also hold at most ``max_streams`` StreamChat
calls open at once; a StreamChat takes its rate token and its slot together
(``StreamSlots.admit``: the slot is checked first, so a stream refused for its slot
costs no rate token). This is the embedded default: everything here is per process,
so N workers or replicas allow N times the limits; with ``RMLLM_REDIS_URL`` the
same limits are shared (``llm_service.redis_limits``). A bucket that has refilled
completely carries no information, so full buckets are dropped when the table
grows past its bound. A rate or a stream limit of 0 disables that limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from rmllm_common.errors import RateLimited

MAX_BUCKETS = 100_000
STREAMS_RETRY_SECONDS = 1.0


class Limiter(Protocol):
    """A per-user rate limit: ``take`` one call or raise RATE_LIMITED."""

    name: str

    async def take(self, user_id: str) -> None: ...


class StreamLease(Protocol):
    """One held stream slot; ``release`` it when the stream ends, however it ends."""

    async def release(self) -> None: ...


class StreamSlots(Protocol):
    """A per-user limit on open streams."""

    async def acquire(self, user_id: str) -> StreamLease: ...

    async def admit(self, user_id: str, limiter: Limiter) -> StreamLease:
        """A stream's rate-limit token and its slot, together.

        The slot is checked first: a stream refused for its slot takes no rate
        token, and one refused for its rate holds no slot.
        """
        ...


def rate_limited(name: str, per_minute: float, burst: float, wait: float) -> RateLimited:
    """The error of a call past its user's rate."""
    return RateLimited(
        f"too many {name} requests; the limit is {per_minute:g} a minute "
        f"(bursts of {burst:g}); retry in {wait:.1f}s",
        retry_after=wait,
    )


def too_many_streams(limit: int) -> RateLimited:
    """The error of a stream past its user's concurrent-stream limit."""
    return RateLimited(
        f"too many open streams; the limit is {limit} at once per user; "
        "retry when one of your streams has ended",
        retry_after=STREAMS_RETRY_SECONDS,
        metadata={"limit": "concurrent_streams"},
    )


class RateLimiter:
    """Token buckets keyed by user id, in this process."""

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

    async def take(self, user_id: str) -> None:
        """Take one token for ``user_id`` or raise RATE_LIMITED with the wait."""
        self.take_now(user_id)

    def take_now(self, user_id: str) -> None:
        """``take``, synchronously (the bucket is in memory)."""
        if self._per_second <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get(user_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._per_second)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self._per_second
            raise rate_limited(self.name, self._per_second * 60, self._burst, wait)
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


class NoLease:
    """A slot that holds nothing (no limit, or decided without the shared store)."""

    async def release(self) -> None:
        return None


NO_LEASE = NoLease()


class _LocalLease:
    __slots__ = ("_released", "_slots", "_user_id")

    def __init__(self, slots: LocalStreamSlots, user_id: str) -> None:
        self._slots = slots
        self._user_id = user_id
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots.give_back(self._user_id)


class LocalStreamSlots:
    """Open streams per user, counted in this process."""

    def __init__(self, max_streams: int) -> None:
        self._max = max_streams
        self._open: dict[str, int] = {}

    async def acquire(self, user_id: str) -> StreamLease:
        if self._max <= 0:
            return NO_LEASE
        held = self._open.get(user_id, 0)
        if held >= self._max:
            raise too_many_streams(self._max)
        self._open[user_id] = held + 1
        return _LocalLease(self, user_id)

    async def admit(self, user_id: str, limiter: Limiter) -> StreamLease:
        if self._max > 0 and self._open.get(user_id, 0) >= self._max:
            raise too_many_streams(self._max)
        await limiter.take(user_id)
        return await self.acquire(user_id)

    def give_back(self, user_id: str) -> None:
        held = self._open.get(user_id, 0) - 1
        if held > 0:
            self._open[user_id] = held
        else:
            self._open.pop(user_id, None)

    def held(self, user_id: str) -> int:
        return self._open.get(user_id, 0)


NO_STREAM_LIMIT = LocalStreamSlots(0)
