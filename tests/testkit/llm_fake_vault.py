"""An in-process fake of the vault's service-only RPCs, for LLM service tests.

``FakeVault`` implements ResolveCredentials, AuthenticateToken and
WatchInvalidations (a RESYNC, then what ``invalidate`` sends) over a real
``grpc.aio`` server on a loopback port, with canned users and keys. Like the real
vault it refuses callers without the service credential (PERMISSION_DENIED /
SERVICE_CREDENTIAL_REQUIRED), answers unknown tokens with UNAUTHENTICATED /
TOKEN_INVALID and missing keys with FAILED_PRECONDITION / KEY_NOT_CONFIGURED, all as
rich statuses. It records each call (method, token, provider, metadata), and can be
told to fail the next calls with any error, to stall, or to hold every call until a
gate opens, to test the LLM service's
translation and deadlines. ReportUsage keeps the usage records it is sent
(idempotent on the request id, like the real vault); ``limits`` adds budgets and
model policies (the response fields) to a user's answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from rmllm_common import errors
from rmllm_common.registry import default_registry
from rmllm_common.server import abort_with

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class StoredKey:
    """One user's configuration for one provider."""

    api_key: str
    base_url: str = ""
    default_model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass
class VaultCall:
    """One call the fake vault received."""

    method: str
    user_token: str
    provider: str
    metadata: dict[str, str]
    remaining: float | None
    request_id: str = ""
    lease_seconds: int = 0


@dataclass
class FakeVault(vault_pb2_grpc.VaultServiceServicer):
    """Canned users (token -> user id) and keys ((user id, provider) -> StoredKey)."""

    service_token: str
    users: dict[str, str] = field(default_factory=dict)
    # token -> token id, for tokens that are not their user's first (``tok_<user id>``)
    token_ids: dict[str, str] = field(default_factory=dict)
    keys: dict[tuple[str, str], StoredKey] = field(default_factory=dict)
    calls: list[VaultCall] = field(default_factory=list)
    usage: dict[str, vault_pb2.UsageRecord] = field(default_factory=dict)
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_with: errors.RmllmError | None = None
    stall: bool = False
    gate: asyncio.Event | None = None  # when set: every call waits for it to open
    address: str = ""
    # WatchInvalidations: off answers UNIMPLEMENTED (an older vault: no cache).
    serve_watch: bool = True
    sequence: int = 0
    watchers: list[asyncio.Queue[vault_pb2.WatchInvalidationsResponse | None]] = field(default_factory=list)
    _server: grpc.aio.Server | None = None

    async def _enter(
        self, method: str, token: str, provider: str, context: Context, request_id: str = ""
    ) -> str:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.calls.append(VaultCall(method, token, provider, metadata, context.time_remaining(), request_id))
        if self.stall:
            await asyncio.sleep(3600)
        if self.gate is not None:
            await self.gate.wait()
        if metadata.get("authorization") != f"Bearer {self.service_token}":
            await abort_with(context, errors.PermissionDenied("this RPC needs the service credential"))
        if self.fail_with is not None:
            await abort_with(context, self.fail_with)
        user_id = self.users.get(token)
        if user_id is None:
            await abort_with(context, errors.TokenInvalid("unknown token"))
        assert user_id is not None
        return user_id

    async def ResolveCredentials(
        self, request: vault_pb2.ResolveCredentialsRequest, context: Context
    ) -> vault_pb2.ResolveCredentialsResponse:
        user_id = await self._enter(
            "ResolveCredentials", request.user_token, request.provider, context, request.request_id
        )
        self.calls[-1].lease_seconds = request.lease_seconds
        spec = default_registry().get(request.provider)
        if spec is None:
            await abort_with(context, errors.UnknownProvider("unknown provider"))
        assert spec is not None
        stored = self.keys.get((user_id, spec.id))
        if stored is None:
            await abort_with(context, errors.KeyNotConfigured("no key", provider=spec.id))
        assert stored is not None
        settings = vault_pb2.ProviderSettings(default_model=stored.default_model)
        if stored.temperature is not None:
            settings.temperature = stored.temperature
        if stored.max_tokens is not None:
            settings.max_tokens = stored.max_tokens
        return vault_pb2.ResolveCredentialsResponse(
            user_id=user_id,
            provider=spec.id,
            api_key=stored.api_key,
            base_url=stored.base_url,
            settings=settings,
            key_hint=stored.api_key[-4:],
            token_id=self.token_ids.get(request.user_token, f"tok_{user_id}"),
            **self.limits.get(user_id, {}),
        )

    async def AuthenticateToken(
        self, request: vault_pb2.AuthenticateTokenRequest, context: Context
    ) -> vault_pb2.AuthenticateTokenResponse:
        user_id = await self._enter("AuthenticateToken", request.user_token, "", context)
        return vault_pb2.AuthenticateTokenResponse(
            user_id=user_id,
            user_name=f"name-{user_id}",
            token_id=self.token_ids.get(request.user_token, f"tok_{user_id}"),
            **self.limits.get(user_id, {}),
        )

    async def ReportUsage(self, request_iterator: Any, context: Context) -> vault_pb2.ReportUsageResponse:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if metadata.get("authorization") != f"Bearer {self.service_token}":
            await abort_with(context, errors.PermissionDenied("this RPC needs the service credential"))
        accepted = duplicates = 0
        async for batch in request_iterator:
            for record in batch.records:
                if record.request_id in self.usage:
                    duplicates += 1
                else:
                    self.usage[record.request_id] = record
                    accepted += 1
        return vault_pb2.ReportUsageResponse(accepted=accepted, duplicates=duplicates)

    async def WatchInvalidations(
        self, request: vault_pb2.WatchInvalidationsRequest, context: Context
    ) -> AsyncIterator[vault_pb2.WatchInvalidationsResponse]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if not self.serve_watch:
            await abort_with(context, errors.Unimplemented("this vault has no WatchInvalidations"))
        if metadata.get("authorization") != f"Bearer {self.service_token}":
            await abort_with(context, errors.PermissionDenied("this RPC needs the service credential"))
        queue: asyncio.Queue[vault_pb2.WatchInvalidationsResponse | None] = asyncio.Queue()
        self.watchers.append(queue)
        try:
            yield vault_pb2.WatchInvalidationsResponse(
                sequence=self.sequence, kind=vault_pb2.INVALIDATION_KIND_RESYNC
            )
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self.watchers.remove(queue)

    def invalidate(self, kind: int, user_id: str = "", *, skip: int = 0, **fields: str) -> None:
        """Send one change to every watcher (``skip`` numbers first: a gap)."""
        self.sequence += 1 + skip
        change = vault_pb2.WatchInvalidationsResponse(
            sequence=self.sequence,
            kind=kind,  # type: ignore[arg-type]
            user_id=user_id,
            **fields,  # type: ignore[arg-type]
        )
        for queue in self.watchers:
            queue.put_nowait(change)

    def end_watches(self) -> None:
        """End every watch stream (as a vault shutting down does)."""
        for queue in self.watchers:
            queue.put_nowait(None)

    def methods(self) -> list[str]:
        """The methods called so far, in order."""
        return [call.method for call in self.calls]

    async def start(self) -> str:
        """Serve on a loopback port; returns ``host:port``."""
        self._server = grpc.aio.server()
        vault_pb2_grpc.add_VaultServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        """Stop serving: end the watch streams first, as the real vault drains them, so that
        none is cancelled by the stop (which grpc logs as an error in the server's process)."""
        for queue in self.watchers:
            queue.put_nowait(None)
        if self._server is not None:
            await self._server.stop(1.0 if self.watchers else None)
