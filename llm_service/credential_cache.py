"""The LLM service's credential cache, and the vault watch stream that keeps it honest.

``CredentialCache`` keeps what ``ResolveCredentials`` answered, keyed by (SHA-256 of
the user token, provider), for at most ``ttl`` seconds, bounded in entries and in
(estimated) bytes, the key held only as a ``Secret``. It caches only while
``InvalidationWatcher`` holds the vault's ``WatchInvalidations`` stream in sync:
the stream's first message is a RESYNC, then each change drops the entries it
makes stale (a user's or one provider's configs, a revoked token's entries, a
changed user's entries); a gap in the sequence, the stream ending or failing,
all drop everything and stop caching until the next RESYNC. A resolve that was
in flight while anything was dropped is not cached (the generation check), so
the cache and a revocation are never stale together. No entry outlives the
expiry of the token it was resolved for.

It also remembers which user each token seen belongs to (a fact that never
changes), so the rate limit can be taken before the vault round trip; a
revoked token is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
from realmultillm.vault.v1 import vault_pb2

from llm_service.limits import NO_LIMITS, CallerLimits
from rmllm_common.secret import Secret

log = logging.getLogger(__name__)

MAX_ENTRIES: Final = 10_000
MAX_BYTES: Final = 16 * 1024 * 1024
MAX_KNOWN_TOKENS: Final = 100_000
_ENTRY_OVERHEAD: Final = 600  # the tuple, dataclass, strings' headers and the dict slot
RECONNECT_FIRST_SECONDS: Final = 0.05
RECONNECT_MAX_SECONDS: Final = 2.0
UNIMPLEMENTED_RETRY_SECONDS: Final = 30.0

CacheKey = tuple[str, str]  # (sha256 of the user token, provider)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the vault resolved for one (user, provider): the key only as a Secret."""

    user_id: str
    provider: str
    api_key: Secret
    base_url: str
    default_model: str
    temperature: float | None
    max_tokens: int | None
    # The id of the caller's token (never the token), and its budgets and model policies.
    token_id: str = ""
    limits: CallerLimits = NO_LIMITS
    # When the caller's token expires (Unix seconds); None: never. No cache entry outlives it.
    token_expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    credentials: Credentials
    size: int


def _size(credentials: Credentials) -> int:
    return (
        _ENTRY_OVERHEAD
        + len(credentials.api_key)
        + len(credentials.base_url)
        + len(credentials.default_model)
        + len(credentials.user_id)
        + len(credentials.token_id)
    )


class CredentialCache:
    """Resolved credentials for at most ``ttl`` seconds, only while in sync with the vault."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._bytes = 0
        self._synced = False
        self.generation = 0
        # sha256 of a token -> (user id, token id): who a token belongs to never changes.
        self._owners: OrderedDict[str, tuple[str, str]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether answers may be cached now (a TTL is set and the watch is in sync)."""
        return self.ttl > 0 and self._synced

    @property
    def lease_seconds(self) -> int:
        """How long an answer resolved now may be kept (what the vault audits)."""
        return int(self.ttl + 0.999) if self.enabled else 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: CacheKey) -> Credentials | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock() or not self._synced:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry.credentials

    def put(self, key: CacheKey, credentials: Credentials, generation: int) -> None:
        """Cache ``credentials`` unless anything was dropped since ``generation`` was read."""
        self.remember_owner(key[0], credentials.user_id, credentials.token_id)
        if not self.enabled or generation != self.generation:
            return
        lifetime = self.ttl
        if credentials.token_expires_at is not None:
            lifetime = min(lifetime, credentials.token_expires_at - time.time())
            if lifetime <= 0:
                return
        self._remove(key)
        entry = _Entry(self._clock() + lifetime, credentials, _size(credentials))
        self._entries[key] = entry
        self._bytes += entry.size
        while self._entries and (len(self._entries) > self._max_entries or self._bytes > self._max_bytes):
            self._remove(next(iter(self._entries)))

    def _remove(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    # -- who a token belongs to (for rate limits taken before the vault call) --

    def owner(self, token_digest: str) -> str | None:
        """The user id a token (by digest) was last resolved to, if known."""
        known = self._owners.get(token_digest)
        return known[0] if known is not None else None

    def remember_owner(self, token_digest: str, user_id: str, token_id: str) -> None:
        if not user_id:
            return
        self._owners[token_digest] = (user_id, token_id)
        self._owners.move_to_end(token_digest)
        while len(self._owners) > MAX_KNOWN_TOKENS:
            self._owners.popitem(last=False)

    def forget_owner(self, token_digest: str) -> None:
        self._owners.pop(token_digest, None)

    # -- invalidation --

    def _drop_where(self, stale: Callable[[Credentials], bool]) -> None:
        self.generation += 1
        for key in [k for k, e in self._entries.items() if stale(e.credentials)]:
            self._remove(key)

    def drop_all(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._bytes = 0

    def set_synced(self, synced: bool) -> None:
        """In sync (after a RESYNC) or not (stream down): either way, start empty."""
        self.drop_all()
        self._synced = synced

    def apply(self, change: Any) -> None:
        """Drop what one ``WatchInvalidationsResponse`` (not a RESYNC) makes stale."""
        kind, user_id = change.kind, change.user_id
        if kind == vault_pb2.INVALIDATION_KIND_CONFIG_CHANGED and change.provider:
            provider = change.provider
            self._drop_where(lambda c: c.user_id == user_id and c.provider == provider)
        elif kind == vault_pb2.INVALIDATION_KIND_TOKEN_REVOKED and change.token_id:
            token_id = change.token_id
            self._drop_where(lambda c: c.token_id == token_id)
            for digest in [d for d, (_, t) in self._owners.items() if t == token_id]:
                del self._owners[digest]
        elif user_id:
            self._drop_where(lambda c: c.user_id == user_id)
        else:
            self.drop_all()


class InvalidationWatcher:
    """Holds one ``WatchInvalidations`` stream to the vault and applies it to the cache."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], cache: CredentialCache) -> None:
        self._stub = stub
        self._metadata = metadata
        self._cache = cache
        self._task: asyncio.Task[None] | None = None
        self._last = 0
        self._was_up = False
        self._down_logged = False
        self._closing = False
        self.resyncs = 0

    def start(self) -> None:
        if self._task is None and self._cache.ttl > 0:
            self._task = asyncio.create_task(self._run(), name="vault-invalidation-watch")

    async def close(self) -> None:
        self._closing = True  # the stream ends because we stop: nothing to report
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._cache.set_synced(False)

    async def _run(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while True:
            try:
                await self._follow()
                delay = RECONNECT_FIRST_SECONDS  # ended cleanly (a vault shutting down): reconnect now
                self._went_down("the vault ended the stream")
            except grpc.aio.AioRpcError as exc:
                self._went_down(exc.code().name)
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    delay = UNIMPLEMENTED_RETRY_SECONDS
            finally:
                self._cache.set_synced(False)
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_SECONDS, max(delay, RECONNECT_FIRST_SECONDS) * 2)

    async def _follow(self) -> None:
        call = self._stub.WatchInvalidations(
            vault_pb2.WatchInvalidationsRequest(), metadata=self._metadata, wait_for_ready=False
        )
        synced = False
        async for change in call:
            if change.kind == vault_pb2.INVALIDATION_KIND_RESYNC:
                self._last = change.sequence
                self.resyncs += 1
                self._cache.set_synced(True)
                if not synced:
                    synced = True
                    self._came_up()
                continue
            if not synced:
                continue  # nothing is cached before the first RESYNC
            if change.sequence != self._last + 1:
                log.warning(
                    "gap in the vault's change sequence: dropping the credential cache",
                    extra={"event": "invalidation_gap", "expected": self._last + 1, "got": change.sequence},
                )
                self._cache.drop_all()
            else:
                self._cache.apply(change)
            self._last = change.sequence

    def _came_up(self) -> None:
        if self._down_logged:
            log.info("vault watch stream back: credential cache on", extra={"event": "vault_watch_up"})
        self._was_up = True
        self._down_logged = False

    def _went_down(self, why: str) -> None:
        if self._down_logged or self._closing:
            return
        self._down_logged = True
        # Before the first sync (the vault not up yet, or an older vault) it is the start-up state.
        level = logging.WARNING if self._was_up else logging.DEBUG
        log.log(
            level,
            "vault watch stream down (%s): credential cache off until it is back",
            why,
            extra={"event": "vault_watch_down"},
        )
