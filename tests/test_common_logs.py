"""rmllm_common.logs: logging never blocks the thread that logs, and loses nothing it keeps.

The first test models the deadlock of issue 13 item 3 with two threads and one
lock: thread A logs a record whose argument needs lock L (as the collector's gRPC
finalizer did) while thread B, holding L, logs too. With a handler that formats
under its own lock in the caller's thread, A holds the handler lock waiting for L
and B holds L waiting for the handler lock, forever.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rmllm_common import logs, requestctx

LIVENESS = 20.0  # seconds a thread gets to finish a few log calls; only a deadlock needs more


class StalledStream(io.StringIO):
    """An output stream whose writes wait until ``release`` (a stuck stderr pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.gate.wait()
        return super().write(text)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


def restoring(out: StalledStream) -> Iterator[StalledStream]:
    """``out`` for ``logs.configure``; the previous logging set-up restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield out
    out.gate.set()
    logs._stop()
    logs._listener = None
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def stream() -> Iterator[StalledStream]:
    """A stalled stream for ``logs.configure``."""
    yield from restoring(StalledStream())


def test_a_record_whose_argument_waits_on_a_lock_held_by_another_logger_does_not_deadlock(
    stream: StalledStream,
) -> None:
    stream.gate.set()
    logs.configure("debug", stream=stream)
    log = logging.getLogger("deadlock-model")
    lock_l = threading.Lock()
    a_is_formatting = threading.Event()

    class NeedsL:
        def __str__(self) -> str:
            a_is_formatting.set()
            with lock_l:
                return "needs-L"

    def thread_b() -> None:
        with lock_l:
            a_is_formatting.wait(LIVENESS)
            log.debug("B logs while holding L")

    b = threading.Thread(target=thread_b, daemon=True)
    a = threading.Thread(target=lambda: log.debug("A: %s", NeedsL()), daemon=True)
    b.start()
    a.start()
    a.join(LIVENESS)
    b.join(LIVENESS)
    assert not a.is_alive() and not b.is_alive(), "logging deadlocked across two threads"
    logs.flush()
    messages = {line["message"] for line in stream.lines()}
    assert {"A: needs-L", "B logs while holding L"} <= messages


def test_a_stalled_output_never_blocks_the_logging_thread_and_nothing_kept_is_lost(
    stream: StalledStream,
) -> None:
    logs.configure("info", stream=stream)
    log = logging.getLogger("stalled")

    def write_lines() -> None:
        for i in range(200):
            log.info("line %d", i)

    worker = threading.Thread(target=write_lines, daemon=True)
    worker.start()
    worker.join(LIVENESS)
    assert not worker.is_alive(), "a log call waited for the output"
    stream.gate.set()
    logs.flush()
    assert [line["message"] for line in stream.lines()] == [f"line {i}" for i in range(200)]


def test_past_the_queue_limit_records_are_dropped_counted_and_reported(stream: StalledStream) -> None:
    logs.configure("info", queue_limit=50, stream=stream)
    log = logging.getLogger("flood")
    for i in range(500):
        log.info("flood %d", i)  # returns at once although nothing can be written
    stream.gate.set()
    log.info("after the flood")
    logs.flush()
    lines = stream.lines()
    reports = [line for line in lines if line.get("event") == "log_records_dropped"]
    kept = [line for line in lines if line.get("event") != "log_records_dropped"]
    assert 1 <= len(kept) < 501
    assert reports and all(line["level"] == "warning" for line in reports)
    reported = sum(int(line["message"].split(": ")[1].split()[0]) for line in reports)
    assert reported == 501 - len(kept)


def test_request_id_arguments_and_traceback_are_captured_in_the_logging_thread(stream: StalledStream) -> None:
    stream.gate.set()
    logs.configure("info", stream=stream)
    log = logging.getLogger("capture")
    mutable = ["before"]

    def call() -> None:
        requestctx.begin("req-capture-1")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed with %s", mutable, extra={"event": "x", "api_key": "sk-secret"})
        mutable[0] = "after"  # changed once logged: the line shows the value at the call
        requestctx.begin("req-other")

    contextvars.copy_context().run(call)
    logs.flush()
    (line,) = [line for line in stream.lines() if line["logger"] == "capture"]
    assert line["message"] == "failed with ['before']"
    assert line["request_id"] == "req-capture-1"
    assert "ValueError: boom" in line["exception"]
    assert line["api_key"] == "[redacted]"
    assert line["event"] == "x"


def test_other_handlers_still_see_the_original_record(stream: StalledStream) -> None:
    stream.gate.set()
    logs.configure("info", stream=stream)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        try:
            raise KeyError("kept")
        except KeyError:
            logging.getLogger("both").exception("with %s", "args")
    finally:
        logging.getLogger().removeHandler(keep)
    (record,) = seen
    assert record.exc_info is not None and record.args == ("args",)
    logs.flush()
    (line,) = [line for line in stream.lines() if line["logger"] == "both"]
    assert line["message"] == "with args" and "KeyError: 'kept'" in line["exception"]


class CountingStream(StalledStream):
    """A stalled stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def counting() -> Iterator[StalledStream]:
    """A stalled stream that counts its writes."""
    yield from restoring(CountingStream())


def test_lines_waiting_together_are_written_in_one_write(counting: StalledStream) -> None:
    assert isinstance(counting, CountingStream)
    logs.configure("info", stream=counting)
    log = logging.getLogger("batched")
    log.info("first")  # the writer takes it and waits in write() until the gate opens
    for i in range(200):
        log.info("waiting %d", i)
    counting.gate.set()
    logs.flush()
    assert [line["message"] for line in counting.lines()] == ["first", *(f"waiting {i}" for i in range(200))]
    assert counting.writes <= 5, counting.writes  # one write per record would be 201


def test_info_event_writes_the_line_the_formatter_would(stream: StalledStream) -> None:
    stream.gate.set()
    logs.configure("info", stream=stream)
    log = logging.getLogger("rmllm.test-event")
    fields = {"event": "call", "request_id": "req-1", "code": "OK", "n": 3, "ratio": 0.5, "none": None}
    fields |= {"api_key": "sk-live-abc", "token_id": "t-1", "obj": ("a", 1)}
    logs.info_event(log, "call finished", fields)
    log.info("call finished", extra=fields)
    logs.flush()
    fast, slow = (line for line in stream.lines() if line["logger"] == "rmllm.test-event")
    fast.pop("time")
    slow.pop("time")
    assert fast == slow
    assert list(fast) == list(slow)
    assert fast["api_key"] == "[redacted]" and fast["token_id"] == "t-1" and fast["obj"] == "('a', 1)"
    assert fast["request_id"] == "req-1" and fast["level"] == "info" and fast["message"] == "call finished"


def test_info_event_is_an_ordinary_record_when_another_handler_listens(
    stream: StalledStream, caplog: pytest.LogCaptureFixture
) -> None:
    stream.gate.set()
    logs.configure("info", stream=stream)
    logging.getLogger().addHandler(caplog.handler)
    try:
        logs.info_event(logging.getLogger("rmllm.test-seen"), "seen", {"event": "call", "code": "OK"})
    finally:
        logging.getLogger().removeHandler(caplog.handler)
    (record,) = [r for r in caplog.records if r.name == "rmllm.test-seen"]
    assert record.getMessage() == "seen" and record.__dict__["code"] == "OK"
    logs.flush()
    assert [line["code"] for line in stream.lines() if line["logger"] == "rmllm.test-seen"] == ["OK"]


def test_info_event_respects_the_level_and_the_queue_limit(stream: StalledStream) -> None:
    logs.configure("warning", queue_limit=10, stream=stream)
    log = logging.getLogger("rmllm.test-limit")
    logs.info_event(log, "below the level", {})
    logging.getLogger().setLevel(logging.INFO)
    for i in range(100):
        logs.info_event(log, f"event {i}", {})
    stream.gate.set()
    logs.flush()
    lines = stream.lines()
    kept = [line for line in lines if line["logger"] == "rmllm.test-limit"]
    assert all(line["message"] != "below the level" for line in kept)
    assert 1 <= len(kept) <= 11
    reported = sum(int(line["message"].split(": ")[1].split()[0]) for line in lines if line.get("event"))
    assert reported == 100 - len(kept)
