"""The usage record of the call being served: filled in as the call goes, handed to the reporter at its end.

``recorded(reporter, method, stream, deadline)`` wraps one Chat, StreamChat,
TestKey or ListModels call. It puts a ``CallRecord`` in a context variable that
the code below fills in where it learns things: the vault client notes the caller
(user and token id, ``note_caller``), the chat path the provider and model
(``note_target``), the first delta (``note_first_token``), each retried attempt
(``note_retry``) and the answer's usage and cost (``note_usage``). When the call
ends, whatever way (answered, refused, failed, cancelled by the caller, past its
deadline, or a stream cut short), its gRPC code and ErrorInfo reason are taken
from how it ended and one ``UsageRecord`` is submitted to the reporter, which
never blocks. A cancelled stream's record carries the usage known when it was
cancelled. Calls that never got as far as an authenticated caller are not
recorded: there is no one to account them to. ListModels is recorded only when
it called the provider (``note_provider_call``). The reporter keeps the finished
``CallRecord`` itself (about a third of the memory of its proto) and builds the
``UsageRecord`` only when it sends it.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from realmultillm.vault.v1 import vault_pb2

from llm_service.deadline import Deadline
from llm_service.usage import UsageReporter
from rmllm_common import requestctx
from rmllm_common.errors import RmllmError


def _duration(seconds: float) -> duration_pb2.Duration:
    micros = max(0, round(seconds * 1_000_000))
    return duration_pb2.Duration(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


@dataclass(slots=True)
class CallRecord:
    """What is known so far about the call being served."""

    method: str
    stream: bool
    start_time: float  # epoch seconds
    started: float  # perf_counter
    provider_called: bool = False
    user_id: str = ""
    token_id: str = ""
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    usage_reported: bool = False
    cost_usd: float = 0.0
    first_token: float | None = None
    retries: int = 0
    # Set when the call ends.
    request_id: str = ""
    status_code: str = ""
    reason: str = ""
    ended: float = 0.0

    def to_proto(self) -> vault_pb2.UsageRecord:
        """The finished call's record as the vault ingests it (built when it is sent)."""
        whole = int(self.start_time)
        return vault_pb2.UsageRecord(
            request_id=self.request_id,
            time=timestamp_pb2.Timestamp(seconds=whole, nanos=int((self.start_time - whole) * 1e9)),
            user_id=self.user_id,
            token_id=self.token_id,
            provider=self.provider,
            model=self.model,
            method=self.method,
            stream=self.stream,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens,
            reasoning_tokens=self.reasoning_tokens,
            usage_reported=self.usage_reported,
            cost_usd=self.cost_usd,
            latency=_duration(self.ended - self.started),
            time_to_first_token=(
                _duration(self.first_token - self.started) if self.first_token is not None else None
            ),
            status_code=self.status_code,
            reason=self.reason,
            retries=self.retries,
        )


DEADLINE_SLACK_SECONDS = 0.05
MAX_MODEL_CHARS = 200
_current: ContextVar[CallRecord | None] = ContextVar("rmllm_usage_record", default=None)


def current() -> CallRecord | None:
    """The record of the call being served (None outside ``recorded``)."""
    return _current.get()


def note_caller(user_id: str, token_id: str) -> None:
    """The vault said who is calling."""
    record = _current.get()
    if record is not None:
        record.user_id, record.token_id = user_id, token_id


def note_target(provider: str, model: str = "") -> None:
    """The provider (and model) the call is for."""
    record = _current.get()
    if record is not None:
        record.provider = provider
        if model:
            record.model = model[:MAX_MODEL_CHARS]


def note_provider_call() -> None:
    """The call is about to call the provider (what makes a ListModels call accountable)."""
    record = _current.get()
    if record is not None:
        record.provider_called = True


def note_first_token() -> None:
    """The first delta is on its way to the caller."""
    record = _current.get()
    if record is not None and record.first_token is None:
        record.first_token = time.perf_counter()


def note_retry() -> None:
    """A provider attempt failed and is being retried."""
    record = _current.get()
    if record is not None:
        record.retries += 1


def note_usage(usage: Any, model: str = "", reported: bool | None = None) -> None:
    """The answer's ``llm.v1.Usage`` (token counts and cost), and the model that answered.

    ``reported``: whether the provider reported usage, when the adapter says; else
    read from the message's ``usage_reported``, else inferred from non-zero counts.
    """
    record = _current.get()
    if record is None:
        return
    # Counts a provider got wrong (negative) or a cost that is not a number are recorded as
    # zero: the vault refuses such records, and a refused batch would drop its neighbours too.
    record.input_tokens = max(0, usage.input_tokens)
    record.output_tokens = max(0, usage.output_tokens)
    record.cache_read_input_tokens = max(0, getattr(usage, "cache_read_input_tokens", 0))
    record.cache_creation_input_tokens = max(0, getattr(usage, "cache_creation_input_tokens", 0))
    record.reasoning_tokens = max(0, getattr(usage, "reasoning_tokens", 0))
    if reported is None:
        reported = bool(getattr(usage, "usage_reported", False) or usage.input_tokens or usage.output_tokens)
    record.usage_reported = reported
    cost = float(usage.cost_usd)
    record.cost_usd = cost if math.isfinite(cost) and cost > 0 else 0.0
    if model:  # the provider's own name for it: bounded, and printable for the ledger
        model = model[:MAX_MODEL_CHARS]
        record.model = model if model.isprintable() else "".join(c for c in model if c.isprintable())


def _outcome(error: BaseException | None, deadline: Deadline) -> tuple[str, str]:
    if error is None:
        return "OK", ""
    if isinstance(error, RmllmError):
        return error.code.name, error.reason
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        # gRPC cancels the handler when the caller's deadline passes; our Deadline was
        # taken a moment after gRPC's, so it is a few milliseconds behind.
        remaining = deadline.remaining()
        if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS:
            return "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"
        return "CANCELLED", ""
    if isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN", ""
    return "INTERNAL", "INTERNAL"


class Recording:
    """``recorded``'s context manager: a class, so entering and leaving it cost two calls."""

    __slots__ = ("_deadline", "_needs_provider_call", "_reporter", "record")

    def __init__(
        self,
        reporter: UsageReporter | None,
        method: str,
        stream: bool,
        deadline: Deadline,
        needs_provider_call: bool,
    ) -> None:
        self._reporter = reporter
        self._deadline = deadline
        self._needs_provider_call = needs_provider_call
        self.record = CallRecord(method, stream, time.time(), time.perf_counter())

    def __enter__(self) -> CallRecord:
        _current.set(self.record)
        return self.record

    def __exit__(self, _type: object, error: BaseException | None, _traceback: object) -> None:
        _current.set(None)
        record, reporter = self.record, self._reporter
        accountable = record.user_id and record.provider
        if reporter is not None and accountable and (record.provider_called or not self._needs_provider_call):
            record.status_code, record.reason = _outcome(error, self._deadline)
            record.request_id = requestctx.request_id()
            record.ended = time.perf_counter()
            reporter.submit(record)


def recorded(
    reporter: UsageReporter | None,
    method: str,
    stream: bool,
    deadline: Deadline,
    *,
    needs_provider_call: bool = False,
) -> Recording:
    """Account the call run inside: one record submitted when it ends, whatever way."""
    return Recording(reporter, method, stream, deadline, needs_provider_call)
