"""Every call the Python clients make, as data: which RPC, what request, what deadline, what result.

Shared by the sync and asyncio clients so both send exactly the same requests and
read the answers the same way; each client only carries a ``Call`` over its own
transport. ``ChatOptions``, ``PutOptions`` and ``UpdateOptions`` are the keyword
arguments of the chat and config methods, written once for both clients.
``update_request`` builds the ``update_mask`` from the keyword arguments actually
given: passing ``temperature=None`` names ``settings.temperature`` in the mask and
leaves it unset, which clears it; leaving an argument out leaves the field alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Generic, Literal, TypeAlias, TypedDict, TypeVar

from google.protobuf import field_mask_pb2
from realmultillm.llm.v1 import llm_pb2
from realmultillm.vault.v1 import vault_pb2

from clients import usage
from clients.channels import ClientOptions
from clients.datatypes import (
    ChatResult,
    Message,
    ModelList,
    ProviderConfig,
    ProviderInfo,
    ProviderSettings,
    Reasoning,
    ResponseFormat,
    TestKeyResult,
    Tool,
    ToolChoiceArg,
    apply_features,
    conversation,
)
from clients.usage import UsagePage, UsageSummary


class _Unset(Enum):
    UNSET = "unset"


UNSET: Literal[_Unset.UNSET] = _Unset.UNSET
"""Marks an ``update_config`` argument that was not given (the field stays as it is)."""

T = TypeVar("T")
R = TypeVar("R")
Maybe: TypeAlias = T | Literal[_Unset.UNSET]
LLM = "LLM service"
VAULT = "vault"


class ChatOptions(TypedDict, total=False):
    """The keyword arguments of ``chat`` and ``stream_chat``; unset ones take the server's defaults."""

    model: str | None
    system: str | None
    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    stop: Sequence[str]
    tools: Sequence[Tool | Callable[..., Any]]
    tool_choice: ToolChoiceArg | None
    parallel_tool_calls: bool | None
    response_format: ResponseFormat | None
    reasoning: Reasoning | None
    timeout: float | None


class TestKeyOptions(TypedDict, total=False):
    """The keyword arguments of ``test_key``: an endpoint override, and the deadline."""

    base_url: str | None
    timeout: float | None


class PutOptions(TypedDict, total=False):
    """The keyword arguments of ``put_config``."""

    base_url: str | None
    default_model: str | None
    temperature: float | None
    max_tokens: int | None
    timeout: float | None


class UpdateOptions(TypedDict, total=False):
    """The keyword arguments of ``update_config``: only the fields given change."""

    base_url: Maybe[str]
    is_active: Maybe[bool]
    default_model: Maybe[str]
    temperature: Maybe[float | None]
    max_tokens: Maybe[int | None]
    timeout: float | None


class UsageSummaryOptions(TypedDict, total=False):
    """The keyword arguments of ``usage_summary``: one provider only ("" for all), the deadline."""

    provider: str
    timeout: float | None


class UsageRecordsOptions(TypedDict, total=False):
    """The keyword arguments of ``usage_records``: provider ("" for all), page size (default
    100) and the ``next_page_token`` of the previous page, and the deadline."""

    provider: str
    page_size: int
    page_token: str
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One unary RPC: the stub method's name, its request and deadline, and the result's reader."""

    method: str
    request: Any
    timeout: float
    vault: bool
    result: Callable[[Any], R]

    @property
    def service(self) -> str:
        """The service's name for error messages."""
        return VAULT if self.vault else LLM


def _keep(response: Any) -> Any:
    return response


def chat_request(provider: str, prompt: str | Sequence[Message], options: ChatOptions) -> llm_pb2.ChatRequest:
    """A Chat request; unset optional values are left unset (the server's defaults apply)."""
    request = llm_pb2.ChatRequest(
        provider=provider,
        model=options.get("model") or "",
        messages=conversation(prompt, options.get("system")),
        stop=list(options.get("stop", ())),
    )
    temperature, max_tokens, top_p = (
        options.get("temperature"),
        options.get("max_tokens"),
        options.get("top_p"),
    )
    if temperature is not None:
        request.temperature = temperature
    if max_tokens is not None:
        request.max_tokens = max_tokens
    if top_p is not None:
        request.top_p = top_p
    return apply_features(
        request,
        tools=options.get("tools", ()),
        tool_choice=options.get("tool_choice"),
        parallel_tool_calls=options.get("parallel_tool_calls"),
        response_format=options.get("response_format"),
        reasoning=options.get("reasoning"),
    )


def stream_request(chat: llm_pb2.ChatRequest) -> llm_pb2.StreamChatRequest:
    """The StreamChat twin of a Chat request (the two messages share every field number)."""
    return llm_pb2.StreamChatRequest.FromString(chat.SerializeToString())


def put_request(provider: str, api_key: str, options: PutOptions) -> vault_pb2.PutProviderConfigRequest:
    """A PutProviderConfig request (unset settings stay unset)."""
    settings = ProviderSettings(
        options.get("default_model") or "", options.get("temperature"), options.get("max_tokens")
    )
    return vault_pb2.PutProviderConfigRequest(
        provider=provider,
        api_key=api_key,
        base_url=options.get("base_url") or "",
        settings=settings.to_proto(),
    )


def update_request(provider: str, options: UpdateOptions) -> vault_pb2.UpdateProviderConfigRequest:
    """An UpdateProviderConfig request naming exactly the fields given."""
    config = vault_pb2.ProviderConfig(provider=provider)
    paths: list[str] = []
    base_url = options.get("base_url", UNSET)
    if base_url is not UNSET:
        config.base_url = base_url
        paths.append("base_url")
    is_active = options.get("is_active", UNSET)
    if is_active is not UNSET:
        config.is_active = is_active
        paths.append("is_active")
    default_model = options.get("default_model", UNSET)
    if default_model is not UNSET:
        config.settings.default_model = default_model
        paths.append("settings.default_model")
    temperature = options.get("temperature", UNSET)
    if temperature is not UNSET:
        if temperature is not None:
            config.settings.temperature = temperature
        paths.append("settings.temperature")
    max_tokens = options.get("max_tokens", UNSET)
    if max_tokens is not UNSET:
        if max_tokens is not None:
            config.settings.max_tokens = max_tokens
        paths.append("settings.max_tokens")
    if not paths:
        raise ValueError(
            "update_config needs at least one of base_url, is_active, default_model, temperature, max_tokens"
        )
    return vault_pb2.UpdateProviderConfigRequest(
        config=config, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def _config(response: Any) -> ProviderConfig:
    return ProviderConfig.from_proto(response.config)


class Calls:
    """The calls of one client, with its default deadlines applied."""

    def __init__(self, options: ClientOptions) -> None:
        self._options = options

    def _timeout(self, timeout: float | None) -> float:
        return timeout if timeout is not None else self._options.timeout

    def _chat_timeout(self, timeout: float | None) -> float:
        return timeout or self._options.chat_timeout

    def chat(self, provider: str, prompt: str | Sequence[Message], options: ChatOptions) -> Call[ChatResult]:
        """One completion."""
        request = chat_request(provider, prompt, options)
        timeout = self._chat_timeout(options.get("timeout"))
        return Call("Chat", request, timeout, False, ChatResult.from_proto)

    def stream_chat(self, provider: str, prompt: str | Sequence[Message], options: ChatOptions) -> Call[Any]:
        """A streamed completion (the client wraps the response stream)."""
        request = stream_request(chat_request(provider, prompt, options))
        return Call("StreamChat", request, self._chat_timeout(options.get("timeout")), False, _keep)

    def test_key(self, provider: str, api_key: str | None, options: TestKeyOptions) -> Call[TestKeyResult]:
        """Probe an explicit or the stored key."""
        request = llm_pb2.TestKeyRequest(
            provider=provider, api_key=api_key or "", base_url=options.get("base_url") or ""
        )
        return Call(
            "TestKey", request, self._timeout(options.get("timeout")), False, TestKeyResult.from_proto
        )

    def providers(self, timeout: float | None) -> Call[list[ProviderInfo]]:
        """The provider registry, ordered by id."""

        def read(response: Any) -> list[ProviderInfo]:
            return [ProviderInfo.from_proto(p) for p in response.providers]

        return Call("ListProviders", llm_pb2.ListProvidersRequest(), self._timeout(timeout), False, read)

    def models(self, provider: str, timeout: float | None) -> Call[ModelList]:
        """A provider's models."""
        request = llm_pb2.ListModelsRequest(provider=provider)
        return Call("ListModels", request, self._timeout(timeout), False, ModelList.from_proto)

    def put_config(self, provider: str, api_key: str, options: PutOptions) -> Call[ProviderConfig]:
        """Store a key and settings."""
        request = put_request(provider, api_key, options)
        return Call("PutProviderConfig", request, self._timeout(options.get("timeout")), True, _config)

    def get_config(self, provider: str, timeout: float | None) -> Call[ProviderConfig]:
        """One stored configuration."""
        request = vault_pb2.GetProviderConfigRequest(provider=provider)
        return Call("GetProviderConfig", request, self._timeout(timeout), True, _config)

    def list_configs(self, timeout: float | None) -> Call[list[ProviderConfig]]:
        """All of the caller's configurations."""

        def read(response: Any) -> list[ProviderConfig]:
            return [ProviderConfig.from_proto(c) for c in response.configs]

        request = vault_pb2.ListProviderConfigsRequest()
        return Call("ListProviderConfigs", request, self._timeout(timeout), True, read)

    def update_config(self, provider: str, options: UpdateOptions) -> Call[ProviderConfig]:
        """Change only the fields given."""
        request = update_request(provider, options)
        return Call("UpdateProviderConfig", request, self._timeout(options.get("timeout")), True, _config)

    def delete_config(self, provider: str, timeout: float | None) -> Call[str]:
        """Remove a configuration; the result is the canonical provider id."""

        def read(response: Any) -> str:
            return str(response.provider)

        request = vault_pb2.DeleteProviderConfigRequest(provider=provider)
        return Call("DeleteProviderConfig", request, self._timeout(timeout), True, read)

    def usage_summary(
        self, since: datetime, until: datetime | None, options: UsageSummaryOptions
    ) -> Call[UsageSummary]:
        """The caller's usage over ``[since, until)``: totals, and by day, provider and model."""
        request = usage.summary_request(since, until, options.get("provider", ""))
        timeout = self._timeout(options.get("timeout"))
        return Call("GetUsageSummary", request, timeout, True, UsageSummary.from_proto)

    def usage_records(
        self, since: datetime | None, until: datetime | None, options: UsageRecordsOptions
    ) -> Call[UsagePage]:
        """One page of the caller's usage records, newest first."""
        request = usage.records_request(
            since,
            until,
            options.get("provider", ""),
            options.get("page_size", 100),
            options.get("page_token", ""),
        )
        timeout = self._timeout(options.get("timeout"))
        return Call("ListUsageRecords", request, timeout, True, UsagePage.from_proto)
