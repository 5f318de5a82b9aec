"""The one code path of Chat and StreamChat: validate, resolve, limit, stream, retry.

``ChatService.prepare`` validates the request, has the ``EndpointResolver`` find the
caller's key, endpoint and adapter (bounded by the caller's deadline), takes a
token from the caller's rate-limit bucket, and resolves the request's parameters
against the caller's stored defaults and the registry's, once. ``ChatService.events``
then yields the adapter's normalised events (``TextDelta``\\ s, then one
``Finished``) with transient failures retried before the first event (see
``retrying``). The servicer frames them: StreamChat forwards them, Chat collects them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from llm_service.adapters.base import ChatEvent, ChatParams
from llm_service.deadline import Deadline
from llm_service.endpoints import Account, EndpointResolver
from llm_service.ratelimit import RateLimiter
from llm_service.retrying import RetryPolicy, stream_with_retries
from llm_service.validation import validate_chat
from rmllm_common.registry import ProviderSpec
from rmllm_common.secret import Secret


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

    def __init__(self, endpoints: EndpointResolver, limiter: RateLimiter, policy: RetryPolicy) -> None:
        self._endpoints = endpoints
        self._limiter = limiter
        self._policy = policy

    async def prepare(self, request: Any, token: Secret, deadline: Deadline) -> PreparedChat:
        """Validate, resolve the caller's key and settings, and take a rate-limit token."""
        chat = validate_chat(request, self._endpoints.registry)
        account = await self._endpoints.stored(chat.spec, token, deadline)
        self._limiter.take(account.user_id)
        stored = account.credentials
        params = chat.params(stored.default_model, stored.temperature, stored.max_tokens)
        return PreparedChat(account, params)

    def events(self, prepared: PreparedChat, deadline: Deadline) -> AsyncGenerator[ChatEvent, None]:
        """The completion's events, retried before the first one (close it when done)."""
        account, params = prepared.account, prepared.params

        def open_stream(timeout: float | None) -> AsyncIterator[ChatEvent]:
            return account.stream_chat(params, timeout)

        return stream_with_retries(open_stream, self._policy, deadline, prepared.spec.id)
