"""TestKey: check a key against its provider without storing it.

The key under test is either given explicitly (checked, wrapped in ``Secret`` at
once, never stored or logged) or the caller's stored key. Either way the caller
must be a known user (AuthenticateToken or ResolveCredentials at the vault), and
each user has a TestKey rate limit (default 60 a minute) so the service cannot be
used to check stolen keys in bulk. The adapter runs the registry's cheapest
non-billable probe; its outcome maps one to one onto the proto's TestKeyReason.
"""

from __future__ import annotations

import time

import aiohttp
from realmultillm.llm.v1 import llm_pb2

from llm_service.adapters.base import Endpoint, ProbeOutcome
from llm_service.chat import AdapterLookup, credentials_for, stored_base_url, take_before_vault
from llm_service.deadline import Deadline
from llm_service.ratelimit import Limiter
from llm_service.validation import check_api_key, check_base_url, raise_violations
from llm_service.vault_client import VaultClient
from rmllm_common.errors import FieldViolation
from rmllm_common.registry import Registry
from rmllm_common.secret import Secret


class KeyTester:
    """The TestKey RPC, minus the proto framing."""

    def __init__(
        self,
        *,
        registry: Registry,
        vault: VaultClient,
        adapters: AdapterLookup,
        http: aiohttp.ClientSession,
        limiter: Limiter,
        allow_custom_base_url: bool,
    ) -> None:
        self._registry = registry
        self._vault = vault
        self._adapters = adapters
        self._http = http
        self._limiter = limiter
        self._allow_custom = allow_custom_base_url

    async def test(
        self, request: llm_pb2.TestKeyRequest, token: Secret, deadline: Deadline
    ) -> llm_pb2.TestKeyResponse:
        """Probe the explicit or stored key and say what the provider thought of it."""
        api_key = Secret(request.api_key)
        spec = self._registry.resolve(request.provider)
        bad: list[FieldViolation] = []
        if api_key:
            check_api_key(api_key.reveal(), bad)
        base_url = check_base_url(request.base_url, spec, self._allow_custom, bad)
        raise_violations(bad, spec.id)
        charged = await take_before_vault(self._limiter, self._vault, token)
        if api_key:
            user_id = await self._vault.authenticate(token, deadline)
            if charged != user_id:
                await self._limiter.take(user_id)
            endpoint = Endpoint(spec, base_url or spec.base_url, api_key)
        else:
            credentials = await credentials_for(self._vault, spec, token, deadline)
            if charged != credentials.user_id:
                await self._limiter.take(credentials.user_id)
            base_url = base_url or stored_base_url(spec, credentials, self._allow_custom)
            endpoint = Endpoint(spec, base_url, credentials.api_key)
        adapter = self._adapters(spec)
        started = time.perf_counter()
        result = await adapter.probe_key(self._http, endpoint, deadline.remaining())
        latency_ms = int((time.perf_counter() - started) * 1000)
        return llm_pb2.TestKeyResponse(
            valid=result.outcome is ProbeOutcome.VALID,
            message=result.message,
            reason=result.outcome.value,  # type: ignore[arg-type]
            provider=spec.id,
            latency_ms=latency_ms,
        )
