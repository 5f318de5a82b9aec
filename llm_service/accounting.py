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
it called the provider (``note_provider_call``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


DEADLINE_SLACK_SECONDS = 0.05
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
            record.model = model


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
    record.input_tokens = usage.input_tokens
    record.output_tokens = usage.output_tokens
    record.cache_read_input_tokens = getattr(usage, "cache_read_input_tokens", 0)
    record.cache_creation_input_tokens = getattr(usage, "cache_creation_input_tokens", 0)
    record.reasoning_tokens = getattr(usage, "reasoning_tokens", 0)
    if reported is None:
        reported = bool(getattr(usage, "usage_reported", False) or usage.input_tokens or usage.output_tokens)
    record.usage_reported = reported
    record.cost_usd = usage.cost_usd
    if model:
        record.model = model


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


def _duration(seconds: float) -> duration_pb2.Duration:
    micros = max(0, round(seconds * 1_000_000))
    return duration_pb2.Duration(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def to_proto(record: CallRecord, status_code: str, reason: str, ended: float) -> vault_pb2.UsageRecord:
    """The record as the vault ingests it."""
    whole = int(record.start_time)
    return vault_pb2.UsageRecord(
        request_id=requestctx.request_id(),
        time=timestamp_pb2.Timestamp(seconds=whole, nanos=int((record.start_time - whole) * 1e9)),
        user_id=record.user_id,
        token_id=record.token_id,
        provider=record.provider,
        model=record.model,
        method=record.method,
        stream=record.stream,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cache_read_input_tokens=record.cache_read_input_tokens,
        cache_creation_input_tokens=record.cache_creation_input_tokens,
        reasoning_tokens=record.reasoning_tokens,
        usage_reported=record.usage_reported,
        cost_usd=record.cost_usd,
        latency=_duration(ended - record.started),
        time_to_first_token=(
            _duration(record.first_token - record.started) if record.first_token is not None else None
        ),
        status_code=status_code,
        reason=reason,
        retries=record.retries,
    )


@contextmanager
def recorded(
    reporter: UsageReporter | None,
    method: str,
    stream: bool,
    deadline: Deadline,
    *,
    needs_provider_call: bool = False,
) -> Iterator[CallRecord]:
    """Account the call run inside: one record submitted when it ends, whatever way."""
    record = CallRecord(method, stream, time.time(), time.perf_counter())
    _current.set(record)
    error: BaseException | None = None
    try:
        yield record
    except BaseException as exc:
        error = exc
        raise
    finally:
        _current.set(None)
        accountable = record.user_id and record.provider
        if reporter is not None and accountable and (record.provider_called or not needs_provider_call):
            code, reason = _outcome(error, deadline)
            reporter.submit(to_proto(record, code, reason, time.perf_counter()))
