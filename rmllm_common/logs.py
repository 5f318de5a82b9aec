"""Structured logging: one JSON object a line on stderr, written by a thread of its own.

``configure`` installs a handler that never blocks the thread that logs: the event
loop, the database threads and gRPC's own threads only put a prepared record on an
unbounded lock-free ``queue.SimpleQueue`` (its ``put`` is safe even from a garbage
collector finalizer that runs in the middle of another ``put``), and one listener
thread formats the records and writes the lines, all those waiting in one write.
A handler that took a lock in the caller's thread deadlocked the vault at debug
level under load (issue 13): a database thread held the handler's lock while the
collector ran a gRPC finalizer that waited on a lock held by a thread that was
itself waiting for the handler's lock. Whatever
depends on the caller (the message's arguments, the request id, a traceback) is
captured before the record is queued. If the output cannot keep up (a stalled
stderr), at most ``queue_limit`` records wait and later ones are dropped and
counted; the listener reports the count when it catches up. ``flush`` (called at
the end of ``serve``) and interpreter exit write every queued line.

``info_event`` is the cheap path for the one line every RPC writes: when nothing but
this module's handler would see the record, the line is formatted in the caller's
thread and queued as text, skipping the LogRecord.

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


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(s in lowered for s in _SECRET_NAMES) and not lowered.endswith(("_id", "_hint", "_file"))


_COPY, _SKIP, _REDACT = 0, 1, 2
_VERDICTS: dict[str, int] = {}  # field name -> what a log entry does with it (one look-up a field)


def _verdict(name: str) -> int:
    if name in _STANDARD or name.startswith("_"):
        return _SKIP
    return _REDACT if _secret_name(name) else _COPY


def _put_fields(entry: dict[str, Any], fields: dict[str, Any]) -> None:
    """Copy the caller's fields into a log entry: secrets masked, non-scalars as their str."""
    verdicts = _VERDICTS
    for name, value in fields.items():
        verdict = verdicts.get(name)
        if verdict is None:
            verdict = _verdict(name)
            if len(verdicts) < 10_000:  # field names come from the code: a bounded set in practice
                verdicts[name] = verdict
        if verdict == _COPY:
            entry[name] = value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
        elif verdict == _REDACT:
            entry[name] = "[redacted]"


_stamp_second = -1
_stamp_text = ""


def _timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as ``2026-12-01T18:35:23.123Z``."""
    global _stamp_second, _stamp_text
    second = int(created)
    if second != _stamp_second:  # a race here only recomputes the same text
        _stamp_text, _stamp_second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), second
    return f"{_stamp_text}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, _REQUEST_ID_ATTR, None) or requestctx.request_id()
        if rid != "-":
            entry["request_id"] = rid
        _put_fields(entry, vars(record))
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

    def put_line(self, line: str) -> None:
        """Queue a line already formatted (``info_event``), under the same limit."""
        if self._records.qsize() >= self._limit:
            self.dropped += 1
            return
        self._records.put(line)


_STOP: Final = object()  # queued by ``_Writer.stop``: write what came before, then end
_BATCH: Final = 4096  # records formatted and written per write, at most
# After the first record of a batch, the writer waits this long for more to join it:
# one wake-up and one write per 20 ms instead of per record (a wake-up of this thread
# cost the event loop about 0.09 ms per Chat in the benchmark). A line appears at most
# this much later; ``flush`` and exit still write everything.
_GATHER_SECONDS: Final = 0.02


class _Writer:
    """The thread that formats queued records and writes them, as many lines per write as are waiting."""

    def __init__(
        self,
        records: queue.SimpleQueue[Any],
        source: EnqueueHandler,
        stream: TextIO,
        formatter: JsonFormatter,
    ) -> None:
        self._records = records
        self._source = source
        self._stream = stream
        self._formatter = formatter
        self._reported = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rmllm-log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued before this call, then end the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._records.put(_STOP)
        thread.join()

    def _run(self) -> None:
        get, get_nowait = self._records.get, self._records.get_nowait
        full = False
        while True:
            batch = [get()]
            if not full and batch[0] is not _STOP:
                time.sleep(_GATHER_SECONDS)
            try:
                while len(batch) < _BATCH:
                    batch.append(get_nowait())
            except queue.Empty:
                pass
            full = len(batch) == _BATCH
            lines: list[str] = []
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                elif isinstance(item, str):
                    lines.append(item)
                else:
                    lines.append(self._format(item))
            self._report_drops(lines)
            self._write(lines)
            if stop:
                return

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self._formatter.format(record)
        except Exception as exc:  # a broken __str__ in an argument must not end logging
            message = f"unformattable log record: {type(exc).__name__}"
            return json.dumps({"level": "error", "logger": __name__, "message": message})

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nothing else to tell it to
            pass

    def _report_drops(self, lines: list[str]) -> None:
        """Add one warning line for the records dropped since the last one."""
        dropped = self._source.dropped
        if dropped == self._reported:
            return
        lost, self._reported = dropped - self._reported, dropped
        record = logging.makeLogRecord(
            {
                "name": __name__,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "log output could not keep up: %d records were dropped",
                "args": (lost,),
                "event": "log_records_dropped",
            }
        )
        lines.append(self._format(record))


def info_event(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """``logger.info(message, extra=fields)``, formatted here when only this module's handler listens.

    The per-call line of every RPC comes through here: when the root's only handler
    is this module's and nothing between ``logger`` and the root has a handler or a
    filter, the line is built in the caller's thread (a dict and one ``json.dumps``,
    the same keys and masking as ``JsonFormatter``) and queued as text, which costs
    a fraction of a LogRecord's creation, copy and formatting. Otherwise (tests'
    log capture, an embedding application's handlers) it is an ordinary log call.
    """
    source = _source
    if source is None or not logger.isEnabledFor(logging.INFO) or not _only(source, logger):
        logger.info(message, extra=fields)
        return
    created = time.time()
    entry: dict[str, Any] = {
        "time": _timestamp(created),
        "level": "info",
        "logger": logger.name,
        "message": message,
    }
    rid = requestctx.request_id()
    if rid != "-":
        entry["request_id"] = rid
    _put_fields(entry, fields)
    source.put_line(json.dumps(entry, ensure_ascii=False))


def _only(source: EnqueueHandler, logger: logging.Logger) -> bool:
    """Whether ``source`` is the only handler a record of ``logger`` reaches, and no filter looks at it."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return False
        handlers = current.handlers
        if current.parent is None:  # the root
            return len(handlers) == 1 and handlers[0] is source and not source.filters
        if handlers or not current.propagate:
            return False
        current = current.parent
    return False


_TRACEBACKS = logging.Formatter()
_guard = threading.Lock()  # serialises configure/flush (never taken by a logging call)
_listener: _Writer | None = None
_source: EnqueueHandler | None = None


def configure(
    level: str = "info", *, queue_limit: int = DEFAULT_QUEUE_LIMIT, stream: TextIO | None = None
) -> None:
    """Send JSON log lines at ``level`` and above to ``stream`` (stderr), through the writer thread.

    Idempotent: a second call flushes and replaces the first's handler and thread.
    """
    global _listener, _source
    with _guard:
        records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        source = EnqueueHandler(records, queue_limit)
        listener = _Writer(records, source, stream or sys.stderr, JsonFormatter())
        root = logging.getLogger()
        previous, _listener, _source = _listener, listener, source
        root.handlers[:] = [source]
        root.setLevel(level.upper())
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        listener.start()
        if previous is not None:
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
        if _listener is not None:
            _listener.stop()
