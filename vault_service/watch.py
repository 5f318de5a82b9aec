"""Every vault process's view of the change sequence, fanned out to WatchInvalidations streams.

One ``InvalidationHub`` per vault process tails ``invalidations`` (see
``vault_service.invalidations``) from the sequence number it started at: on
PostgreSQL it holds one ``LISTEN rmllm_invalidations`` connection, so a change made
by any vault process (or by the operator CLI) wakes it at commit, and it still
reads the table every second in case a notification was lost; on SQLite it reads
the table every ``SQLITE_POLL_SECONDS``. Each change goes to every subscriber's
bounded queue. A subscriber first gets a RESYNC carrying the current sequence
number, then every later change in order; one that falls too far behind, a hub
that finds rows pruned before it read them, and a hub that cannot read the
database all end in RESYNC or in the end of the stream, never in a silent gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from rmllm_common.errors import Unavailable
from vault_service import invalidations
from vault_service.database import Database
from vault_service.invalidations import Change

log = logging.getLogger(__name__)

SQLITE_POLL_SECONDS: Final = 0.2
POSTGRES_POLL_SECONDS: Final = 1.0
LISTEN_RETRY_SECONDS: Final = 1.0
QUEUE_BOUND: Final = 10_000


@dataclass(frozen=True, slots=True)
class Resync:
    """Drop everything: the next change is ``sequence + 1``."""

    sequence: int


class _End:
    """The hub is closing, or can no longer vouch for the sequence."""


END: Final = _End()
Item = Change | Resync | _End


@dataclass(eq=False)
class Subscription:
    """One watcher's queue: a ``Resync`` first, then changes in order."""

    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(QUEUE_BOUND + 2))
    overflowed: bool = False

    async def next(self) -> Item:
        return await self.queue.get()


class InvalidationHub:
    """Tails the change sequence of one database and fans it out."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._subscribers: set[Subscription] = set()
        self._last = 0
        self._ready = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None
        self._listener_failed_logged = False
        self._read_failed_logged = False

    @property
    def sequence(self) -> int:
        """The last change this hub has passed on."""
        return self._last

    async def start(self) -> None:
        """Read the current head and start tailing."""
        self._last = await self._db.run(invalidations.head, self._db)
        self._ready = True
        if self._db.is_postgres:
            await self._listen()
        self._task = asyncio.create_task(self._run(), name="invalidation-hub")

    def subscribe(self) -> Subscription:
        """A new watcher, starting with a RESYNC at the current sequence number."""
        if not self._ready:
            raise Unavailable(
                "the vault cannot read its change sequence right now; retry shortly",
                reason="DATABASE_UNAVAILABLE",
                retry_after=1.0,
            )
        subscription = Subscription()
        subscription.queue.put_nowait(Resync(self._last))
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    async def close(self) -> None:
        """End every watch stream and stop tailing."""
        self._ready = False
        self._end_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop_listener()

    def _end_all(self) -> None:
        for subscription in self._subscribers:
            self._put(subscription, END, force=True)
        self._subscribers.clear()

    def _put(self, subscription: Subscription, item: Item, *, force: bool = False) -> None:
        queue = subscription.queue
        if subscription.overflowed and not force:
            return
        if queue.qsize() >= QUEUE_BOUND and not force:
            # Too far behind: what it would read next is a RESYNC, not a gap.
            subscription.overflowed = True
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(Resync(self._last))
            return
        queue.put_nowait(item)

    def _broadcast(self, item: Item) -> None:
        for subscription in self._subscribers:
            if subscription.overflowed and subscription.queue.empty():
                subscription.overflowed = False  # it has read the RESYNC: follow again
            self._put(subscription, item)

    async def _run(self) -> None:
        poll = POSTGRES_POLL_SECONDS if self._db.is_postgres else SQLITE_POLL_SECONDS
        while True:
            timeout = poll if self._listener is not None or not self._db.is_postgres else LISTEN_RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._db.is_postgres and self._listener is None:
                await self._listen()
            await self._read()

    async def _read(self) -> None:
        try:
            changes = await self._db.run(invalidations.since, self._db, self._last)
        except Exception as exc:  # whatever the reason, the hub cannot vouch for the sequence
            if not self._read_failed_logged:
                self._read_failed_logged = True
                log.error(
                    "cannot read the change sequence (%s); ending watch streams until it is readable",
                    type(exc).__name__,
                    extra={"event": "invalidation_read_failed"},
                )
            self._ready = False
            self._end_all()
            return
        if not self._ready:
            self._ready = True
            self._read_failed_logged = False
            log.info("change sequence readable again", extra={"event": "invalidation_read_recovered"})
        for change in changes:
            if change.seq != self._last + 1:
                self._last = change.seq - 1
                self._broadcast(Resync(self._last))
            self._last = change.seq
            self._broadcast(change)
        if len(changes) >= 1_000:
            self._wake.set()  # more to read

    async def _listen(self) -> None:
        """Open the LISTEN connection (PostgreSQL); on failure, keep polling and retry later."""
        psycopg2: Any = importlib.import_module("psycopg2")  # only PostgreSQL vaults need it
        raw = self._db.db

        def connect() -> Any:
            conn = psycopg2.connect(dbname=raw.database, **raw.connect_params)
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f"LISTEN {invalidations.CHANNEL}")
            return conn

        try:
            conn = await asyncio.to_thread(connect)
        except psycopg2.Error as exc:
            if not self._listener_failed_logged:
                self._listener_failed_logged = True
                log.warning(
                    "cannot LISTEN for changes (%s); reading the change table every %gs until it works",
                    type(exc).__name__,
                    LISTEN_RETRY_SECONDS,
                    extra={"event": "invalidation_listen_failed"},
                )
            return
        self._listener = conn
        self._listener_failed_logged = False
        asyncio.get_running_loop().add_reader(conn.fileno(), self._notified)
        self._wake.set()  # read whatever was committed while nobody listened

    def _notified(self) -> None:
        conn = self._listener
        try:
            conn.poll()
            conn.notifies.clear()
        except Exception:
            self._drop_listener()
        self._wake.set()

    def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(conn.fileno())
        with contextlib.suppress(Exception):
            conn.close()
