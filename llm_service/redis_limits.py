"""Per-user limits shared by every LLM process and replica, kept in Redis (``RMLLM_REDIS_URL``).

Each limit decision is one atomic Lua script, so one round trip per call:

- rate limits are GCRA (the token bucket of ``ratelimit``, stored as one
  "theoretical arrival time" per user and limit, expiring once full again);
- open streams are a sorted set per user of lease ids scored by their expiry:
  acquiring drops expired leases, counts, and adds one if under the limit;
  a StreamChat takes its rate token and its slot in one script (``admit``): the
  slot is checked first, so a stream refused for its slot takes no rate token,
  and one refused for its rate holds no slot;
  ending the stream (however it ends: done, error, cancel) removes it; a process
  renews all its leases in one script call every third of ``lease_seconds``, so
  the slots of a replica that dies free themselves when its leases expire.

The client is ``redis_pipe``'s: one connection per process on which the calls of
one event-loop tick go out as one pipeline (about a fifth of redis-py's client CPU
per call). Time is Redis's own (``TIME``), so replica clocks never matter. The limit values
are read by the script from the hash ``<prefix>limits`` (fields
``chat_rate_per_minute``, ``chat_burst``, ``testkey_rate_per_minute``,
``testkey_burst``, ``max_concurrent_streams``), falling back to the settings: an
operator changes a limit for every replica at once with ``HSET``, no restart.

When Redis cannot be reached, ``failure_mode`` decides: ``open`` (the default)
lets calls through unlimited, ``closed`` refuses them with UNAVAILABLE /
RATE_LIMITER_UNAVAILABLE. The outage is logged once when it starts and once when
it ends, never per call; ``stats`` counts outages and the calls decided without
Redis, and so do the metrics ``rmllm_llm_redis_outages_total`` and
``rmllm_llm_calls_without_redis_total``. During an outage Redis is tried again at most
once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from redis.exceptions import RedisError

from llm_service import metrics
from llm_service.ratelimit import NO_LEASE, Limiter, StreamLease, rate_limited, too_many_streams
from llm_service.redis_pipe import PipelinedRedis
from rmllm_common.errors import RateLimiterUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_SECONDS: Final = 1.0
SOCKET_TIMEOUT_SECONDS: Final = 0.5
FAILURE_MODES: Final = ("open", "closed")

# GCRA, as Lua functions both the rate script and the stream-admission script use.
# ``gcra`` decides without writing: the wait in microseconds (0: allowed), the rate,
# the burst, and the new theoretical arrival time that ``gcra_take`` stores.
_GCRA_FUNCTIONS: Final = """
local function gcra(bucket, limits, rate, burst, name, now)
  rate = tonumber(redis.call('HGET', limits, name .. '_rate_per_minute') or rate)
  burst = tonumber(redis.call('HGET', limits, name .. '_burst') or burst)
  if rate <= 0 then return 0, rate, burst, nil end
  local interval = 60000000 / rate
  local tat = tonumber(redis.call('GET', bucket) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then return allow_at - now, rate, burst, nil end
  return 0, rate, burst, new_tat
end
local function gcra_take(bucket, new_tat, now)
  if new_tat then
    redis.call('SET', bucket, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# KEYS: bucket, limits hash. ARGV: default rate per minute, default burst, limit name.
# Returns {allowed, wait in microseconds, rate per minute, burst} (numbers as strings).
_GCRA: Final = (
    _GCRA_FUNCTIONS
    + """
local wait, rate, burst, new_tat = gcra(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], now)
if wait > 0 then return {0, tostring(wait), tostring(rate), tostring(burst)} end
gcra_take(KEYS[1], new_tat, now)
return {1, '0', tostring(rate), tostring(burst)}
"""
)

# A StreamChat's rate token and stream slot, in one step. The slot is checked first:
# a stream refused for its slot takes no rate token, one refused for its rate no slot.
# KEYS: bucket, limits hash, the user's stream set. ARGV: default rate per minute,
# default burst, limit name, default stream limit, lease id, lease ms.
# Returns {outcome, wait in microseconds, rate, burst, stream limit} (as strings), the
# outcome 1 (admitted, lease added), 2 (admitted, no stream limit), 0 (rate refused),
# 3 (too many open streams).
_ADMIT: Final = (
    _GCRA_FUNCTIONS
    + """
local limit = tonumber(redis.call('HGET', KEYS[2], 'max_concurrent_streams') or ARGV[4])
local now_ms = math.floor(now / 1000)
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[3]) >= limit then return {3, '0', '0', '0', tostring(limit)} end
end
local wait, rate, burst, new_tat = gcra(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], now)
if wait > 0 then return {0, tostring(wait), tostring(rate), tostring(burst), tostring(limit)} end
gcra_take(KEYS[1], new_tat, now)
if limit <= 0 then return {2, '0', tostring(rate), tostring(burst), tostring(limit)} end
local lease = tonumber(ARGV[6])
redis.call('ZADD', KEYS[3], now_ms + lease, ARGV[5])
redis.call('PEXPIRE', KEYS[3], lease * 2)
return {1, '0', tostring(rate), tostring(burst), tostring(limit)}
"""
)

# KEYS: the user's stream set, limits hash. ARGV: default limit, lease id, lease ms.
# Returns {allowed (1, 0, or 2 = no limit), open streams, limit}.
_ACQUIRE: Final = """
local limit = tonumber(redis.call('HGET', KEYS[2], 'max_concurrent_streams') or ARGV[1])
if limit <= 0 then return {2, 0, limit} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if open >= limit then return {0, open, limit} end
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {1, open + 1, limit}
"""

# KEYS: stream sets (one per lease). ARGV: lease ms, then the lease ids in KEYS' order.
_RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease * 2)
end
return #KEYS
"""


@dataclass
class RedisStats:
    """What metrics read: outages started, and calls decided without Redis."""

    outages: int = 0
    calls_without_redis: int = 0


class SharedStore:
    """The Redis client, its scripts, and the outage state of this process."""

    def __init__(self, url: str, *, prefix: str, failure_mode: str, client: Any | None = None) -> None:
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}")
        self.client: Any = client or PipelinedRedis(url, timeout=SOCKET_TIMEOUT_SECONDS)
        self.prefix = prefix
        self.fail_open = failure_mode == "open"
        self.limits_key = f"{prefix}limits"
        self.gcra = self.client.register_script(_GCRA)
        self.acquire = self.client.register_script(_ACQUIRE)
        self.admit = self.client.register_script(_ADMIT)
        self.renew = self.client.register_script(_RENEW)
        self.stats = RedisStats()
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    async def run(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call()``'s answer, or None when Redis is unavailable (after counting it)."""
        now = time.monotonic()
        if self._down_since is not None and now < self._retry_at:
            self.stats.calls_without_redis += 1
            metrics.call_without_redis()
            return None
        try:
            answer = await call()
        except (RedisError, OSError) as exc:
            self.stats.calls_without_redis += 1
            metrics.call_without_redis()
            self._retry_at = now + RETRY_SECONDS
            if self._down_since is None:
                self._down_since = now
                self.stats.outages += 1
                metrics.redis_outage()
                log.error(
                    "redis is unavailable (%s): shared limits are %s until it is back",
                    type(exc).__name__,
                    "not enforced (fail-open)" if self.fail_open else "refusing calls (fail-closed)",
                    extra={"event": "redis_down"},
                )
            return None
        if self._down_since is not None:
            log.warning(
                "redis is back: shared limits enforced again after %.1fs",
                now - self._down_since,
                extra={"event": "redis_up"},
            )
            self._down_since = None
        return answer

    def unavailable(self) -> RateLimiterUnavailable:
        """The error of a fail-closed call during an outage."""
        return RateLimiterUnavailable(
            "the shared rate limiter is unavailable; try again shortly", retry_after=RETRY_SECONDS
        )

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


class RedisRateLimiter:
    """A per-user rate limit shared through Redis (GCRA, one script call per take)."""

    def __init__(self, store: SharedStore, name: str, field: str, rate_per_minute: float, burst: int) -> None:
        self.name = name
        self._store = store
        self._field = field
        self._defaults = (repr(float(rate_per_minute)), str(int(burst)), field)
        self._key_prefix = f"{store.prefix}rate:{field}:"

    def shares(self, store: SharedStore) -> bool:
        """Whether this limit lives in ``store`` (so a script there can take its tokens)."""
        return store is self._store

    def bucket(self, user_id: str) -> str:
        return self._key_prefix + user_id

    @property
    def defaults(self) -> tuple[str, str, str]:
        """The script arguments: default rate per minute, default burst, limit name."""
        return self._defaults

    async def take(self, user_id: str) -> None:
        store = self._store
        keys = (self.bucket(user_id), store.limits_key)
        answer = await store.run(lambda: store.gcra(keys=keys, args=self._defaults))
        if answer is None:
            if store.fail_open:
                return
            raise store.unavailable()
        allowed, wait_us, rate, burst = answer
        if int(allowed) != 1:
            raise rate_limited(self.name, float(rate), float(burst), int(float(wait_us)) / 1e6)


class _RedisLease:
    __slots__ = ("_key", "_lease_id", "_slots")

    def __init__(self, slots: RedisStreamSlots, key: str, lease_id: str) -> None:
        self._slots = slots
        self._key = key
        self._lease_id = lease_id

    async def release(self) -> None:
        await self._slots.give_back(self, self._key, self._lease_id)


class RedisStreamSlots:
    """Open streams per user, counted in Redis with expiring, renewed leases."""

    def __init__(self, store: SharedStore, max_streams: int, lease_seconds: float) -> None:
        self._store = store
        self._default = str(int(max_streams))
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._lease_seconds = lease_seconds
        self._held: dict[_RedisLease, tuple[str, str]] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, user_id: str) -> StreamLease:
        store = self._store
        key = f"{store.prefix}streams:{user_id}"
        lease_id = secrets.token_hex(8)
        args = (self._default, lease_id, str(self._lease_ms))
        answer = await store.run(lambda: store.acquire(keys=(key, store.limits_key), args=args))
        if answer is None:
            if store.fail_open:
                return NO_LEASE
            raise store.unavailable()
        allowed, _open, limit = (int(v) for v in answer)
        if allowed == 2:
            return NO_LEASE
        if allowed != 1:
            raise too_many_streams(limit)
        return self._hold(key, lease_id)

    async def admit(self, user_id: str, limiter: Limiter) -> StreamLease:
        """The rate token and the slot in one script call, when the limit is in this store."""
        if not isinstance(limiter, RedisRateLimiter) or not limiter.shares(self._store):
            # A limit kept elsewhere (never so in ``build_limits``): two steps, the rate first.
            await limiter.take(user_id)
            return await self.acquire(user_id)
        store = self._store
        key = f"{store.prefix}streams:{user_id}"
        lease_id = secrets.token_hex(8)
        keys = (limiter.bucket(user_id), store.limits_key, key)
        args = (*limiter.defaults, self._default, lease_id, str(self._lease_ms))
        answer = await store.run(lambda: store.admit(keys=keys, args=args))
        if answer is None:
            if store.fail_open:
                return NO_LEASE
            raise store.unavailable()
        outcome, wait_us, rate, burst, limit = answer
        outcome = int(outcome)
        if outcome == 1:
            return self._hold(key, lease_id)
        if outcome == 2:
            return NO_LEASE
        if outcome == 3:
            raise too_many_streams(int(float(limit)))
        raise rate_limited(limiter.name, float(rate), float(burst), int(float(wait_us)) / 1e6)

    def _hold(self, key: str, lease_id: str) -> _RedisLease:
        lease = _RedisLease(self, key, lease_id)
        self._held[lease] = (key, lease_id)
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="redis-stream-leases")
        return lease

    async def give_back(self, lease: _RedisLease, key: str, lease_id: str) -> None:
        if self._held.pop(lease, None) is None:
            return
        store = self._store
        # Shielded: a cancelled stream still frees its slot (else its lease expires).
        await asyncio.shield(store.run(lambda: store.client.zrem(key, lease_id)))

    def held(self) -> int:
        return len(self._held)

    async def _renew_forever(self) -> None:
        store = self._store
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            if not self._held:
                continue
            pairs = list(self._held.values())
            keys = [k for k, _ in pairs]
            args = [str(self._lease_ms), *(lease_id for _, lease_id in pairs)]
            await store.run(functools.partial(store.renew, keys=keys, args=args))

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
