"""The LLM service's server factory: ``build_server(settings)`` returns a bound server.

It creates the process-wide resources once (the vault channel and client, the
aiohttp session, the rate limiters, the retry policy, the static catalog, the
usage reporter), wires them into the servicer, and closes them in
``ServerHandle.on_stop`` after the server has drained (the usage reporter first:
it flushes the records of every call served to the vault). The adapter lookup
is injected (tests pass scripted adapters); by default it is
``llm_service.adapters.adapter_for``, looked up at call time. ``sleep`` and
``clock`` are injectable for retry and rate-limit tests.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from llm_service import telemetry
from llm_service.adapters.base import Adapter
from llm_service.auth import AuthInterceptor
from llm_service.catalog import Catalog
from llm_service.chat import ChatService
from llm_service.deadline import Clock
from llm_service.endpoints import AdapterLookup, EndpointResolver
from llm_service.features import FeatureLimits
from llm_service.http import new_http_session
from llm_service.keys import KeyTester
from llm_service.ratelimit import Limiter, LocalStreamSlots, RateLimiter, StreamSlots
from llm_service.retrying import RetryPolicy, Sleep
from llm_service.servicer import LLMServicer
from llm_service.settings import LLMSettings
from llm_service.usage import UsageReporter
from llm_service.vault_client import VaultClient
from rmllm_common.registry import ProviderSpec, Registry, default_registry
from rmllm_common.server import ServerHandle, add_standard_services, bind, new_server

if TYPE_CHECKING:
    from llm_service.redis_limits import SharedStore

SERVICE_NAME = llm_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # > 4 MiB of content plus framing; larger requests are refused by gRPC
# gRPC core cancels calls that wait unrequested beyond its pending-request limit (1,000 by default);
# a burst of new streams (thousands opened at once) must queue, not be cancelled.
SERVER_OPTIONS = (
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
)
VAULT_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # No retry filter on the vault channel: the client never asks gRPC to retry (a vault
    # failure is answered at once as VAULT_UNAVAILABLE), and the filter's per-call
    # bookkeeping cost about 0.1 ms of CPU per resolve (docs/PERFORMANCE.md).
    ("grpc.enable_retries", 0),
    # Several vault targets (ipv4:a:1,b:2 or a dns:/// name with several addresses):
    # spread the calls, and skip one that is down.
    ("grpc.lb_policy_name", "round_robin"),
)


@dataclass
class Limits:
    """The per-user limits of one process: in memory, or shared through Redis."""

    chat: Limiter
    account_calls: Limiter
    streams: StreamSlots
    store: SharedStore | None = None

    async def close(self) -> None:
        closing = getattr(self.streams, "close", None)  # the Redis slots' lease renewer
        if closing is not None:
            await closing()
        if self.store is not None:
            await self.store.close()


def build_limits(settings: LLMSettings, clock: Clock) -> Limits:
    """Redis-backed limits when ``RMLLM_REDIS_URL`` is set, else this process's own."""
    if not settings.redis_url:
        return Limits(
            chat=RateLimiter("chat", settings.chat_rate_per_minute, settings.chat_burst, clock=clock),
            # TestKey probes and live model listings are calls on the user's provider
            # account: one per-user budget for both.
            account_calls=RateLimiter(
                "TestKey", settings.testkey_rate_per_minute, settings.testkey_burst, clock=clock
            ),
            streams=LocalStreamSlots(settings.max_concurrent_streams),
        )
    # Imported only when used: a process without Redis does not load redis-py at all
    # (loading it measurably raised the RSS the hostile-provider test watches).
    from llm_service.redis_limits import RedisRateLimiter, RedisStreamSlots, SharedStore  # noqa: PLC0415

    store = SharedStore(
        settings.redis_url.reveal(), prefix=settings.redis_prefix, failure_mode=settings.redis_failure_mode
    )
    return Limits(
        chat=RedisRateLimiter(store, "chat", "chat", settings.chat_rate_per_minute, settings.chat_burst),
        account_calls=RedisRateLimiter(
            store, "TestKey", "testkey", settings.testkey_rate_per_minute, settings.testkey_burst
        ),
        streams=RedisStreamSlots(store, settings.max_concurrent_streams, settings.stream_lease_seconds),
        store=store,
    )


@dataclass
class LLMServerHandle(ServerHandle):
    """The LLM server, and its vault client (whose cache and watch tests look at)."""

    vault: VaultClient | None = None


def default_adapters(spec: ProviderSpec, base_url: str) -> Adapter:
    """The wire-format adapter for ``spec`` at ``base_url`` from ``llm_service.adapters.adapter_for``."""
    module: Any = sys.modules.get("llm_service.adapters") or importlib.import_module("llm_service.adapters")
    adapter: Adapter = module.adapter_for(spec, base_url)
    return adapter


async def build_server(
    settings: LLMSettings,
    *,
    adapters: AdapterLookup | None = None,
    registry: Registry | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> LLMServerHandle:
    """An LLM server bound to ``settings.listen`` (port 0 picks a free port)."""
    registry = registry or default_registry()
    lookup = adapters or default_adapters
    observer = telemetry.setup(settings.telemetry)
    channel = grpc.aio.insecure_channel(settings.vault_addr, options=VAULT_CHANNEL_OPTIONS)
    vault = VaultClient(
        channel,
        settings.service_token,
        timeout_seconds=settings.vault_timeout_seconds,
        cache_seconds=settings.credential_cache_seconds,
        clock=clock,
    )
    vault.start()
    rate_limits = build_limits(settings, clock)
    http = new_http_session(
        settings.http_max_connections, policy=settings.endpoint_policy, limits=settings.upstream
    )
    policy = RetryPolicy(
        attempts=settings.retry_attempts,
        base_delay=settings.retry_base_delay_seconds,
        max_delay=settings.retry_max_delay_seconds,
        retry_after_cap=settings.retry_after_cap_seconds,
        sleep=sleep,
    )
    usage = UsageReporter(
        vault.report_usage,
        interval=settings.usage_flush_seconds,
        batch_size=settings.usage_batch_records,
        max_buffer=settings.usage_buffer_records,
    )
    endpoints = EndpointResolver(
        registry=registry,
        vault=vault,
        adapters=lookup,
        http=http,
        allow_custom_base_url=settings.allow_custom_base_url,
    )
    limits = FeatureLimits(settings.max_request_bytes, settings.max_image_bytes, settings.max_document_bytes)
    chat = ChatService(endpoints, rate_limits.chat, policy, limits, usage, streams=rate_limits.streams)
    keys = KeyTester(endpoints, rate_limits.account_calls)
    catalog = Catalog(endpoints, rate_limits.account_calls)

    server = new_server(
        [AuthInterceptor(vault, clock)],
        max_message_bytes=max(MAX_MESSAGE_BYTES, limits.grpc_receive_bytes),
        options=SERVER_OPTIONS,
        reuse_port=settings.reuse_port,
        observer=observer,
    )
    servicer = LLMServicer(chat, keys, catalog, clock, usage, max_answer_chars=settings.chat_max_answer_chars)
    llm_pb2_grpc.add_LLMServiceServicer_to_server(servicer, server)
    health = await add_standard_services(server, [SERVICE_NAME])

    async def release() -> None:
        # After the server drained: deliver the usage records of every call it served.
        await usage.close(max(1.0, settings.grace_seconds))
        await http.close()
        await vault.close()
        await rate_limits.close()

    try:
        port = bind(server, settings.listen)
    except OSError:
        await release()
        raise
    usage.start()
    return LLMServerHandle(
        server=server, port=port, health=health, service_name=SERVICE_NAME, on_stop=release, vault=vault
    )
