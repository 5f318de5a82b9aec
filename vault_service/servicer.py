"""The VaultService RPCs: validate, call the store, answer.

Authentication has already happened (``vault_service.auth``); each method reads
the caller from ``current_user()``, validates its request (``validation``), runs
the storage work on the database threads (the hot reads of ResolveCredentials and
AuthenticateToken through ``Database.read``, on the loop itself on SQLite) and
converts the result. Methods hold
no ``try`` ladders: errors are ``RmllmError``s that the server's error interceptor
translates. No response of a user RPC contains a key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from rmllm_common import requestctx
from rmllm_common.errors import RmllmError, TokenInvalid, UserDisabled, invalid
from rmllm_common.modelpolicy import ModelPolicy
from rmllm_common.registry import Registry
from vault_service import accounts, configs, ledger, limits, validation, writes
from vault_service.auth import current_user
from vault_service.authguard import AuthGuard
from vault_service.crypto import Keyring
from vault_service.database import Database
from vault_service.groupcommit import GroupCommit
from vault_service.invalidations import Change
from vault_service.watch import InvalidationHub, Resync

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_LEASE_SECONDS = 3600


def _timestamp(micros: int | None) -> timestamp_pb2.Timestamp | None:
    if micros is None:
        return None
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def _settings(value: configs.Settings) -> vault_pb2.ProviderSettings:
    return vault_pb2.ProviderSettings(
        default_model=value.default_model, temperature=value.temperature, max_tokens=value.max_tokens
    )


def _micros(stamp: timestamp_pb2.Timestamp) -> int:
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def _duration(micros: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def _policy(policy: ModelPolicy) -> vault_pb2.ModelPolicy | None:
    return vault_pb2.ModelPolicy(allow=policy.allow, deny=policy.deny) if policy else None


def _limits(found: limits.Limits) -> dict[str, Any]:
    """The budget and policy fields of ResolveCredentials' and AuthenticateToken's answers."""
    budgets = [
        vault_pb2.BudgetStatus(
            scope=b.scope.value,  # type: ignore[arg-type]
            period=b.period.value,  # type: ignore[arg-type]
            limit_usd=b.limit_usd,
            spent_usd=b.spent_usd,
            reset_time=timestamp_pb2.Timestamp(seconds=int(b.reset_time.timestamp())),
        )
        for b in found.budgets
    ]
    return {
        "budgets": budgets,
        "user_policy": _policy(found.user_policy),
        "token_policy": _policy(found.token_policy),
    }


def _totals(totals: ledger.Totals) -> vault_pb2.UsageTotals:
    return vault_pb2.UsageTotals(
        calls=totals.calls,
        failed_calls=totals.failed_calls,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cache_read_input_tokens=totals.cache_read_input_tokens,
        cache_creation_input_tokens=totals.cache_creation_input_tokens,
        reasoning_tokens=totals.reasoning_tokens,
        cost_usd=totals.cost_usd,
    )


def _group(group: ledger.Group) -> vault_pb2.UsageGroup:
    return vault_pb2.UsageGroup(
        day=group.day, provider=group.provider, model=group.model, totals=_totals(group.totals)
    )


def entry_from_proto(record: vault_pb2.UsageRecord) -> ledger.Entry:
    """A reported record in the ledger's units."""
    return ledger.Entry(
        request_id=record.request_id,
        time=_micros(record.time),
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
        latency_us=record.latency.seconds * 1_000_000 + record.latency.nanos // 1000,
        ttft_us=(
            record.time_to_first_token.seconds * 1_000_000 + record.time_to_first_token.nanos // 1000
            if record.HasField("time_to_first_token")
            else None
        ),
        status_code=record.status_code,
        reason=record.reason,
        retries=record.retries,
    )


def entry_to_proto(entry: ledger.Entry) -> vault_pb2.UsageRecord:
    """A stored record as the API shows it."""
    return vault_pb2.UsageRecord(
        request_id=entry.request_id,
        time=_timestamp(entry.time),
        user_id=entry.user_id,
        token_id=entry.token_id,
        provider=entry.provider,
        model=entry.model,
        method=entry.method,
        stream=entry.stream,
        input_tokens=entry.input_tokens,
        output_tokens=entry.output_tokens,
        cache_read_input_tokens=entry.cache_read_input_tokens,
        cache_creation_input_tokens=entry.cache_creation_input_tokens,
        reasoning_tokens=entry.reasoning_tokens,
        usage_reported=entry.usage_reported,
        cost_usd=entry.cost_usd,
        latency=_duration(entry.latency_us),
        time_to_first_token=_duration(entry.ttft_us) if entry.ttft_us is not None else None,
        status_code=entry.status_code,
        reason=entry.reason,
        retries=entry.retries,
    )


def _resolve_with_limits(  # noqa: PLR0917 - the resolve's inputs, in Database.run's positional form
    db: Database, keyring: Keyring, token: str, provider: str, request_id: str, lease_seconds: int
) -> tuple[configs.Lookup, limits.Limits | None]:
    found = configs.lookup(db, keyring, token, provider, request_id, lease_seconds)
    outcome = found.outcome
    if isinstance(outcome, RmllmError):
        return found, None
    if not found.limited:  # the resolve's own query found no limits: no second query
        return found, limits.Limits()
    return found, limits.lookup(db, outcome.user_id, outcome.token_id)


def _authenticate_with_limits(db: Database, token: str) -> tuple[accounts.Principal, limits.Limits] | None:
    user = accounts.authenticate(db, token)
    if user is None:
        return None
    return user, limits.lookup(db, user.user_id, user.token_id)


def change_to_proto(item: Change | Resync) -> vault_pb2.WatchInvalidationsResponse:
    """The stream form of one change, or of a RESYNC."""
    if isinstance(item, Resync):
        return vault_pb2.WatchInvalidationsResponse(
            sequence=item.sequence, kind=vault_pb2.INVALIDATION_KIND_RESYNC
        )
    return vault_pb2.WatchInvalidationsResponse(
        sequence=item.seq,
        kind=vault_pb2.InvalidationKind.Value("INVALIDATION_KIND_" + item.kind.value),
        user_id=item.user_id,
        provider=item.provider,
        token_id=item.token_id,
        time=_timestamp(item.time),
    )


def to_proto(record: configs.Record) -> vault_pb2.ProviderConfig:
    """The API form of a stored configuration."""
    return vault_pb2.ProviderConfig(
        provider=record.provider,
        key_hint=record.key_hint,
        base_url=record.base_url,
        settings=_settings(record.settings),
        is_active=record.is_active,
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
        last_used_time=_timestamp(record.last_used_time),
        usage_count=record.usage_count,
    )


class VaultServicer(vault_pb2_grpc.VaultServiceServicer):
    """The VaultService RPCs over one database and keyring."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        hub: InvalidationHub,
        *,
        registry: Registry,
        allow_custom_base_url: bool,
        guard: AuthGuard | None = None,
    ) -> None:
        self._db = db
        self._hub = hub
        self._keyring = keyring
        self._registry = registry
        self._allow_custom = allow_custom_base_url
        self._guard = guard
        self._writes: GroupCommit[writes.Write] = GroupCommit(db, writes.apply)

    async def _with_user_token(self, action: str, token: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, behind the failed-authentication limit of ``token``'s prefix.

        An unknown token is counted (one audit row per interval), then re-raised.
        """
        if self._guard is None:
            return await call()
        self._guard.check(action, token)
        try:
            return await call()
        except UserDisabled:
            raise  # a real token, not a guess (ResolveCredentials audits it on its own row)
        except TokenInvalid:
            self._guard.failed(action, token)
            raise

    async def PutProviderConfig(
        self, request: vault_pb2.PutProviderConfigRequest, context: Context
    ) -> vault_pb2.PutProviderConfigResponse:
        spec = validation.provider(self._registry, request.provider)
        key = validation.api_key(request.api_key, spec)
        url = validation.base_url(request.base_url, spec, self._allow_custom)
        chat_settings = validation.settings(request.settings, spec)
        user = current_user()
        ciphertext = self._keyring.encrypt(key, user.user_id, spec.id)
        draft = configs.Draft(ciphertext, self._keyring.current.key_id, key.hint, url, chat_settings)
        record = await self._db.run(
            configs.put, self._db, user.user_id, spec.id, draft, requestctx.request_id()
        )
        return vault_pb2.PutProviderConfigResponse(config=to_proto(record))

    async def UpdateProviderConfig(
        self, request: vault_pb2.UpdateProviderConfigRequest, context: Context
    ) -> vault_pb2.UpdateProviderConfigResponse:
        spec = validation.provider(self._registry, request.config.provider, "config.provider")
        changes = validation.changes(request, spec, self._allow_custom)
        user = current_user()
        record = await self._db.run(
            configs.update, self._db, user.user_id, spec.id, changes, requestctx.request_id()
        )
        return vault_pb2.UpdateProviderConfigResponse(config=to_proto(record))

    async def GetProviderConfig(
        self, request: vault_pb2.GetProviderConfigRequest, context: Context
    ) -> vault_pb2.GetProviderConfigResponse:
        spec = validation.provider(self._registry, request.provider)
        record = await self._db.run(configs.get, self._db, current_user().user_id, spec.id)
        return vault_pb2.GetProviderConfigResponse(config=to_proto(record))

    async def ListProviderConfigs(
        self, request: vault_pb2.ListProviderConfigsRequest, context: Context
    ) -> vault_pb2.ListProviderConfigsResponse:
        records = await self._db.run(configs.list_for, self._db, current_user().user_id)
        return vault_pb2.ListProviderConfigsResponse(configs=[to_proto(r) for r in records])

    async def DeleteProviderConfig(
        self, request: vault_pb2.DeleteProviderConfigRequest, context: Context
    ) -> vault_pb2.DeleteProviderConfigResponse:
        spec = validation.provider(self._registry, request.provider)
        await self._db.run(configs.delete, self._db, current_user().user_id, spec.id, requestctx.request_id())
        return vault_pb2.DeleteProviderConfigResponse(provider=spec.id)

    async def ResolveCredentials(
        self, request: vault_pb2.ResolveCredentialsRequest, context: Context
    ) -> vault_pb2.ResolveCredentialsResponse:
        spec = validation.provider(self._registry, request.provider)
        if request.request_id and not _REQUEST_ID.match(request.request_id):
            raise invalid("request_id", "at most 128 characters: letters, digits and . _ : -")
        if not request.user_token:
            raise TokenInvalid("user_token is empty: pass the caller's token (without `Bearer `)")
        if not 0 <= request.lease_seconds <= MAX_LEASE_SECONDS:
            raise invalid("lease_seconds", f"from 0 to {MAX_LEASE_SECONDS}")
        resolved, found = await self._with_user_token(
            "config.resolve",
            request.user_token,
            lambda: self._resolve(
                request.user_token,
                spec.id,
                request.request_id or requestctx.request_id(),
                request.lease_seconds,
            ),
        )
        return vault_pb2.ResolveCredentialsResponse(
            user_id=resolved.user_id,
            provider=resolved.provider,
            api_key=resolved.api_key.reveal(),
            base_url=resolved.base_url,
            settings=_settings(resolved.settings),
            key_hint=resolved.key_hint,
            token_id=resolved.token_id,
            token_expire_time=_timestamp(resolved.token_expire_time),
            **_limits(found),
        )

    async def _resolve(
        self, token: str, provider: str, request_id: str, lease_seconds: int
    ) -> tuple[configs.Resolved, limits.Limits]:
        """Read and decrypt off the writer; answer once the audit row and use count are durable."""
        found, found_limits = await self._db.read(
            _resolve_with_limits, self._db, self._keyring, token, provider, request_id, lease_seconds
        )
        if found.use is not None:
            await self._writes.commit(found.use)
        if isinstance(found.outcome, RmllmError):
            raise found.outcome
        assert found_limits is not None
        return found.outcome, found_limits

    async def AuthenticateToken(
        self, request: vault_pb2.AuthenticateTokenRequest, context: Context
    ) -> vault_pb2.AuthenticateTokenResponse:
        user, user_limits = await self._with_user_token(
            "auth.token", request.user_token, lambda: self._authenticate(request.user_token)
        )
        return vault_pb2.AuthenticateTokenResponse(
            user_id=user.user_id, user_name=user.user_name, token_id=user.token_id, **_limits(user_limits)
        )

    async def _authenticate(self, token: str) -> tuple[accounts.Principal, limits.Limits]:
        found = await self._db.read(_authenticate_with_limits, self._db, token)
        if found is None:
            raise TokenInvalid(accounts.UNKNOWN_TOKEN_MESSAGE)
        return found

    async def GetUsageSummary(
        self, request: vault_pb2.GetUsageSummaryRequest, context: Context
    ) -> vault_pb2.GetUsageSummaryResponse:
        start = _micros(request.start_time) if request.HasField("start_time") else None
        end = _micros(request.end_time) if request.HasField("end_time") else None
        start_us, end_us = ledger.check_range(start, end)
        provider = validation.provider(self._registry, request.provider).id if request.provider else ""
        found = await self._db.run(
            ledger.summary, self._db, current_user().user_id, start_us, end_us, provider
        )
        return vault_pb2.GetUsageSummaryResponse(
            totals=_totals(found.totals),
            by_day=[_group(g) for g in found.by_day],
            by_provider=[_group(g) for g in found.by_provider],
            by_model=[_group(g) for g in found.by_model],
        )

    async def ListUsageRecords(
        self, request: vault_pb2.ListUsageRecordsRequest, context: Context
    ) -> vault_pb2.ListUsageRecordsResponse:
        start = _micros(request.start_time) if request.HasField("start_time") else None
        end = _micros(request.end_time) if request.HasField("end_time") else None
        provider = validation.provider(self._registry, request.provider).id if request.provider else ""
        page = await self._db.run(
            functools.partial(
                ledger.records,
                page_size=request.page_size,
                page_token=request.page_token,
                provider=provider,
            ),
            self._db,
            current_user().user_id,
            start,
            end,
        )
        return vault_pb2.ListUsageRecordsResponse(
            records=[entry_to_proto(e) for e in page.entries], next_page_token=page.next_token
        )

    async def ReportUsage(
        self, request_iterator: AsyncIterator[vault_pb2.ReportUsageRequest], context: Context
    ) -> vault_pb2.ReportUsageResponse:
        accepted = duplicates = 0
        async for batch in request_iterator:
            if len(batch.records) > ledger.MAX_BATCH:
                raise invalid("records", f"at most {ledger.MAX_BATCH} records per message")
            entries = [entry_from_proto(r) for r in batch.records]
            if not entries:
                continue
            ledger.check_batch(entries)
            usage = writes.UsageBatch(entries)
            await self._writes.commit(usage)  # in the same transactions as the resolves' writes
            assert usage.ingested is not None
            accepted += usage.ingested.accepted
            duplicates += usage.ingested.duplicates
        return vault_pb2.ReportUsageResponse(accepted=accepted, duplicates=duplicates)

    async def WatchInvalidations(
        self, request: vault_pb2.WatchInvalidationsRequest, context: Context
    ) -> AsyncIterator[vault_pb2.WatchInvalidationsResponse]:
        subscription = self._hub.subscribe()
        try:
            while True:
                item = await subscription.next()
                if not isinstance(item, Change | Resync):
                    return  # the hub is closing or lost the database: the watcher resyncs elsewhere
                yield change_to_proto(item)
        finally:
            self._hub.unsubscribe(subscription)
