"""Group commit: one writer makes the writes of many concurrent calls durable in one transaction.

The vault has one, fed with every resolve's write and every usage batch
(``vault_service/writes.py``). A resolve's read (token → user → config, and the
decryption) runs through ``Database.read`` (on the event loop on SQLite, on the
database threads on PostgreSQL); what it must write (the use count and the audit
row) is handed to a ``GroupCommit`` and the caller waits until that write has
committed: the key leaves the vault only after its audit row is durable, as
before, so "no unaudited decrypt" still holds. The writer takes everything
queued, up to ``max_batch`` items, and applies it in ONE transaction (one fsync
on SQLite, one commit on PostgreSQL); whatever arrives while that commit is in
flight forms the next batch. There is no timer: an idle vault commits a lone
write at once, a busy one amortises the commit over the whole batch. If the
transaction fails, every caller of that batch gets the failure and no key.
``apply`` should write the batch in few statements (``configs.record_uses``: one
UPDATE, multi-row INSERTs): each statement lets go of the GIL, and winning it
back from a busy event loop costs both threads context switches.
Reads never wait for the writer; only writes are serialised, as the database
serialises them anyway (SQLite's single writer, the audit head's row lock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from vault_service.database import Database

T = TypeVar("T")
log = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 256


class GroupCommit(Generic[T]):
    """Queues items and commits them in batches with ``apply(db, items)`` inside one write transaction."""

    def __init__(
        self,
        db: Database,
        apply: Callable[[Database, Sequence[T]], None],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._db = db
        self._apply = apply
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (for tests and the bench)
        self.items = 0  # items committed

    async def commit(self, item: T) -> None:
        """Return once ``item`` is durable; raise what made its batch fail."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((item, done))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        # A caller that goes away does not take its write with it: the item stays queued
        # and its batch still commits (``_settle`` skips a waiter that was cancelled).
        await done

    def _group_commit(self, items: Sequence[T]) -> None:
        with self._db.write():
            self._apply(self._db, items)

    async def _write(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    await self._db.run(self._group_commit, [item for item, _ in batch])
                except Exception as exc:
                    _settle(batch, exc)
                except BaseException:
                    _settle(batch, None, cancel=True)
                    raise
                else:
                    self.batches += 1
                    self.items += len(batch)
                    _settle(batch, None)
        finally:
            self._writer = None
            if self._queue:  # the loop is going away (cancelled): nobody will write these
                log.warning("group commit stopped with %d writes queued", len(self._queue))
                _settle(self._queue, None, cancel=True)
                self._queue.clear()


def _settle(
    batch: Sequence[tuple[object, asyncio.Future[None]]], error: Exception | None, *, cancel: bool = False
) -> None:
    """Answer every waiter of ``batch``: done, failed with ``error``, or cancelled."""
    for _, done in batch:
        if done.done():
            continue
        if cancel:
            done.cancel()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)
