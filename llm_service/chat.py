"""The one code path of Chat and StreamChat: validate, resolve, limit, stream, retry.

``ChatService.prepare`` validates the request, has the ``EndpointResolver`` find the
caller's key, endpoint and adapter (bounded by the caller's deadline), takes a
token from the caller's rate-limit bucket, and resolves the request's parameters
against the caller's stored defaults and the registry's, once. ``ChatService.events``
then yields the adapter's normalised events (text, reasoning and tool-call
deltas, then one ``Finished``) with transient failures retried before the first event (see
``retrying``). The servicer frames them: StreamChat forwards them, Chat collects them.
Before any of that reaches a provider, ``enforce`` applies the caller's model
policy and budgets (``limits``), counting this replica's unreported spend.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from llm_service import accounting, telemetry
from llm_service.adapters.base import ChatEvent, ChatParams
from llm_service.deadline import Deadline
from llm_service.endpoints import Account, EndpointResolver
from llm_service.features import FeatureLimits
from llm_service.ratelimit import NO_STREAM_LIMIT, Limiter, StreamLease, StreamSlots
from llm_service.retrying import RetryPolicy, stream_with_retries
from llm_service.usage import UsageReporter
from llm_service.validation import validate_chat
from llm_service.vault_client import Credentials
from rmllm_common.registry import ProviderSpec
from rmllm_common.secret import Secret


async def take_before_vault(limiter: Limiter, endpoints: EndpointResolver, token: Secret) -> str | None:
    """Take the caller's rate-limit token before any vault call, when the token's user is known.

    Who a token belongs to is remembered from earlier answers (it never changes), so
    a caller past their limit costs no vault round trip and no audit row. Returns
    the user charged, or None when the token has not been seen yet (charge after).
    """
    user_id = endpoints.known_user(token)
    if user_id is not None:
        await limiter.take(user_id)
    return user_id


def enforce(credentials: Credentials, provider: str, model: str, usage: UsageReporter | None) -> None:
    """The caller's model policy and budgets, checked before the provider is called."""
    limits = credentials.limits
    if not limits.budgets and not limits.user_policy and not limits.token_policy:
        return
    pending = None
    if usage is not None:
        reporter = usage

        def pending(scope: str) -> float:
            return reporter.pending(credentials.user_id, credentials.token_id, scope)

    limits.check(provider, model, pending)


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """Everything one completion needs, resolved once before the first provider call."""

    account: Account
    params: ChatParams

    @property
    def spec(self) -> ProviderSpec:
        """The provider's registry entry."""
        return self.account.spec


class ChatService:
    """Chat and StreamChat, minus the proto framing."""

    def __init__(
        self,
        endpoints: EndpointResolver,
        limiter: Limiter,
        policy: RetryPolicy,
        limits: FeatureLimits | None = None,
        usage: UsageReporter | None = None,
        *,
        streams: StreamSlots = NO_STREAM_LIMIT,
    ) -> None:
        self._streams = streams
        self._usage = usage
        self._endpoints = endpoints
        self._limits = limits or FeatureLimits()
        self._limiter = limiter
        self._policy = policy

    async def prepare(self, request: Any, token: Secret, deadline: Deadline) -> PreparedChat:
        """Validate, resolve the caller's key and settings, and take a rate-limit token."""
        chat = validate_chat(request, self._endpoints.registry, self._limits)
        spec = chat.spec
        accounting.note_target(spec.id)
        telemetry.note_provider(spec)
        charged = self._endpoints.known_user(token)  # take_before_vault, inline
        if charged is not None:
            await self._limiter.take(charged)
        account = await self._endpoints.stored(spec, token, deadline)
        stored = account.credentials
        params = chat.params(stored.default_model, stored.temperature, stored.max_tokens)
        accounting.note_target(spec.id, params.model)
        telemetry.note_prepared(spec, params.model)
        enforce(stored, spec.id, params.model, self._usage)
        if charged != account.user_id:
            await self._limiter.take(account.user_id)
        return PreparedChat(account, params)

    async def stream_slot(self, prepared: PreparedChat) -> StreamLease:
        """One of the caller's concurrent-stream slots; release it when the stream ends."""
        return await self._streams.acquire(prepared.account.user_id)

    def events(self, prepared: PreparedChat, deadline: Deadline) -> AsyncGenerator[ChatEvent, None]:
        """The completion's events, retried before the first one (close it when done)."""
        account, params = prepared.account, prepared.params

        def open_stream(timeout: float | None) -> AsyncIterator[ChatEvent]:
            return account.stream_chat(params, timeout)

        events = stream_with_retries(open_stream, self._policy, deadline, prepared.spec.id)
        return telemetry.traced(events, prepared.spec, params)
