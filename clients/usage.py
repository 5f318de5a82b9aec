"""The caller's own usage, as the clients return it: summaries, records, and the requests for them.

``UsageSummary`` (totals, and breakdowns by UTC day, provider and model) comes
from the vault's GetUsageSummary; ``UsagePage`` (records newest first, and the
token of the next page) from ListUsageRecords. Shared by the sync and asyncio
clients so both send the same requests and return the same values. Times are
timezone-aware UTC ``datetime`` values; a naive one is taken as UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from realmultillm.vault.v1 import vault_pb2


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(aware.astimezone(UTC))
    return stamp


def summary_request(
    since: datetime, until: datetime | None, provider: str
) -> vault_pb2.GetUsageSummaryRequest:
    """A GetUsageSummary request for ``[since, until)`` (``until`` unset: now)."""
    request = vault_pb2.GetUsageSummaryRequest(start_time=_stamp(since), provider=provider)
    if until is not None:
        request.end_time.CopyFrom(_stamp(until))
    return request


def records_request(
    since: datetime | None, until: datetime | None, provider: str, page_size: int, page_token: str
) -> vault_pb2.ListUsageRecordsRequest:
    """A ListUsageRecords request (unset times: the server's defaults)."""
    request = vault_pb2.ListUsageRecordsRequest(provider=provider, page_size=page_size, page_token=page_token)
    if since is not None:
        request.start_time.CopyFrom(_stamp(since))
    if until is not None:
        request.end_time.CopyFrom(_stamp(until))
    return request


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Usage added up; input tokens include cached ones, output tokens include reasoning."""

    calls: int
    failed_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    reasoning_tokens: int
    cost_usd: float

    @classmethod
    def from_proto(cls, message: vault_pb2.UsageTotals) -> UsageTotals:
        return cls(
            message.calls,
            message.failed_calls,
            message.input_tokens,
            message.output_tokens,
            message.cache_read_input_tokens,
            message.cache_creation_input_tokens,
            message.reasoning_tokens,
            message.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """The usage of one day (``day``), one provider, or one model of a provider."""

    day: str
    provider: str
    model: str
    totals: UsageTotals

    @classmethod
    def from_proto(cls, message: vault_pb2.UsageGroup) -> UsageGroup:
        return cls(message.day, message.provider, message.model, UsageTotals.from_proto(message.totals))


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """A range's totals, and its usage by UTC day, by provider and by model."""

    totals: UsageTotals
    by_day: list[UsageGroup]
    by_provider: list[UsageGroup]
    by_model: list[UsageGroup]

    @classmethod
    def from_proto(cls, message: vault_pb2.GetUsageSummaryResponse) -> UsageSummary:
        return cls(
            UsageTotals.from_proto(message.totals),
            [UsageGroup.from_proto(g) for g in message.by_day],
            [UsageGroup.from_proto(g) for g in message.by_provider],
            [UsageGroup.from_proto(g) for g in message.by_model],
        )


def _seconds(message: object) -> float:
    return float(message.seconds) + float(message.nanos) / 1e9  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One call of the LLM service, as accounted."""

    request_id: str
    time: datetime
    token_id: str
    provider: str
    model: str
    method: str
    stream: bool
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    reasoning_tokens: int
    usage_reported: bool
    cost_usd: float
    latency: timedelta
    time_to_first_token: timedelta | None
    status_code: str
    reason: str
    retries: int

    @classmethod
    def from_proto(cls, message: vault_pb2.UsageRecord) -> UsageRecord:
        return cls(
            request_id=message.request_id,
            time=message.time.ToDatetime(tzinfo=UTC),
            token_id=message.token_id,
            provider=message.provider,
            model=message.model,
            method=message.method,
            stream=message.stream,
            input_tokens=message.input_tokens,
            output_tokens=message.output_tokens,
            cache_read_input_tokens=message.cache_read_input_tokens,
            cache_creation_input_tokens=message.cache_creation_input_tokens,
            reasoning_tokens=message.reasoning_tokens,
            usage_reported=message.usage_reported,
            cost_usd=message.cost_usd,
            latency=timedelta(seconds=_seconds(message.latency)),
            time_to_first_token=(
                timedelta(seconds=_seconds(message.time_to_first_token))
                if message.HasField("time_to_first_token")
                else None
            ),
            status_code=message.status_code,
            reason=message.reason,
            retries=message.retries,
        )


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of records, newest first; ``next_page_token`` is empty on the last page."""

    records: list[UsageRecord]
    next_page_token: str

    @classmethod
    def from_proto(cls, message: vault_pb2.ListUsageRecordsResponse) -> UsagePage:
        return cls([UsageRecord.from_proto(r) for r in message.records], message.next_page_token)
