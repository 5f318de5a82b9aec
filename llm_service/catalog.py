"""ListProviders and ListModels: the registry as protos, and live model listings.

The registry is static for the life of the process, so ``ListProviders``'s
response and each provider's registry model list are built once, at start.
``ListModels`` asks the provider live (with the caller's stored key) when the
registry gives it a ``models_path`` and the caller has a key (or needs none); the
live ids are enriched with the registry's context windows and prices (an Ollama
``name:latest`` with those of the registry's untagged ``name``). A live
listing draws on the per-user budget it shares with TestKey (both are calls on the
user's provider account). Without a listing, without a key, past that budget, or
when the live call fails (logged), the answer is the registry's list with
``live=false``. Both answers leave out what the caller's model policy refuses
(a provider entirely denied, and each model not allowed).
"""

from __future__ import annotations

import logging

from realmultillm.llm.v1 import llm_pb2

from llm_service import accounting
from llm_service.adapters.base import ListedModel
from llm_service.deadline import Deadline
from llm_service.endpoints import EndpointResolver
from llm_service.limits import NO_LIMITS, CallerLimits
from llm_service.ratelimit import Limiter
from rmllm_common.errors import DeadlineExceeded, KeyNotConfigured, RateLimited, RmllmError, Unavailable
from rmllm_common.registry import ModelSpec, ProviderSpec
from rmllm_common.secret import Secret

log = logging.getLogger(__name__)


def model_info(model: ModelSpec) -> llm_pb2.ModelInfo:
    """The proto for a registry model."""
    return llm_pb2.ModelInfo(
        id=model.id,
        display_name=model.display_name,
        context_window=model.context_window,
        input_price_per_mtok=model.input_price,
        output_price_per_mtok=model.output_price,
        capabilities=sorted(model.capabilities or ()),
        cache_read_price_per_mtok=model.cache_read_price or 0.0,
        cache_write_price_per_mtok=model.cache_write_price or 0.0,
    )


def provider_info(spec: ProviderSpec) -> llm_pb2.ProviderInfo:
    """The proto for a registry provider."""
    return llm_pb2.ProviderInfo(
        id=spec.id,
        aliases=spec.aliases,
        display_name=spec.display_name,
        wire_format=spec.wire_format,
        default_base_url=spec.base_url,
        default_model=spec.default_model,
        requires_key=spec.requires_key,
        features=sorted(spec.features),
        models=[model_info(m) for m in spec.models],
    )


def merge_listed(spec: ProviderSpec, listed: list[ListedModel]) -> list[llm_pb2.ModelInfo]:
    """Live models by id, with the registry's context window and prices where it knows them."""
    merged: dict[str, llm_pb2.ModelInfo] = {}
    for item in listed:
        if not item.id or item.id in merged:
            continue
        known = spec.model(item.id)
        if known is None and item.id.endswith(":latest"):  # Ollama: a name without a tag is :latest
            known = spec.model(item.id.removesuffix(":latest"))
        merged[item.id] = llm_pb2.ModelInfo(
            id=item.id,
            display_name=item.display_name or (known.display_name if known else item.id),
            context_window=item.context_window or (known.context_window if known else 0),
            input_price_per_mtok=known.input_price if known else 0.0,
            output_price_per_mtok=known.output_price if known else 0.0,
            capabilities=sorted((known.capabilities or ()) if known else ()),
            cache_read_price_per_mtok=(known.cache_read_price or 0.0) if known else 0.0,
            cache_write_price_per_mtok=(known.cache_write_price or 0.0) if known else 0.0,
        )
    return [merged[key] for key in sorted(merged)]


class Catalog:
    """ListProviders and ListModels, minus the proto framing."""

    def __init__(self, endpoints: EndpointResolver, limiter: Limiter) -> None:
        self._endpoints = endpoints
        self._limiter = limiter
        specs = list(endpoints.registry.providers.values())
        self.providers = llm_pb2.ListProvidersResponse(providers=[provider_info(s) for s in specs])
        self._static = {
            s.id: llm_pb2.ListModelsResponse(
                provider=s.id, models=sorted((model_info(m) for m in s.models), key=lambda m: m.id)
            )
            for s in specs
        }

    async def providers_for(self, token: Secret, deadline: Deadline) -> llm_pb2.ListProvidersResponse:
        """The registry, less the providers and models the caller's model policy refuses."""
        limits = (await self._endpoints.identify(token, deadline)).limits
        if limits is NO_LIMITS:
            return self.providers
        return llm_pb2.ListProvidersResponse(
            providers=[
                _only_allowed(p, limits) for p in self.providers.providers if limits.allows_provider(p.id)
            ]
        )

    async def list_models(
        self, request: llm_pb2.ListModelsRequest, token: Secret, deadline: Deadline
    ) -> llm_pb2.ListModelsResponse:
        """Live models where possible, else the registry's."""
        spec = self._endpoints.provider(request.provider)
        accounting.note_target(spec.id)
        static = self._static[spec.id]
        if not spec.models_path:
            return _filtered(static, (await self._endpoints.identify(token, deadline)).limits)
        try:
            account = await self._endpoints.stored(spec, token, deadline)
        except KeyNotConfigured:
            return _filtered(static, (await self._endpoints.identify(token, deadline)).limits)
        limits = account.credentials.limits
        static = _filtered(static, limits)
        try:
            # A live listing is a call on the user's provider account, like a TestKey
            # probe: it draws on the same per-user budget, and past it the registry answers.
            await self._limiter.take(account.user_id)
        except (RateLimited, Unavailable):  # past the budget, or a fail-closed shared limiter that is down
            return static
        accounting.note_provider_call()
        try:
            listed = await account.list_models(deadline.remaining())
        except DeadlineExceeded:
            raise
        except RmllmError as exc:
            log.warning(
                "live model listing failed; answering with the registry's list",
                extra={"provider": spec.id, "error": repr(exc)},
            )
            return static
        live = llm_pb2.ListModelsResponse(provider=spec.id, models=merge_listed(spec, listed), live=True)
        return _filtered(live, limits)


def _only_allowed(provider: llm_pb2.ProviderInfo, limits: CallerLimits) -> llm_pb2.ProviderInfo:
    """A provider's entry with only the models ``limits`` allow."""
    allowed = llm_pb2.ProviderInfo()
    allowed.CopyFrom(provider)
    del allowed.models[:]
    allowed.models.extend(m for m in provider.models if limits.allows(provider.id, m.id))
    return allowed


def _filtered(listing: llm_pb2.ListModelsResponse, limits: CallerLimits) -> llm_pb2.ListModelsResponse:
    """A model listing with only the models ``limits`` allow."""
    if limits is NO_LIMITS:
        return listing
    return llm_pb2.ListModelsResponse(
        provider=listing.provider,
        models=[m for m in listing.models if limits.allows(listing.provider, m.id)],
        live=listing.live,
    )
