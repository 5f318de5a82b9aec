"""Structured logging: one JSON object a line on stderr, written by a thread of its own.

``configure`` installs a handler that never blocks the thread that logs: the event
loop, the database threads and gRPC's own threads only put a prepared record on an
unbounded lock-free ``queue.SimpleQueue`` (its ``put`` is safe even from a garbage
collector finalizer that runs in the middle of another ``put``), and one listener
thread formats and writes the lines. A handler that took a lock in the caller's
thread deadlocked the vault at debug level under load (issue 13): a database thread
held the handler's lock while the collector ran a gRPC finalizer that waited on a
lock held by a thread that was itself waiting for the handler's lock. Whatever
depends on the caller (the message's arguments, the request id, a traceback) is
captured before the record is queued. If the output cannot keep up (a stalled
stderr), at most ``queue_limit`` records wait and later ones are dropped and
counted; the listener reports the count when it catches up. ``flush`` (called at
the end of ``serve``) and interpreter exit write every queued line.

The formatter writes ``time``, ``level``, ``logger``, ``message``, the request id,
and every ``extra=`` field, so a log line like ``log.info("serving", extra={"address":
...})`` is machine-readable. Secrets never reach here by construction (keys travel
as ``Secret``, whose str is masked); the formatter also refuses to print values of
fields whose names say they are secret.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any, Final, TextIO

from rmllm_common import requestctx

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_NAMES = ("key", "token", "seed", "secret", "password", "authorization")
# Set on a record by the queueing handler, in the thread that logged it.
_REQUEST_ID_ATTR: Final = "_rmllm_request_id"
DEFAULT_QUEUE_LIMIT: Final = 100_000


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, _REQUEST_ID_ATTR, None) or requestctx.request_id()
        if rid != "-":
            entry["request_id"] = rid
        for name, value in vars(record).items():
            if name in _STANDARD or name.startswith("_"):
                continue
            lowered = name.lower()
            if any(s in lowered for s in _SECRET_NAMES) and not lowered.endswith(("_id", "_hint", "_file")):
                entry[name] = "[redacted]"
            elif isinstance(value, (str, int, float, bool, type(None))):
                entry[name] = value
            else:
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


class EnqueueHandler(logging.handlers.QueueHandler):
    """Puts records on a ``SimpleQueue`` without taking any lock in the caller's thread."""

    def __init__(self, records: queue.SimpleQueue[Any], limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        super().__init__(records)
        self._records = records
        self._limit = limit
        self.dropped = 0  # approximate under races; only ever reported

    def handle(self, record: logging.LogRecord) -> bool:
        # logging.Handler.handle takes the handler's lock around emit; a
        # SimpleQueue needs none, and taking one is what deadlocked.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Capture what depends on the calling thread; the listener formats the rest.

        Works on a copy: other handlers (pytest's capture, say) still see the original.
        """
        message = record.getMessage()
        record = copy.copy(record)
        record.msg, record.args, record.message = message, None, message
        setattr(record, _REQUEST_ID_ATTR, requestctx.request_id())
        if record.exc_info:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None  # the listener must not keep frames alive
        return record

    def emit(self, record: logging.LogRecord) -> None:
        if self._records.qsize() >= self._limit:
            self.dropped += 1
            return
        try:
            self._records.put(self.prepare(record))
        except Exception:
            self.handleError(record)


class _Listener(logging.handlers.QueueListener):
    """Writes queued records, and says when records were dropped."""

    def __init__(
        self, records: queue.SimpleQueue[Any], source: EnqueueHandler, sink: logging.Handler
    ) -> None:
        super().__init__(records, sink)
        self._source = source
        self._reported = 0

    def handle(self, record: logging.LogRecord) -> None:
        super().handle(record)
        self.report_drops()

    def stop(self) -> None:
        super().stop()
        self.report_drops()

    def report_drops(self) -> None:
        """Write one warning line for the records dropped since the last one."""
        dropped = self._source.dropped
        if dropped == self._reported:
            return
        lost, self._reported = dropped - self._reported, dropped
        super().handle(
            logging.makeLogRecord(
                {
                    "name": __name__,
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": "log output could not keep up: %d records were dropped",
                    "args": (lost,),
                    "event": "log_records_dropped",
                }
            )
        )


_TRACEBACKS = logging.Formatter()
_guard = threading.Lock()  # serialises configure/flush (never taken by a logging call)
_listener: _Listener | None = None


def configure(
    level: str = "info", *, queue_limit: int = DEFAULT_QUEUE_LIMIT, stream: TextIO | None = None
) -> None:
    """Send JSON log lines at ``level`` and above to ``stream`` (stderr), through the writer thread.

    Idempotent: a second call flushes and replaces the first's handler and thread.
    """
    global _listener
    with _guard:
        records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        source = EnqueueHandler(records, queue_limit)
        sink = logging.StreamHandler(stream or sys.stderr)
        sink.setFormatter(JsonFormatter())
        listener = _Listener(records, source, sink)
        root = logging.getLogger()
        previous, _listener = _listener, listener
        root.handlers[:] = [source]
        root.setLevel(level.upper())
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        listener.start()
        if previous is not None:
            if previous._thread is not None:
                previous.stop()
        else:
            atexit.register(_stop)


def flush() -> None:
    """Write every line queued so far, then keep logging (at the end of ``serve``)."""
    with _guard:
        listener = _listener
        if listener is None or listener._thread is None:
            return
        listener.stop()  # writes everything queued, then joins the writer thread
        listener.start()


def _stop() -> None:
    """At interpreter exit: write every queued line and end the writer thread."""
    with _guard:
        if _listener is not None and _listener._thread is not None:
            _listener.stop()
