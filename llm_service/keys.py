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

from realmultillm.llm.v1 import llm_pb2

from llm_service import accounting
from llm_service.adapters.base import ProbeOutcome
from llm_service.chat import take_before_vault
from llm_service.deadline import Deadline
from llm_service.endpoints import EndpointResolver
from llm_service.ratelimit import Limiter
from llm_service.validation import check_api_key, raise_violations
from rmllm_common.errors import FieldViolation
from rmllm_common.secret import Secret


class KeyTester:
    """The TestKey RPC, minus the proto framing."""

    def __init__(self, endpoints: EndpointResolver, limiter: Limiter) -> None:
        self._endpoints = endpoints
        self._limiter = limiter

    async def test(
        self, request: llm_pb2.TestKeyRequest, token: Secret, deadline: Deadline
    ) -> llm_pb2.TestKeyResponse:
        """Probe the explicit or stored key and say what the provider thought of it."""
        api_key = Secret(request.api_key)
        spec = self._endpoints.provider(request.provider)
        accounting.note_target(spec.id)
        bad: list[FieldViolation] = []
        if api_key:
            check_api_key(api_key.reveal(), bad)
        base_url = self._endpoints.check_override(spec, request.base_url, bad)
        raise_violations(bad, spec.id)
        charged = await take_before_vault(self._limiter, self._endpoints, token)
        if api_key:
            account = await self._endpoints.explicit(spec, api_key, base_url, token, deadline)
        else:
            account = await self._endpoints.stored(spec, token, deadline, base_url=base_url)
        if charged != account.user_id:
            await self._limiter.take(account.user_id)
        started = time.perf_counter()
        result = await account.probe_key(deadline.remaining())
        latency_ms = int((time.perf_counter() - started) * 1000)
        return llm_pb2.TestKeyResponse(
            valid=result.outcome is ProbeOutcome.VALID,
            message=result.message,
            reason=result.outcome.value,  # type: ignore[arg-type]
            provider=spec.id,
            latency_ms=latency_ms,
        )
