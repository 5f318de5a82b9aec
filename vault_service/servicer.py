"""The VaultService RPCs: validate, call the store off the event loop, answer.

Authentication has already happened (``vault_service.auth``); each method reads
the caller from ``current_user()``, validates its request (``validation``), runs
the storage work on the database threads and converts the result. Methods hold
no ``try`` ladders: errors are ``RmllmError``s that the server's error interceptor
translates. No response of a user RPC contains a key.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from rmllm_common import requestctx
from rmllm_common.errors import TokenInvalid, Unimplemented, invalid
from rmllm_common.registry import Registry
from vault_service import accounts, configs, validation
from vault_service.auth import current_user
from vault_service.crypto import Keyring
from vault_service.database import Database
from vault_service.invalidations import Change
from vault_service.watch import InvalidationHub, Resync

Context = grpc.aio.ServicerContext[Any, Any]
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
    """The seven VaultService RPCs over one database and keyring."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        hub: InvalidationHub,
        *,
        registry: Registry,
        allow_custom_base_url: bool,
    ) -> None:
        self._db = db
        self._hub = hub
        self._keyring = keyring
        self._registry = registry
        self._allow_custom = allow_custom_base_url

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
        resolved = await self._db.run(
            configs.resolve,
            self._db,
            self._keyring,
            request.user_token,
            spec.id,
            request.request_id or requestctx.request_id(),
            request.lease_seconds,
        )
        return vault_pb2.ResolveCredentialsResponse(
            user_id=resolved.user_id,
            provider=resolved.provider,
            api_key=resolved.api_key.reveal(),
            base_url=resolved.base_url,
            settings=_settings(resolved.settings),
            key_hint=resolved.key_hint,
            token_id=resolved.token_id,
        )

    async def AuthenticateToken(
        self, request: vault_pb2.AuthenticateTokenRequest, context: Context
    ) -> vault_pb2.AuthenticateTokenResponse:
        user = await self._db.run(accounts.authenticate, self._db, request.user_token)
        if user is None:
            raise TokenInvalid("the user token is unknown or revoked")
        return vault_pb2.AuthenticateTokenResponse(user_id=user.user_id, user_name=user.user_name)

    # The second wave's ledger RPCs (CONTRACT §8) are declared in the contract ahead
    # of their implementations, which land with the usage ledger (#10); until then
    # they answer UNIMPLEMENTED explicitly.

    async def GetUsageSummary(
        self, request: vault_pb2.GetUsageSummaryRequest, context: Context
    ) -> vault_pb2.GetUsageSummaryResponse:
        raise Unimplemented("GetUsageSummary is not served by this vault yet")

    async def ListUsageRecords(
        self, request: vault_pb2.ListUsageRecordsRequest, context: Context
    ) -> vault_pb2.ListUsageRecordsResponse:
        raise Unimplemented("ListUsageRecords is not served by this vault yet")

    async def ReportUsage(
        self, request_iterator: AsyncIterator[vault_pb2.ReportUsageRequest], context: Context
    ) -> vault_pb2.ReportUsageResponse:
        raise Unimplemented("ReportUsage is not served by this vault yet")

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
