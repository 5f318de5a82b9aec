"""In-process fake LLM and vault gRPC servers with canned behaviour, for client tests.

``FakeServers`` runs a ``realmultillm.vault.v1.VaultService`` and a
``realmultillm.llm.v1.LLMService`` on two loopback ports (port 0), each a real
``grpc.aio`` server from ``rmllm_common.server.new_server`` (so errors go through
the real ``ErrorInterceptor`` and ``errors.to_status``: one ErrorInfo, RetryInfo,
BadRequest), on an event loop in a background thread: sync clients, asyncio
clients, subprocesses (the ``rmllm`` CLI) and Node can all call them.

Behaviour: every RPC checks ``authorization: Bearer <token>`` (TOKEN_INVALID
otherwise); the vault keeps configs in memory (keys only in ``keys``, never in a
response); chats answer ``deltas`` (then ``done`` with usage 12/34 and a cost) for
a provider with a stored key, else KEY_NOT_CONFIGURED; a stored key starting with
``sk-bad`` is refused with PROVIDER_KEY_INVALID; TestKey accepts keys starting
with ``sk-good``. Knobs: ``fail(method, error)`` queues an error for the next call
of a method; ``stream_error`` ends streams with an error after the deltas;
``stream_hang`` makes a stream wait after its first delta until cancelled (then
``stream_cancelled`` is set). ``calls`` records ``(method, request, metadata)``;
``time_remaining`` the deadline each method saw last (seconds; None: no deadline).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from rmllm_common import errors
from rmllm_common.server import new_server

TOKEN = "rmk_fake_user_token_0123456789"
PROVIDERS: dict[str, tuple[str, ...]] = {
    "anthropic": ("claude",),
    "llama": ("ollama",),
    "openai": ("openai-api",),
}
DEFAULT_MODELS = {"anthropic": "claude-3-5-haiku-latest", "llama": "llama3.2", "openai": "gpt-4o-mini"}
UPDATABLE = {
    "base_url",
    "is_active",
    "settings",
    "settings.default_model",
    "settings.temperature",
    "settings.max_tokens",
}

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class FakeState:
    """What both fakes share: the token, the stored configs and keys, the knobs, the log."""

    token: str = TOKEN
    configs: dict[str, vault_pb2.ProviderConfig] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    deltas: list[str] = field(default_factory=lambda: ["Hel", "lo", " world"])
    reasoning: list[str] = field(default_factory=list)  # reasoning deltas, sent before the text
    tool_calls: list[llm_pb2.ToolCall] = field(default_factory=list)  # sent after the text, in 2 pieces each
    provider_state: bytes = b""
    stream_error: errors.RmllmError | None = None
    stream_hang: bool = False
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    failures: dict[str, list[errors.RmllmError]] = field(default_factory=dict)
    calls: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)
    time_remaining: dict[str, float | None] = field(default_factory=dict)

    def fail(self, method: str, error: errors.RmllmError, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` (e.g. "Chat") fail with ``error``."""
        self.failures.setdefault(method, []).extend([error] * times)

    def methods(self) -> list[str]:
        """The methods called so far, in order."""
        return [method for method, _, _ in self.calls]

    def enter(self, method: str, request: Any, context: Context) -> None:
        """Record the call, check the token, raise a queued failure."""
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.calls.append((method, request, metadata))
        self.time_remaining[method] = context.time_remaining()
        if metadata.get("authorization") != f"Bearer {self.token}":
            raise errors.TokenInvalid("missing or unknown token")
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)


def canonical(provider: str) -> str:
    """The provider id for an id or alias; UNKNOWN_PROVIDER otherwise."""
    for pid, aliases in PROVIDERS.items():
        if provider == pid or provider in aliases:
            return pid
    raise errors.UnknownProvider(
        f"unknown provider {provider!r}",
        violations=[errors.FieldViolation("provider", f"unknown provider {provider!r}")],
    )


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class FakeVault(vault_pb2_grpc.VaultServiceServicer):
    """The user-facing vault RPCs over ``FakeState``; the service-only RPCs refuse user tokens."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def _config(self, provider: str) -> vault_pb2.ProviderConfig:
        pid = canonical(provider)
        if pid not in self.state.configs:
            raise errors.NotFound(f"no configuration for {pid}", provider=pid)
        return self.state.configs[pid]

    async def PutProviderConfig(
        self, request: vault_pb2.PutProviderConfigRequest, context: Context
    ) -> vault_pb2.PutProviderConfigResponse:
        self.state.enter("PutProviderConfig", request, context)
        pid = canonical(request.provider)
        if not request.api_key and pid != "llama":
            raise errors.invalid("api_key", "must not be empty", provider=pid)
        created = self.state.configs[pid].create_time if pid in self.state.configs else _now()
        config = vault_pb2.ProviderConfig(
            provider=pid,
            key_hint=request.api_key[-4:] if len(request.api_key) > 8 else "",
            base_url=request.base_url,
            settings=request.settings,
            is_active=True,
            create_time=created,
            update_time=_now(),
        )
        self.state.configs[pid] = config
        self.state.keys[pid] = request.api_key
        return vault_pb2.PutProviderConfigResponse(config=config)

    async def UpdateProviderConfig(
        self, request: vault_pb2.UpdateProviderConfigRequest, context: Context
    ) -> vault_pb2.UpdateProviderConfigResponse:
        self.state.enter("UpdateProviderConfig", request, context)
        config = self._config(request.config.provider)
        paths = list(request.update_mask.paths)
        if not paths:
            raise errors.invalid("update_mask", "must name at least one field")
        for path in paths:
            if path not in UPDATABLE:
                raise errors.invalid("update_mask", f"cannot update {path!r}")
        for path in paths:
            _apply(path, request.config, config)
        config.update_time.CopyFrom(_now())
        return vault_pb2.UpdateProviderConfigResponse(config=config)

    async def GetProviderConfig(
        self, request: vault_pb2.GetProviderConfigRequest, context: Context
    ) -> vault_pb2.GetProviderConfigResponse:
        self.state.enter("GetProviderConfig", request, context)
        return vault_pb2.GetProviderConfigResponse(config=self._config(request.provider))

    async def ListProviderConfigs(
        self, request: vault_pb2.ListProviderConfigsRequest, context: Context
    ) -> vault_pb2.ListProviderConfigsResponse:
        self.state.enter("ListProviderConfigs", request, context)
        configs = [self.state.configs[pid] for pid in sorted(self.state.configs)]
        return vault_pb2.ListProviderConfigsResponse(configs=configs)

    async def DeleteProviderConfig(
        self, request: vault_pb2.DeleteProviderConfigRequest, context: Context
    ) -> vault_pb2.DeleteProviderConfigResponse:
        self.state.enter("DeleteProviderConfig", request, context)
        pid = self._config(request.provider).provider
        del self.state.configs[pid]
        del self.state.keys[pid]
        return vault_pb2.DeleteProviderConfigResponse(provider=pid)

    async def ResolveCredentials(
        self, request: vault_pb2.ResolveCredentialsRequest, context: Context
    ) -> vault_pb2.ResolveCredentialsResponse:
        self.state.enter("ResolveCredentials", request, context)
        raise errors.PermissionDenied("ResolveCredentials needs the service credential")

    async def AuthenticateToken(
        self, request: vault_pb2.AuthenticateTokenRequest, context: Context
    ) -> vault_pb2.AuthenticateTokenResponse:
        self.state.enter("AuthenticateToken", request, context)
        raise errors.PermissionDenied("AuthenticateToken needs the service credential")

    # The ledger and invalidation RPCs: the client tests do not use them yet.
    async def GetUsageSummary(
        self, request: vault_pb2.GetUsageSummaryRequest, context: Context
    ) -> vault_pb2.GetUsageSummaryResponse:
        raise errors.Unimplemented("not in the fake vault")

    async def ListUsageRecords(
        self, request: vault_pb2.ListUsageRecordsRequest, context: Context
    ) -> vault_pb2.ListUsageRecordsResponse:
        raise errors.Unimplemented("not in the fake vault")

    async def ReportUsage(
        self, request_iterator: AsyncIterator[vault_pb2.ReportUsageRequest], context: Context
    ) -> vault_pb2.ReportUsageResponse:
        raise errors.Unimplemented("not in the fake vault")

    async def WatchInvalidations(
        self, request: vault_pb2.WatchInvalidationsRequest, context: Context
    ) -> AsyncIterator[vault_pb2.WatchInvalidationsResponse]:
        raise errors.Unimplemented("not in the fake vault")
        yield


def _apply(path: str, source: Any, target: Any) -> None:
    """Copy one mask path from ``source`` to ``target``; an unset optional clears it."""
    head, _, rest = path.partition(".")
    if rest:
        _apply(rest, getattr(source, head), getattr(target, head))
    elif source.DESCRIPTOR.fields_by_name[head].has_presence and not source.HasField(head):
        target.ClearField(head)
    elif source.DESCRIPTOR.fields_by_name[head].message_type is not None:
        getattr(target, head).CopyFrom(getattr(source, head))
    else:
        setattr(target, head, getattr(source, head))


class FakeLLM(llm_pb2_grpc.LLMServiceServicer):
    """The LLM service answering canned completions for providers with a stored key."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def _resolve(self, provider: str) -> tuple[str, str]:
        pid = canonical(provider)
        config = self.state.configs.get(pid)
        if config is None or not config.is_active:
            raise errors.KeyNotConfigured(f"no {pid} key is configured", provider=pid)
        if self.state.keys[pid].startswith("sk-bad"):
            raise errors.ProviderKeyInvalid(f"{pid} rejected the key ending {config.key_hint}", provider=pid)
        return pid, config.settings.default_model or DEFAULT_MODELS[pid]

    def _done(self, pid: str, model: str) -> llm_pb2.StreamChatDone:
        usage = llm_pb2.Usage(
            input_tokens=12, output_tokens=34, total_tokens=46, cost_usd=0.000022, usage_reported=True
        )
        return llm_pb2.StreamChatDone(
            finish_reason=llm_pb2.FINISH_REASON_TOOL_CALLS
            if self.state.tool_calls
            else llm_pb2.FINISH_REASON_STOP,
            usage=usage,
            model=model,
            provider=pid,
            response_id="r-1",
            tool_calls=self.state.tool_calls,
            reasoning="".join(self.state.reasoning),
            provider_state=self.state.provider_state,
        )

    async def Chat(self, request: llm_pb2.ChatRequest, context: Context) -> llm_pb2.ChatResponse:
        self.state.enter("Chat", request, context)
        pid, model = self._resolve(request.provider)
        done = self._done(pid, request.model or model)
        return llm_pb2.ChatResponse(
            content="".join(self.state.deltas),
            finish_reason=done.finish_reason,
            usage=done.usage,
            model=done.model,
            provider=pid,
            response_id=done.response_id,
            tool_calls=done.tool_calls,
            reasoning=done.reasoning,
            provider_state=done.provider_state,
        )

    async def StreamChat(
        self, request: llm_pb2.StreamChatRequest, context: Context
    ) -> AsyncIterator[llm_pb2.StreamChatResponse]:
        self.state.enter("StreamChat", request, context)
        pid, model = self._resolve(request.provider)
        for piece in self.state.reasoning:
            yield llm_pb2.StreamChatResponse(reasoning_delta=piece)
        for index, delta in enumerate(self.state.deltas):
            yield llm_pb2.StreamChatResponse(delta=delta)
            if index == 0 and self.state.stream_hang:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    self.state.stream_cancelled.set()
                    raise
        for index, call in enumerate(self.state.tool_calls):
            half = len(call.arguments) // 2
            yield llm_pb2.StreamChatResponse(
                tool_call_delta=llm_pb2.ToolCallDelta(
                    index=index, id=call.id, name=call.name, arguments_delta=call.arguments[:half]
                )
            )
            yield llm_pb2.StreamChatResponse(
                tool_call_delta=llm_pb2.ToolCallDelta(index=index, arguments_delta=call.arguments[half:])
            )
        if self.state.stream_error is not None:
            raise self.state.stream_error
        yield llm_pb2.StreamChatResponse(done=self._done(pid, request.model or model))

    async def TestKey(self, request: llm_pb2.TestKeyRequest, context: Context) -> llm_pb2.TestKeyResponse:
        self.state.enter("TestKey", request, context)
        pid = canonical(request.provider)
        key = request.api_key
        if not key:
            if pid not in self.state.keys:
                raise errors.KeyNotConfigured(f"no {pid} key is configured", provider=pid)
            key = self.state.keys[pid]
        valid = key.startswith("sk-good")
        return llm_pb2.TestKeyResponse(
            valid=valid,
            message=f"{pid} accepted the key" if valid else f"{pid} rejected the key",
            reason=llm_pb2.TEST_KEY_REASON_VALID if valid else llm_pb2.TEST_KEY_REASON_INVALID_KEY,
            provider=pid,
            latency_ms=42,
        )

    async def ListProviders(
        self, request: llm_pb2.ListProvidersRequest, context: Context
    ) -> llm_pb2.ListProvidersResponse:
        self.state.enter("ListProviders", request, context)
        return llm_pb2.ListProvidersResponse(
            providers=[
                llm_pb2.ProviderInfo(
                    id=pid,
                    aliases=aliases,
                    display_name=pid.title(),
                    wire_format="openai" if pid != "anthropic" else "anthropic",
                    default_model=DEFAULT_MODELS[pid],
                    requires_key=pid != "llama",
                    features=["streaming"],
                    models=_models(pid),
                )
                for pid, aliases in sorted(PROVIDERS.items())
            ]
        )

    async def ListModels(
        self, request: llm_pb2.ListModelsRequest, context: Context
    ) -> llm_pb2.ListModelsResponse:
        self.state.enter("ListModels", request, context)
        pid = canonical(request.provider)
        return llm_pb2.ListModelsResponse(provider=pid, models=_models(pid), live=False)


def _models(pid: str) -> list[llm_pb2.ModelInfo]:
    return [
        llm_pb2.ModelInfo(
            id=DEFAULT_MODELS[pid],
            display_name=DEFAULT_MODELS[pid].upper(),
            context_window=128000,
            input_price_per_mtok=0.15,
            output_price_per_mtok=0.6,
        )
    ]


class FakeServers:
    """Both fakes on loopback ports, served from a background thread's event loop."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.state = FakeState()
        self._credentials = credentials
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-grpc", daemon=True)
        self._servers: list[grpc.aio.Server] = []
        self.llm_port = 0
        self.vault_port = 0

    @property
    def llm_target(self) -> str:
        return f"127.0.0.1:{self.llm_port}"

    @property
    def vault_target(self) -> str:
        return f"127.0.0.1:{self.vault_port}"

    def _bind(self, server: grpc.aio.Server) -> int:
        if self._credentials is None:
            return server.add_insecure_port("127.0.0.1:0")
        return server.add_secure_port("127.0.0.1:0", self._credentials)

    async def _start(self) -> None:
        vault, llm = new_server(), new_server()
        vault_pb2_grpc.add_VaultServiceServicer_to_server(FakeVault(self.state), vault)
        llm_pb2_grpc.add_LLMServiceServicer_to_server(FakeLLM(self.state), llm)
        self.vault_port, self.llm_port = self._bind(vault), self._bind(llm)
        for server in (vault, llm):
            await server.start()
        self._servers = [vault, llm]

    async def _stop(self) -> None:
        for server in self._servers:
            await server.stop(None)

    def start(self) -> FakeServers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Stop both fakes (a second call does nothing)."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def store(self, provider: str, api_key: str, **settings: Any) -> None:
        """Put a config straight into the fake vault (test set-up, no RPC)."""
        pid = canonical(provider)
        self.state.configs[pid] = vault_pb2.ProviderConfig(
            provider=pid,
            key_hint=api_key[-4:],
            settings=vault_pb2.ProviderSettings(**settings),
            is_active=True,
            create_time=_now(),
            update_time=_now(),
            usage_count=3,
        )
        self.state.keys[pid] = api_key

    def wait_cancelled(self, timeout: float = 30) -> bool:
        """Wait until a hanging stream saw its cancellation."""
        return self.state.stream_cancelled.wait(timeout)
