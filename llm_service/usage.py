"""The usage reporter: every call's record, buffered and sent to the vault in batches, off the call's path.

``UsageReporter.submit`` appends a finished call (anything ``Reportable``: the
record's proto is built only when it is sent) to a bounded in-memory buffer and
returns at once: it never waits, never does I/O, and is never on a request's
critical path. One background task sends the buffer to the
vault over the client-streaming ``ReportUsage``: as soon as ``batch_size``
records wait, else every ``interval`` seconds (200 ms), up to ``max_flush``
records per stream in messages of ``batch_size``. Records leave the buffer only
when the vault has acknowledged them; a failed send (the vault down or
restarting) keeps them and is retried with backoff (up to ``max_backoff``), so
delivery is at least once, and the vault's ingestion is idempotent on the request
id, so a retried batch is never counted twice.

Losses, all counted in ``stats`` and logged: a full buffer (``max_buffer``
records, reached only during a long vault outage) drops the new record
(``overflow``); a batch the vault refuses as invalid (a bug, never retried, so it
cannot block the rest), or that a vault without the ledger answers with
UNIMPLEMENTED, is dropped (``rejected``); ``close`` (SIGTERM) flushes
until the buffer is empty or ``close_timeout`` passes, and counts what is left
(``lost``). A SIGKILL loses what was buffered: at most the calls of the last
``interval`` plus one stream in flight (docs/LEDGER.md has the measured figure).

The buffer's depth (after each delivery attempt) and every dropped record (by
why) are Prometheus metrics (``llm_service.metrics``). It also keeps each user's
and token's cost of records not yet acknowledged (``pending``), so budget checks
can count this replica's own unreported spend. A check compares that with the
spend the vault read during the same call, and a batch may be committed in the
vault just before that read but acknowledged here just after it: dropping its
cost at the acknowledgement would count it nowhere, and let one call more
through. So an acknowledged cost still counts for a check that started before
the acknowledgement (``pending(..., since=the check's start)``): a budget check
may count a just-reported call twice (and refuse one call early), never zero
times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from realmultillm.vault.v1 import vault_pb2

from llm_service import metrics

log = logging.getLogger(__name__)

Send = Callable[[Sequence[Sequence[vault_pb2.UsageRecord]], float], Awaitable[vault_pb2.ReportUsageResponse]]
OVERFLOW_LOG_SECONDS = 10.0
# How long an acknowledged cost is kept for the checks that started before it: longer
# than any vault round trip of a check (a resolve's own deadline is far shorter).
ACKNOWLEDGED_KEPT_SECONDS = 60.0
_NEVER_RETRIED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED})


class Reportable(Protocol):
    """A finished call waiting to be reported: whose, what it cost, and its proto."""

    user_id: str
    token_id: str
    cost_usd: float

    def to_proto(self) -> vault_pb2.UsageRecord:
        """The record as the vault ingests it."""


@dataclass(slots=True)
class Stats:
    """What the reporter did since start."""

    submitted: int = 0
    reported: int = 0
    duplicates: int = 0
    overflow: int = 0
    rejected: int = 0
    lost: int = 0
    failures: int = 0


class UsageReporter:
    """A bounded buffer of usage records and the task that delivers them to the vault."""

    def __init__(
        self,
        send: Send,
        *,
        interval: float = 0.2,
        batch_size: int = 500,
        max_flush: int = 5_000,
        max_buffer: int = 100_000,
        send_timeout: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._send = send
        self._interval = interval
        self._batch = batch_size
        self._max_flush = max_flush
        self._max_buffer = max_buffer
        self._send_timeout = send_timeout
        self._max_backoff = max_backoff
        self._buffer: deque[Reportable] = deque()
        self._pending: dict[str, float] = {}
        # Per user ("u:") and token ("t:"): (monotonic time acknowledged, the cost acknowledged
        # then), oldest first: one entry per acknowledgement, whatever the records it took.
        self._acknowledged: dict[str, deque[tuple[float, float]]] = {}
        self._acknowledged_order: deque[tuple[float, str]] = deque()  # for forgetting, oldest first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_overflow_log = 0.0
        self.stats = Stats()

    def start(self) -> None:
        """Start the delivery task (on the server's event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-reporter")

    @property
    def buffered(self) -> int:
        """Records waiting for the vault's acknowledgement."""
        return len(self._buffer)

    @property
    def remembered(self) -> int:
        """Acknowledged costs kept for the checks in flight (``pending``'s ``since``): one per
        user and token an acknowledgement covered, forgotten after ``ACKNOWLEDGED_KEPT_SECONDS``."""
        return len(self._acknowledged_order)

    def pending(self, user_id: str, token_id: str, scope: str, since: float | None = None) -> float:
        """This replica's unacknowledged cost of a user (``scope`` "user") or a token, plus,
        with ``since`` (a ``time.monotonic()``), what was acknowledged after it."""
        key = "u:" + user_id if scope == "user" else "t:" + token_id
        cost = self._pending.get(key, 0.0)
        if since is not None:
            for when, acknowledged in reversed(self._acknowledged.get(key, ())):
                if when < since:
                    break
                cost += acknowledged
        return cost

    def submit(self, record: Reportable) -> None:
        """Queue one call's record; never blocks (a full buffer drops it, counted and logged)."""
        self.stats.submitted += 1
        if len(self._buffer) >= self._max_buffer:
            self.stats.overflow += 1
            metrics.usage_records_dropped(1, "overflow")
            now = time.monotonic()
            if now - self._last_overflow_log >= OVERFLOW_LOG_SECONDS:
                self._last_overflow_log = now
                log.error(
                    "usage buffer full: records are being dropped until the vault takes them",
                    extra={
                        "event": "usage_overflow",
                        "dropped": self.stats.overflow,
                        "buffered": len(self._buffer),
                    },
                )
            return
        self._buffer.append(record)
        if record.cost_usd:
            self._add_pending(record, record.cost_usd)
        if len(self._buffer) >= self._batch:
            self._wake.set()

    def _add_pending(self, record: Reportable, cost: float) -> None:
        for key in ("u:" + record.user_id, "t:" + record.token_id):
            value = self._pending.get(key, 0.0) + cost
            if value <= 1e-12:
                self._pending.pop(key, None)
            else:
                self._pending[key] = value

    def _acknowledge(self, count: int, *, stored: bool = True) -> None:
        """The oldest ``count`` records left the buffer: ``stored`` by the vault, or dropped."""
        now = time.monotonic()
        acknowledged: dict[str, float] = {}  # one entry per user and token, not per record
        for _ in range(count):
            record = self._buffer.popleft()
            if record.cost_usd:
                self._add_pending(record, -record.cost_usd)
                if stored:
                    for key in ("u:" + record.user_id, "t:" + record.token_id):
                        acknowledged[key] = acknowledged.get(key, 0.0) + record.cost_usd
        for key, cost in acknowledged.items():
            self._acknowledged.setdefault(key, deque()).append((now, cost))
            self._acknowledged_order.append((now, key))
        order, before = self._acknowledged_order, now - ACKNOWLEDGED_KEPT_SECONDS
        while order and order[0][0] < before:
            _, key = order.popleft()
            entries = self._acknowledged[key]
            entries.popleft()  # appended in the same order: its oldest is this one
            if not entries:
                del self._acknowledged[key]

    async def _run(self) -> None:
        backoff = self._interval
        while not self._closing:
            if len(self._buffer) < self._batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if self._closing:
                return
            try:
                delivered = await self._flush_once()
            except Exception:  # a bug must not stop delivery for the life of the process
                log.exception("usage reporter failed; retrying", extra={"event": "usage_reporter_error"})
                delivered = False
            metrics.usage_queue_depth(len(self._buffer))
            if delivered:
                backoff = self._interval
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _flush_once(self) -> bool:
        """Send what is buffered (up to ``max_flush``); False when the vault could not take it."""
        count = min(len(self._buffer), self._max_flush)
        if not count:
            return True
        records: list[vault_pb2.UsageRecord] = []
        unbuildable: list[int] = []
        for i in range(count):
            try:
                records.append(self._buffer[i].to_proto())
            except (ValueError, TypeError):  # a value the proto cannot hold: drop this record only
                unbuildable.append(i)
                log.exception("usage record dropped: cannot build it", extra={"event": "usage_rejected"})
        for i in reversed(unbuildable):
            dropped = self._buffer[i]
            del self._buffer[i]
            self.stats.rejected += 1
            metrics.usage_records_dropped(1, "rejected")
            if dropped.cost_usd:
                self._add_pending(dropped, -dropped.cost_usd)
        count -= len(unbuildable)
        if not records:
            return True
        batches = [records[i : i + self._batch] for i in range(0, count, self._batch)]
        try:
            reply = await self._send(batches, self._send_timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _NEVER_RETRIED:
                # A record the vault cannot store (a bug), or a vault without the ledger:
                # retrying would block every later record.
                self.stats.rejected += count
                self._acknowledge(count, stored=False)
                metrics.usage_records_dropped(count, "rejected")
                log.error(
                    "the vault refused usage records; dropped them",
                    extra={
                        "event": "usage_rejected",
                        "count": count,
                        "grpc_code": exc.code().name,
                        "detail": (exc.details() or "")[:200],
                    },
                )
                return True
            self.stats.failures += 1
            if self.stats.failures == 1 or self.stats.failures % 50 == 0:
                log.warning(
                    "cannot report usage to the vault; keeping the records and retrying",
                    extra={
                        "event": "usage_report_failed",
                        "grpc_code": exc.code().name,
                        "buffered": len(self._buffer),
                    },
                )
            return False
        self._acknowledge(count)
        self.stats.reported += int(reply.accepted)
        self.stats.duplicates += int(reply.duplicates)
        return True

    async def flush(self, timeout: float) -> bool:
        """Deliver everything buffered now, retrying until ``timeout``; True when the buffer emptied."""
        deadline = time.monotonic() + timeout
        backoff = min(self._interval, 0.05)
        while self._buffer:
            if time.monotonic() >= deadline:
                return False
            if not await self._flush_once():
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 1.0)
        return True

    async def close(self, timeout: float) -> None:
        """Stop the task and flush what is left within ``timeout`` (at SIGTERM); count the rest as lost."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not await self.flush(timeout):
            self.stats.lost += len(self._buffer)
            metrics.usage_records_dropped(len(self._buffer), "lost")
            log.error(
                "usage records not delivered at shutdown",
                extra={"event": "usage_lost", "count": len(self._buffer)},
            )
        log.info(
            "usage reporter stopped",
            extra={
                "event": "usage_reporter_stopped",
                "reported": self.stats.reported,
                "duplicates": self.stats.duplicates,
                "overflow": self.stats.overflow,
                "lost": self.stats.lost,
            },
        )
