"""The one code path of Chat and StreamChat: validate, resolve, limit, stream, retry.

``ChatService.prepare`` validates the request, has the ``EndpointResolver`` find the
caller's key, endpoint and adapter (bounded by the caller's deadline), takes a
token from the caller's rate-limit bucket (and, for StreamChat, one of the caller's
concurrent-stream slots with it, in one step), and resolves the request's parameters
against the caller's stored defaults and the registry's, once. ``ChatService.events``
then yields the adapter's normalised events (text, reasoning and tool-call
deltas, then one ``Finished``) with transient failures retried before the first event (see
``retrying``). The servicer frames them: StreamChat forwards them, Chat collects them.
Before any of that reaches a provider, ``enforce`` applies the caller's model
policy and budgets (``limits``), counting this replica's unreported spend.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from llm_service import accounting, telemetry
from llm_service.adapters.base import ChatEvent, ChatParams
from llm_service.deadline import Deadline
from llm_service.endpoints import Account, EndpointResolver
from llm_service.features import FeatureLimits
from llm_service.ratelimit import NO_LEASE, NO_STREAM_LIMIT, Limiter, StreamLease, StreamSlots
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


def enforce(
    credentials: Credentials, provider: str, model: str, usage: UsageReporter | None, since: float
) -> None:
    """The caller's model policy and budgets, checked before the provider is called.

    ``since``: when the call began asking for the credentials (``time.monotonic()``);
    the vault's spend was read after it (``UsageReporter.pending``).
    """
    limits = credentials.limits
    if not limits.budgets and not limits.user_policy and not limits.token_policy:
        return
    pending = None
    if usage is not None:
        reporter = usage

        def pending(scope: str) -> float:
            return reporter.pending(credentials.user_id, credentials.token_id, scope, since)

    limits.check(provider, model, pending)


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """Everything one completion needs, resolved once before the first provider call."""

    account: Account
    params: ChatParams
    slot: StreamLease = NO_LEASE  # a StreamChat's concurrent-stream slot: release it when the stream ends

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

    async def prepare(
        self, request: Any, token: Secret, deadline: Deadline, *, stream: bool = False
    ) -> PreparedChat:
        """Validate, resolve the caller's key and settings, and take a rate-limit token.

        With ``stream``, the rate token and one of the caller's concurrent-stream
        slots are taken together (one round trip with Redis, ``StreamSlots.admit``);
        the slot is in the answer, released here if the call fails before it is.
        """
        chat = validate_chat(request, self._endpoints.registry, self._limits)
        accounting.note_target(chat.spec.id)
        telemetry.note_provider(chat.spec)
        charged = self._endpoints.known_user(token)  # charged before any vault call when known
        slot = await self._admit(charged, stream) if charged is not None else NO_LEASE
        try:
            asked = time.monotonic()  # the vault's spend is read after this
            account = await self._endpoints.stored(chat.spec, token, deadline)
            stored = account.credentials
            params = chat.params(stored.default_model, stored.temperature, stored.max_tokens)
            accounting.note_target(chat.spec.id, params.model)
            telemetry.note_prepared(chat.spec, params.model)
            enforce(stored, chat.spec.id, params.model, self._usage, asked)
            if charged != account.user_id:
                await slot.release()
                slot = NO_LEASE  # released: if the admission below fails, nothing is held
                slot = await self._admit(account.user_id, stream)
        except BaseException:
            await slot.release()
            raise
        return PreparedChat(account, params, slot)

    async def _admit(self, user_id: str, stream: bool) -> StreamLease:
        if stream:
            return await self._streams.admit(user_id, self._limiter)
        await self._limiter.take(user_id)
        return NO_LEASE

    def events(self, prepared: PreparedChat, deadline: Deadline) -> AsyncGenerator[ChatEvent, None]:
        """The completion's events, retried before the first one (close it when done)."""
        account, params = prepared.account, prepared.params

        def open_stream(timeout: float | None) -> AsyncIterator[ChatEvent]:
            return account.stream_chat(params, timeout)

        events = stream_with_retries(open_stream, self._policy, deadline, prepared.spec.id)
        return telemetry.traced(events, prepared.spec, params)
