"""Endpoint resolution: who the caller is, and where and with which key to call for them.

``EndpointResolver`` is the one place the LLM service turns a caller's token and a
provider into an ``Account``: the user id, the ``Endpoint`` (base URL and key), the
caller's stored chat defaults, and the provider calls bound to the wire-format
adapter and the process's HTTP session. It asks the vault (bounded by the
caller's deadline), answers keyless credentials for a provider that needs no key,
and applies this server's custom-base-URL policy to a stored or an explicit
(TestKey) endpoint override (the check of a stored one is remembered per provider
and URL: it is pure, and the same few URLs come back on every call). Chat, TestKey
and ListModels are given one resolver instead of each holding the registry, the
vault, the adapter lookup, the HTTP session and the policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from llm_service.adapters.base import (
    Adapter,
    ChatEvent,
    ChatParams,
    Endpoint,
    ListedModel,
    ProbeResult,
)
from llm_service.deadline import Deadline
from llm_service.validation import check_base_url
from llm_service.vault_client import Credentials, Identity, VaultClient
from rmllm_common import urls
from rmllm_common.errors import FailedPrecondition, FieldViolation, KeyNotConfigured
from rmllm_common.registry import ProviderSpec, Registry
from rmllm_common.secret import Secret

AdapterLookup = Callable[[ProviderSpec, str], Adapter]
"""The adapter for a provider at a base URL (``llm_service.adapters.adapter_for``)."""
_NO_KEY = Secret("")
MAX_CHECKED_URLS = 4096


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
class Account:
    """The caller's way into one provider: who, where, with which key, and the calls to make."""

    user_id: str
    endpoint: Endpoint
    credentials: Credentials
    adapter: Adapter
    http: aiohttp.ClientSession

    @property
    def spec(self) -> ProviderSpec:
        """The provider's registry entry."""
        return self.endpoint.spec

    def stream_chat(self, params: ChatParams, timeout: float | None) -> AsyncIterator[ChatEvent]:
        """The adapter's chat stream against this endpoint."""
        return self.adapter.stream_chat(self.http, self.endpoint, params, timeout)

    async def probe_key(self, timeout: float | None) -> ProbeResult:
        """The adapter's key probe against this endpoint."""
        return await self.adapter.probe_key(self.http, self.endpoint, timeout)

    async def list_models(self, timeout: float | None) -> list[ListedModel]:
        """The provider's live model listing for this endpoint's key."""
        return await self.adapter.list_models(self.http, self.endpoint, timeout)


class EndpointResolver:
    """Resolves callers' endpoints and keys through the vault, under one base-URL policy."""

    def __init__(
        self,
        *,
        registry: Registry,
        vault: VaultClient,
        adapters: AdapterLookup,
        http: aiohttp.ClientSession,
        allow_custom_base_url: bool,
    ) -> None:
        self.registry = registry
        self._vault = vault
        self._adapters = adapters
        self._http = http
        self._allow_custom = allow_custom_base_url
        # (provider, stored base URL) -> (its spec, the URL to call): the check is pure, and the
        # same few stored URLs come back on every call.
        self._checked: dict[tuple[str, str], tuple[ProviderSpec, str]] = {}

    def provider(self, name: str) -> ProviderSpec:
        """The registry entry for a provider id or alias (UNKNOWN_PROVIDER otherwise)."""
        return self.registry.resolve(name)

    def account(self, spec: ProviderSpec, credentials: Credentials, base_url: str) -> Account:
        """``credentials`` bound to an endpoint at ``base_url`` (already checked) and the adapter
        that speaks the provider's wire format there (chosen here, once, for Chat, TestKey and
        ListModels alike)."""
        endpoint = Endpoint(spec, base_url, credentials.api_key)
        adapter = self._adapters(spec, base_url)
        return Account(credentials.user_id, endpoint, credentials, adapter, self._http)

    def known_user(self, token: Secret) -> str | None:
        """The user a token was seen to belong to by this process, if any (no vault call)."""
        return self._vault.known_user(token)

    async def authenticate(self, token: Secret, deadline: Deadline) -> str:
        """The id of the user the token belongs to (TOKEN_INVALID otherwise)."""
        return await self._vault.authenticate(token, deadline)

    async def identify(self, token: Secret, deadline: Deadline) -> Identity:
        """Who the token belongs to, with its token id, budgets and model policies."""
        return await self._vault.identify(token, deadline)

    async def credentials(self, spec: ProviderSpec, token: Secret, deadline: Deadline) -> Credentials:
        """The caller's stored credentials for ``spec``; keyless ones for a provider needing no key."""
        try:
            return await self._vault.resolve(token, spec.id, deadline)
        except KeyNotConfigured:
            if spec.requires_key:
                raise
        who = await self._vault.identify(token, deadline)
        return Credentials(who.user_id, spec.id, _NO_KEY, "", "", None, None, who.token_id, who.limits)

    async def stored(
        self, spec: ProviderSpec, token: Secret, deadline: Deadline, *, base_url: str = ""
    ) -> Account:
        """The caller's stored key and endpoint (``base_url``, already checked, overrides it)."""
        credentials = await self.credentials(spec, token, deadline)
        return self.account(spec, credentials, base_url or self._stored_base_url(spec, credentials))

    def _stored_base_url(self, spec: ProviderSpec, credentials: Credentials) -> str:
        """``stored_base_url``, remembered per provider and stored URL (a refusal is not)."""
        key = (spec.id, credentials.base_url)
        known = self._checked.get(key)
        if known is not None and known[0] is spec:
            return known[1]
        base_url = stored_base_url(spec, credentials, self._allow_custom)
        if len(self._checked) >= MAX_CHECKED_URLS:
            self._checked.clear()
        self._checked[key] = (spec, base_url)
        return base_url

    async def explicit(
        self, spec: ProviderSpec, api_key: Secret, base_url: str, token: Secret, deadline: Deadline
    ) -> Account:
        """A caller-given key (and checked ``base_url``, "" for the default) for a known user."""
        user_id = await self.authenticate(token, deadline)
        credentials = Credentials(user_id, spec.id, api_key, base_url, "", None, None)
        return self.account(spec, credentials, base_url or spec.base_url)

    def check_override(self, spec: ProviderSpec, base_url: str, bad: list[FieldViolation]) -> str:
        """A request's endpoint override under this server's policy, normalised ("" if none or bad)."""
        return check_base_url(base_url, spec, self._allow_custom, bad)
