"""The account-level calls every wire format shares: probing a key, listing models.

``AccountCalls`` is the base of the adapters. ``probe_key`` runs the
registry's probe (``spec.probe``: method, path, relative to the base URL or its
origin; a format with its own fixed probe overrides ``probe_url``) and turns the
answer into a ``ProbeResult`` through the same error table
as chat (``adapters.errors``), so a 401 here and a 401 mid-chat mean the same
thing. A 200 whose body says the key is blocked or disabled (``*_blocked`` /
``*_disabled`` flags, xAI's ``/api-key``), is a management key that cannot chat
(OpenRouter's ``is_management_key`` / ``is_provisioning_key``) or is out of credit
(``limit_remaining`` of 0) is not "valid".
``list_models`` reads ``spec.models_path`` at the base URL or its origin
(``spec.models_relative_to``; or the format's ``models_url``) and understands three
listing shapes:
``data[]`` (OpenAI-compatible and Anthropic: ``id``, ``display_name``/``name``,
``context_length``), ``models[]`` (Gemini, and Ollama's ``/api/tags``: ``name`` without ``models/``,
``displayName``, ``inputTokenLimit``; only entries whose ``supportedGenerationMethods``,
when given, include ``generateContent``: Gemini also lists embedding, Imagen, Veo and
AQA models, which Chat cannot use) and a top-level array (GitHub Models'
``/catalog/models``: ``id``, ``name``, ``limits.max_input_tokens``; only entries whose
``supported_output_modalities``, when given, include ``text``: the catalog lists
embedding models too). It follows Gemini's ``nextPageToken``
(``pageToken``) and Anthropic's ``has_more`` (``after_id`` = ``last_id``; the
registry's ``models_path`` asks Anthropic for ``limit=1000`` a page, not its default
20) for at most 20 pages; more than 10,000 models is ``UpstreamResponseTooLarge``.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from llm_service.adapters.base import Endpoint, ListedModel, ProbeOutcome, ProbeResult
from llm_service.adapters.exchange import get_json
from rmllm_common.errors import (
    DeadlineExceeded,
    ProviderKeyInvalid,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderUnavailable,
    RmllmError,
    UpstreamResponseTooLarge,
    UpstreamStreamTruncated,
)

_MAX_PAGES = 20
MAX_LISTED_MODELS = 10_000  # far more than any provider offers; a listing past it is refused
_OUTCOMES: tuple[tuple[type[RmllmError], ProbeOutcome], ...] = (
    (ProviderKeyInvalid, ProbeOutcome.INVALID_KEY),
    (ProviderQuotaExhausted, ProbeOutcome.QUOTA_EXHAUSTED),
    (ProviderRateLimited, ProbeOutcome.RATE_LIMITED),
    (ProviderUnavailable, ProbeOutcome.UNREACHABLE),
    (UpstreamStreamTruncated, ProbeOutcome.UNREACHABLE),
    (DeadlineExceeded, ProbeOutcome.UNREACHABLE),
)


def _flagged(payload: Any) -> str:
    """The name of a true ``*_blocked``/``*_disabled`` flag in a probe answer, if any."""
    if isinstance(payload, dict):
        for name, value in payload.items():
            if value is True and str(name).endswith(("_blocked", "_disabled")):
                return str(name)
    return ""


def _management_key(payload: Any) -> bool:
    """OpenRouter's ``data.is_management_key`` (formerly ``is_provisioning_key``): a key
    for managing keys, which cannot call the completion endpoints."""
    data = payload.get("data") if isinstance(payload, dict) else None
    return isinstance(data, dict) and (
        data.get("is_management_key") is True or data.get("is_provisioning_key") is True
    )


def _out_of_credit(payload: Any) -> bool:
    data = payload.get("data") if isinstance(payload, dict) else None
    remaining = data.get("limit_remaining") if isinstance(data, dict) else None
    return isinstance(remaining, int | float) and remaining <= 0


class AccountCalls:
    """``probe_key`` and ``list_models`` for any wire format."""

    def probe_url(self, endpoint: Endpoint) -> str:
        """Where TestKey's probe goes: the registry's ``probe`` against the endpoint."""
        return endpoint.spec.probe.url(endpoint.base_url)

    def models_url(self, endpoint: Endpoint) -> str:
        """Where the live model listing is: the registry's ``models_path`` at the base URL
        or its origin (``models_relative_to``); "" when the registry has no ``models_path``."""
        return endpoint.spec.models_url(endpoint.base_url)

    async def probe_key(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, timeout: float | None
    ) -> ProbeResult:
        """Run the registry's probe for the endpoint's key; never raises for HTTP outcomes."""
        spec = endpoint.spec
        probe = spec.probe
        try:
            payload = await get_json(http, endpoint, probe.method, self.probe_url(endpoint), timeout)
        except RmllmError as e:
            outcome = next((o for cls, o in _OUTCOMES if isinstance(e, cls)), ProbeOutcome.UNKNOWN)
            return ProbeResult(outcome, e.message)
        flag = _flagged(payload)
        if flag:
            return ProbeResult(
                ProbeOutcome.INVALID_KEY,
                f"{spec.display_name} knows the key but reports it as {flag.replace('_', ' ')}.",
            )
        if _management_key(payload):
            return ProbeResult(
                ProbeOutcome.INVALID_KEY,
                f"{spec.display_name} knows the key, but it is a management key, which can only "
                "manage keys and cannot chat; store an API key for inference instead.",
            )
        if _out_of_credit(payload):
            return ProbeResult(
                ProbeOutcome.QUOTA_EXHAUSTED,
                f"{spec.display_name} accepted the key, but it has no credit left.",
            )
        if not endpoint.api_key:
            return ProbeResult(ProbeOutcome.VALID, f"{spec.display_name} is reachable and needs no key.")
        return ProbeResult(ProbeOutcome.VALID, f"{spec.display_name} accepted the key.")

    async def list_models(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, timeout: float | None
    ) -> list[ListedModel]:
        """The models the provider lists for this key; [] when there is no listing (``models_url``)."""
        spec = endpoint.spec
        url = self.models_url(endpoint)
        if not url:
            return []
        models: list[ListedModel] = []
        params: dict[str, str] | None = None
        for _ in range(_MAX_PAGES):
            payload = await get_json(http, endpoint, "GET", url, timeout, params=params)
            models.extend(parse_listing(payload))
            if len(models) > MAX_LISTED_MODELS:
                raise UpstreamResponseTooLarge(
                    f"{spec.display_name} listed more than {MAX_LISTED_MODELS} models",
                    provider=spec.id,
                )
            params = _next_page(payload)
            if params is None:
                break
        return models


def _next_page(payload: Any) -> dict[str, str] | None:
    """The query of the listing's next page: Gemini's ``nextPageToken`` as ``pageToken``,
    Anthropic's ``has_more`` with ``last_id`` as ``after_id``; None on the last page."""
    if not isinstance(payload, dict):
        return None
    token = payload.get("nextPageToken")
    if token:
        return {"pageToken": str(token)}
    last_id = payload.get("last_id")
    if payload.get("has_more") is True and isinstance(last_id, str) and last_id:
        return {"after_id": last_id}
    return None


def _generates_content(item: dict[str, Any]) -> bool:
    """Whether a ``models[]`` entry can chat: Gemini lists embedding, Imagen, Veo and AQA
    models too, whose ``supportedGenerationMethods`` lack ``generateContent``; an entry
    without the field (Ollama's ``/api/tags``) is kept."""
    methods = item.get("supportedGenerationMethods")
    if not isinstance(methods, list):
        return True
    return "generateContent" in methods or "streamGenerateContent" in methods


def _outputs_text(item: dict[str, Any]) -> bool:
    """Whether a catalog entry can chat: GitHub's catalog lists embedding models too,
    whose ``supported_output_modalities`` are ``["embeddings"]``; an entry without the
    field is kept, nothing says it cannot chat."""
    outputs = item.get("supported_output_modalities")
    return not isinstance(outputs, list) or "text" in outputs


def _catalog_entry(item: dict[str, Any]) -> ListedModel:
    """A GitHub catalog entry: ``id``, ``name``, ``limits.max_input_tokens``."""
    limits = item.get("limits")
    window = limits.get("max_input_tokens") if isinstance(limits, dict) else None
    name = item.get("name")
    return ListedModel(
        item["id"], name if isinstance(name, str) else "", window if type(window) is int and window > 0 else 0
    )


def parse_listing(payload: Any) -> list[ListedModel]:
    """Models from one listing page, in any of the three shapes: ``data[]``, ``models[]``,
    or a top-level array (GitHub's catalog: chat-capable entries only)."""
    if isinstance(payload, list):
        return [
            _catalog_entry(item)
            for item in payload
            if isinstance(item, dict) and isinstance(item.get("id"), str) and _outputs_text(item)
        ]
    if not isinstance(payload, dict):
        return []
    out: list[ListedModel] = []
    for item in payload.get("data") or []:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            name = item.get("display_name") or item.get("name") or ""
            window = item.get("context_length") or item.get("context_window") or 0
            out.append(ListedModel(item["id"], str(name), int(window) if isinstance(window, int) else 0))
    for item in payload.get("models") or []:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and _generates_content(item):
            model_id = item["name"].removeprefix("models/")
            window = item.get("inputTokenLimit") or 0
            out.append(
                ListedModel(
                    model_id,
                    str(item.get("displayName") or ""),
                    int(window) if isinstance(window, int) else 0,
                )
            )
    return out
