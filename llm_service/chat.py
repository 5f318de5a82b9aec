"""The one code path of Chat and StreamChat: validate, resolve, limit, stream, retry.

``ChatService.prepare`` validates the request, takes a token from the caller's
rate-limit bucket (before the vault call when this process knows whose token it
is), asks the vault for the caller's key and settings (bounded by the caller's
deadline), applies the custom-base-URL policy, and picks the adapter by the
provider's wire format. StreamChat also holds one of the caller's
concurrent-stream slots (``stream_slot``) until the stream ends.
``ChatService.events`` then yields the adapter's normalised events
(``TextDelta``\\ s, then one ``Finished``) with transient failures retried
before the first event (see ``retrying``). StreamChat forwards these
events; Chat collects them. ``done`` turns the final event into the proto summary,
pricing the usage from the registry.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from realmultillm.llm.v1 import llm_pb2

from llm_service.adapters.base import Adapter, ChatEvent, ChatParams, Endpoint, Finished
from llm_service.deadline import Deadline
from llm_service.ratelimit import Limiter, StreamLease, StreamSlots
from llm_service.retrying import RetryPolicy, stream_with_retries
from llm_service.validation import validate_chat
from llm_service.vault_client import Credentials, VaultClient
from rmllm_common import urls
from rmllm_common.errors import FailedPrecondition, KeyNotConfigured
from rmllm_common.registry import ProviderSpec, Registry
from rmllm_common.secret import Secret

AdapterLookup = Callable[[ProviderSpec], Adapter]
_NO_KEY = Secret("")


async def take_before_vault(limiter: Limiter, vault: VaultClient, token: Secret) -> str | None:
    """Take the caller's rate-limit token before any vault call, when the token's user is known.

    Who a token belongs to is remembered from earlier answers (it never changes), so
    a caller past their limit costs no vault round trip and no audit row. Returns
    the user charged, or None when the token has not been seen yet (charge after).
    """
    user_id = vault.known_user(token)
    if user_id is not None:
        await limiter.take(user_id)
    return user_id


async def credentials_for(
    vault: VaultClient, spec: ProviderSpec, token: Secret, deadline: Deadline
) -> Credentials:
    """The caller's credentials for ``spec``; keyless ones for a provider that needs no key."""
    try:
        return await vault.resolve(token, spec.id, deadline)
    except KeyNotConfigured:
        if spec.requires_key:
            raise
    user_id = await vault.authenticate(token, deadline)
    return Credentials(user_id, spec.id, _NO_KEY, "", "", None, None)


def stored_base_url(spec: ProviderSpec, credentials: Credentials, allow_custom: bool) -> str:
    """The endpoint to call: the stored override if this server's policy allows it."""
    if not credentials.base_url or credentials.base_url.rstrip("/") == spec.base_url:
        return spec.base_url
    try:  # stored before the rule was shared, or by an older vault: check it again
        base_url = urls.check_base_url(credentials.base_url)
    except urls.BaseUrlError as exc:
        raise FailedPrecondition(
            f"the stored base_url for {spec.id} is not acceptable ({exc}); "
            f"fix it with `rmllm keys update {spec.id} --base-url URL` ('' for the default)",
            provider=spec.id,
        ) from exc
    if not (allow_custom or spec.custom_base_url):
        raise FailedPrecondition(
            f"the stored configuration for {spec.id} points at a custom endpoint, which this server "
            "does not allow; remove its base_url, or ask the operator for RMLLM_ALLOW_CUSTOM_BASE_URL=1",
            provider=spec.id,
        )
    return base_url


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """Everything one completion needs, resolved once before the first provider call."""

    spec: ProviderSpec
    adapter: Adapter
    endpoint: Endpoint
    params: ChatParams
    user_id: str = ""


class ChatService:
    """Chat and StreamChat, minus the proto framing."""

    def __init__(
        self,
        *,
        registry: Registry,
        vault: VaultClient,
        adapters: AdapterLookup,
        http: aiohttp.ClientSession,
        limiter: Limiter,
        streams: StreamSlots,
        policy: RetryPolicy,
        allow_custom_base_url: bool,
    ) -> None:
        self._registry = registry
        self._vault = vault
        self._adapters = adapters
        self._http = http
        self._limiter = limiter
        self._streams = streams
        self._policy = policy
        self._allow_custom = allow_custom_base_url

    async def prepare(self, request: Any, token: Secret, deadline: Deadline) -> PreparedChat:
        """Validate, resolve the caller's key and settings, and take a rate-limit token."""
        chat = validate_chat(request, self._registry)
        spec = chat.spec
        charged = await take_before_vault(self._limiter, self._vault, token)
        credentials = await credentials_for(self._vault, spec, token, deadline)
        if charged != credentials.user_id:
            await self._limiter.take(credentials.user_id)
        base_url = stored_base_url(spec, credentials, self._allow_custom)
        params = chat.params(credentials.default_model, credentials.temperature, credentials.max_tokens)
        endpoint = Endpoint(spec, base_url, credentials.api_key)
        return PreparedChat(spec, self._adapters(spec), endpoint, params, credentials.user_id)

    async def stream_slot(self, prepared: PreparedChat) -> StreamLease:
        """One of the caller's concurrent-stream slots; release it when the stream ends."""
        return await self._streams.acquire(prepared.user_id)

    def events(self, prepared: PreparedChat, deadline: Deadline) -> AsyncGenerator[ChatEvent, None]:
        """The completion's events, retried before the first one (close it when done)."""
        adapter, http, endpoint, params = prepared.adapter, self._http, prepared.endpoint, prepared.params

        def open_stream(timeout: float | None) -> AsyncIterator[ChatEvent]:
            return adapter.stream_chat(http, endpoint, params, timeout)

        return stream_with_retries(open_stream, self._policy, deadline, prepared.spec.id)


def usage_of(prepared: PreparedChat, finished: Finished) -> llm_pb2.Usage:
    """Token counts and their price (by the answering model, else the requested one)."""
    spec, usage = prepared.spec, finished.usage
    priced = finished.model if spec.model(finished.model) is not None else prepared.params.model
    return llm_pb2.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens or usage.input_tokens + usage.output_tokens,
        cost_usd=spec.cost(priced, usage.input_tokens, usage.output_tokens),
    )


def done_message(prepared: PreparedChat, finished: Finished) -> llm_pb2.StreamChatResponse:
    """StreamChat's last message."""
    return llm_pb2.StreamChatResponse(
        done=llm_pb2.StreamChatDone(
            finish_reason=finished.finish_reason.value,  # type: ignore[arg-type]
            usage=usage_of(prepared, finished),
            model=finished.model or prepared.params.model,
            provider=prepared.spec.id,
            response_id=finished.response_id,
        )
    )


def chat_response(prepared: PreparedChat, content: str, finished: Finished) -> llm_pb2.ChatResponse:
    """Chat's answer."""
    return llm_pb2.ChatResponse(
        content=content,
        finish_reason=finished.finish_reason.value,  # type: ignore[arg-type]
        usage=usage_of(prepared, finished),
        model=finished.model or prepared.params.model,
        provider=prepared.spec.id,
        response_id=finished.response_id,
    )
