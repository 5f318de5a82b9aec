"""The LLM service's client of the vault: resolve a caller's key, authenticate a token.

One ``VaultClient`` per process holds one ``grpc.aio`` channel to the vault. Every
call presents the service credential (``authorization: Bearer <service token>``),
forwards the request id (``x-request-id``), and is bounded by the caller's
remaining deadline (and ``vault_timeout_seconds``); it never waits for a vault that
is down (``wait_for_ready=False``). Vault errors are translated exactly once, here,
into ``rmllm_common.errors`` from the status code and the vault's ErrorInfo reason.
A vault that refuses the service credential (PERMISSION_DENIED) is an operator
mistake: it is logged once as an error naming the fix and reaches callers as
VAULT_UNAVAILABLE, since from their side the vault cannot be used.
Resolved credentials are cached (``credential_cache``) for at most
``credential_cache_seconds``, and only while this client's one WatchInvalidations
stream to the vault is in sync; each resolve tells the vault how long its answer
may be kept (the lease the vault audits). Credentials that carry a spend budget
are not cached: a budget is checked against the vault's latest spend.
While the cache is on, concurrent misses of one (token, provider) share one resolve:
the first asks the vault, the others wait for its answer (within their own deadline)
and take it as they would a cache entry; when it fails, or carries a budget, each
asks the vault itself. A burst of thousands of calls from one caller after a cold
start or an invalidation costs the vault one resolve, not thousands.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from llm_service import accounting, metrics, telemetry
from llm_service.credential_cache import CacheKey, CredentialCache, Credentials, InvalidationWatcher
from llm_service.deadline import Deadline
from llm_service.limits import NO_LIMITS, CallerLimits, from_reply
from rmllm_common import errors, requestctx
from rmllm_common.requestctx import REQUEST_ID_HEADER
from rmllm_common.secret import Secret

log = logging.getLogger(__name__)

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


__all__ = ["Credentials", "Identity", "VaultClient", "token_digest"]


def token_digest(user_token: Secret) -> str:
    """What the cache keys a user token by (never the token itself)."""
    return hashlib.sha256(user_token.reveal().encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a token belongs to, for calls that need no stored key."""

    user_id: str
    token_id: str = ""
    limits: CallerLimits = NO_LIMITS


def _expiry(reply: Any) -> float | None:
    """When the caller's token expires (Unix seconds), if it does."""
    if not reply.HasField("token_expire_time"):
        return None
    return float(reply.token_expire_time.ToMicroseconds()) / 1e6


def _reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason in the vault's status details ("" when there is none)."""
    for key, value in error.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
    return ""


class VaultClient:
    """Calls the vault's service-only RPCs for the LLM service."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        service_token: Secret,
        *,
        timeout_seconds: float = 10.0,
        cache_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._stub: Any = telemetry.vault_stub(vault_pb2_grpc.VaultServiceStub(channel))
        self._authorization = ("authorization", f"Bearer {service_token.reveal()}")
        self._timeout = timeout_seconds
        self.cache = CredentialCache(cache_seconds, clock=clock)
        self.watcher = InvalidationWatcher(self._stub, (self._authorization,), self.cache)
        self._warned_credential = False
        # Resolves in flight while the cache is on: what each answers (None: ask the vault
        # yourself) and the cache generation it started at.
        self._flights: dict[CacheKey, tuple[asyncio.Future[Credentials | None], int]] = {}

    def start(self) -> None:
        """Open the watch stream that lets the cache work (needs the running loop)."""
        self.watcher.start()

    async def close(self) -> None:
        """Stop watching and close the channel (at server stop)."""
        await self.watcher.close()
        await self._channel.close()

    def known_user(self, user_token: Secret) -> str | None:
        """The user a token was seen to belong to by this process, if any (no vault call)."""
        return self.cache.owner(token_digest(user_token))

    def _call_options(self, deadline: Deadline) -> tuple[float, bool, tuple[tuple[str, str], ...]]:
        """The call's timeout, whether the caller's deadline is what bounds it, and its metadata."""
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise errors.DeadlineExceeded("the caller's deadline passed before the vault was asked")
        caller_bound = remaining is not None and remaining <= self._timeout
        timeout = remaining if remaining is not None and caller_bound else self._timeout
        metadata = (self._authorization, (REQUEST_ID_HEADER, requestctx.request_id()))
        return timeout, caller_bound, metadata

    async def resolve(self, user_token: Secret, provider: str, deadline: Deadline) -> Credentials:
        """The caller's key and settings for ``provider`` (canonical id)."""
        cache = self.cache
        cache_key = (token_digest(user_token), provider)
        hit = cache.get(cache_key)
        if hit is not None:
            accounting.note_caller(hit.user_id, hit.token_id)
            metrics.credential_cache(hit=True)
            return hit
        if cache.ttl > 0:
            metrics.credential_cache(hit=False)
        if not cache.enabled:
            return await self._resolve(user_token, provider, deadline, cache_key)
        in_flight = self._flights.get(cache_key)
        # Joined only when nothing was dropped since it started: an answer older than a
        # revocation this process has seen is never handed out.
        if in_flight is not None and in_flight[1] == cache.generation:
            shared = await self._share(in_flight[0], deadline)
            if shared is not None:
                accounting.note_caller(shared.user_id, shared.token_id)
                return shared
            return await self._resolve(user_token, provider, deadline, cache_key)
        flight = (asyncio.get_running_loop().create_future(), cache.generation)
        self._flights[cache_key] = flight
        answer: Credentials | None = None
        try:
            answer = await self._resolve(user_token, provider, deadline, cache_key)
            return answer
        finally:
            # Shared only when it would have been cached (a budget's spend must be each call's own).
            flight[0].set_result(answer if answer is not None and not answer.limits.budgets else None)
            if self._flights.get(cache_key) is flight:
                del self._flights[cache_key]

    async def _share(
        self, flight: asyncio.Future[Credentials | None], deadline: Deadline
    ) -> Credentials | None:
        """The answer of the resolve in flight, waited for within the caller's own bounds."""
        timeout, caller_bound, _ = self._call_options(deadline)
        try:
            return await asyncio.wait_for(asyncio.shield(flight), timeout)
        except TimeoutError:
            if caller_bound:
                raise errors.DeadlineExceeded("the caller's deadline passed while asking the vault") from None
            raise errors.VaultUnavailable(
                f"the vault did not answer within {timeout:g}s; try again later", retry_after=1.0
            ) from None

    async def _resolve(
        self, user_token: Secret, provider: str, deadline: Deadline, cache_key: CacheKey
    ) -> Credentials:
        """Ask the vault (and cache the answer when it may be)."""
        cache = self.cache
        generation = cache.generation
        timeout, caller_bound, metadata = self._call_options(deadline)
        request = vault_pb2.ResolveCredentialsRequest(
            user_token=user_token.reveal(),
            provider=provider,
            request_id=requestctx.request_id(),
            lease_seconds=cache.lease_seconds,
        )
        try:
            reply = await self._stub.ResolveCredentials(
                request, timeout=timeout, metadata=metadata, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as exc:
            error = self._translate(exc, provider, caller_bound, timeout)
            if isinstance(error, errors.TokenInvalid):
                cache.forget_owner(cache_key[0])
            raise error from None
        settings = reply.settings
        credentials = Credentials(
            user_id=reply.user_id,
            provider=reply.provider or provider,
            api_key=Secret(reply.api_key),
            base_url=reply.base_url,
            default_model=settings.default_model,
            temperature=settings.temperature if settings.HasField("temperature") else None,
            max_tokens=settings.max_tokens if settings.HasField("max_tokens") else None,
            token_id=reply.token_id,
            limits=from_reply(reply),
            token_expires_at=(
                reply.token_expire_time.ToMicroseconds() / 1e6
                if reply.HasField("token_expire_time")
                else None
            ),
        )
        accounting.note_caller(credentials.user_id, credentials.token_id)
        # Credentials with a budget are not cached: their spend must be the vault's latest,
        # or a replica would admit calls on a stale figure until the entry expired.
        if not credentials.limits.budgets:
            cache.put(cache_key, credentials, generation)
        return credentials

    async def authenticate(self, user_token: Secret, deadline: Deadline) -> str:
        """The id of the user a token belongs to (TOKEN_INVALID when it is unknown)."""
        return (await self.identify(user_token, deadline)).user_id

    async def identify(self, user_token: Secret, deadline: Deadline) -> Identity:
        """Who a token belongs to, with its token id and limits (TOKEN_INVALID when unknown)."""
        timeout, caller_bound, metadata = self._call_options(deadline)
        request = vault_pb2.AuthenticateTokenRequest(user_token=user_token.reveal())
        try:
            reply = await self._stub.AuthenticateToken(
                request, timeout=timeout, metadata=metadata, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as exc:
            error = self._translate(exc, None, caller_bound, timeout)
            if isinstance(error, errors.TokenInvalid):
                self.cache.forget_owner(token_digest(user_token))
            raise error from None
        accounting.note_caller(reply.user_id, reply.token_id)
        self.cache.remember_owner(token_digest(user_token), reply.user_id, reply.token_id)
        return Identity(str(reply.user_id), str(reply.token_id), from_reply(reply))

    async def report_usage(
        self, batches: Sequence[Sequence[vault_pb2.UsageRecord]], timeout: float
    ) -> vault_pb2.ReportUsageResponse:
        """Send usage records in batches over one ReportUsage stream (raises ``grpc.aio.AioRpcError``)."""

        async def messages() -> AsyncIterator[vault_pb2.ReportUsageRequest]:
            for batch in batches:
                yield vault_pb2.ReportUsageRequest(records=batch)

        metadata = (self._authorization,)
        reply: vault_pb2.ReportUsageResponse = await self._stub.ReportUsage(
            messages(), timeout=timeout, metadata=metadata, wait_for_ready=False
        )
        return reply

    def _translate(  # noqa: PLR0911 - one translation table, read top to bottom
        self, exc: grpc.aio.AioRpcError, provider: str | None, caller_bound: bool, timeout: float
    ) -> errors.RmllmError:
        """The one translation of a vault status into this service's errors."""
        code = exc.code()
        reason = _reason(exc)
        if code == grpc.StatusCode.UNAUTHENTICATED and reason == "USER_DISABLED":
            return errors.UserDisabled(
                "this token's user is disabled; ask the operator to enable it (rmllm-vault users enable)"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return errors.TokenInvalid(
                "unknown, revoked or expired user token; create one with `rmllm-vault tokens create`"
            )
        if code == grpc.StatusCode.FAILED_PRECONDITION and reason == "KEY_NOT_CONFIGURED":
            name = provider or "this provider"
            return errors.KeyNotConfigured(
                f"no active key is stored for {name}; store one with the vault's PutProviderConfig",
                provider=provider,
            )
        if code == grpc.StatusCode.INTERNAL and reason == "KEY_DECRYPTION_FAILED":
            return errors.KeyDecryptionFailed(
                "the vault cannot decrypt the stored key (its seed is missing or changed); "
                "ask the operator, or store the key again",
                provider=provider,
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            if reason == "UNKNOWN_PROVIDER":
                return errors.UnknownProvider(
                    f"the vault does not know provider {provider!r}", provider=provider
                )
            return errors.InvalidRequest("the vault refused the request as invalid", provider=provider)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if caller_bound:
                return errors.DeadlineExceeded("the caller's deadline passed while asking the vault")
            return errors.VaultUnavailable(
                f"the vault did not answer within {timeout:g}s; try again later", retry_after=1.0
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            if not self._warned_credential:
                self._warned_credential = True
                log.error(
                    "the vault refused this LLM service's credential: set the same RMLLM_SERVICE_TOKEN "
                    "(or share the data directory's service_token file) on both services",
                    extra={"event": "vault_credential_rejected"},
                )
            return errors.VaultUnavailable(
                "the LLM service is misconfigured: the vault refused its service credential; "
                "ask the operator to check RMLLM_SERVICE_TOKEN on both services"
            )
        log.debug("vault call failed", extra={"grpc_code": code.name, "vault_reason": reason})
        return errors.VaultUnavailable("the vault is unavailable; try again later", retry_after=1.0)
