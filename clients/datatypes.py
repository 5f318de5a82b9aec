"""The typed values the client returns and accepts, and their conversion from protos.

Calls return frozen dataclasses, not raw protos: ``ChatResult``, ``StreamResult``,
``Usage``, ``ProviderConfig`` (with ``ProviderSettings``), ``TestKeyResult``,
``ProviderInfo``, ``ModelInfo`` and ``ModelList``. Enums are ``StrEnum`` values
with short lowercase names (``FinishReason.STOP == "stop"``,
``TestKeyReason.INVALID_KEY == "invalid_key"``). Timestamps are timezone-aware UTC
``datetime`` values, ``None`` when unset. A conversation is a sequence of
``Message(role, content)``; a plain string is one user message.

Tools, parts, formats and reasoning options live in ``clients.features`` (and
are re-exported here). A ``ChatResult`` carries the assembled ``tool_calls``, the ``reasoning`` text and
the opaque ``provider_state``; ``result.message()`` is the assistant message to
send back on the next turn (state included, byte-exact) and
``Message.tool_result(call, content)`` the answer to one call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from google.protobuf import timestamp_pb2
from realmultillm.llm.v1 import llm_pb2
from realmultillm.vault.v1 import vault_pb2

from clients.features import (
    Document,
    Image,
    Part,
    Reasoning,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoiceArg,
    apply_features,
    struct,
)


class Role(StrEnum):
    """Who wrote a message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(StrEnum):
    """Why the model stopped."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"
    OTHER = "other"


class TestKeyReason(StrEnum):
    """The outcome of ``test_key``."""

    __test__ = False  # not a pytest test class, despite its name

    UNSPECIFIED = "unspecified"
    VALID = "valid"
    INVALID_KEY = "invalid_key"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


_ROLE_TO_PROTO = {
    Role.SYSTEM: llm_pb2.ROLE_SYSTEM,
    Role.USER: llm_pb2.ROLE_USER,
    Role.ASSISTANT: llm_pb2.ROLE_ASSISTANT,
    Role.TOOL: llm_pb2.ROLE_TOOL,
}


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation.

    ``parts`` (text, ``Image``, ``Document``) follow ``content``; assistant
    messages carry ``tool_calls`` and ``provider_state`` from an earlier answer;
    tool messages name the call they answer in ``tool_call_id``.
    """

    role: Role | str
    content: str = ""
    parts: Sequence[Part] = ()
    tool_calls: Sequence[ToolCall] = ()
    tool_call_id: str = ""
    provider_state: bytes = b""

    @classmethod
    def tool_result(cls, call: ToolCall | str, content: Any) -> Message:
        """The answer to one tool call; a non-string ``content`` is sent as JSON."""
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        return cls(Role.TOOL, text, tool_call_id=call if isinstance(call, str) else call.id)

    def to_proto(self) -> llm_pb2.ChatMessage:
        try:
            role = _ROLE_TO_PROTO[Role(self.role)]
        except ValueError:
            raise ValueError(f"unknown role {self.role!r}: use system, user, assistant or tool") from None
        return llm_pb2.ChatMessage(
            role=role,
            content=self.content,
            parts=[llm_pb2.ContentPart(text=p) if isinstance(p, str) else p.to_proto() for p in self.parts],
            tool_calls=[c.to_proto() for c in self.tool_calls],
            tool_call_id=self.tool_call_id,
            provider_state=self.provider_state,
        )


def conversation(prompt: str | Sequence[Message], system: str | None = None) -> list[llm_pb2.ChatMessage]:
    """The request's messages: an optional system message, then the prompt or messages."""
    messages: list[Message] = [Message(Role.SYSTEM, system)] if system else []
    if isinstance(prompt, str):
        messages.append(Message(Role.USER, prompt))
    else:
        messages.extend(prompt)
    return [message.to_proto() for message in messages]


def format_usd(value: float) -> str:
    """A cost in US dollars as people read it: fixed notation, at most 10 decimals (the
    server rounds costs to 1e-10 USD), at least 2: ``$0.0000051``, ``$0.50``, ``$12.345``."""
    whole, _, fraction = f"{value:.10f}".rstrip("0").partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and cost (US dollars, from the registry's prices; 0 when unknown).

    ``str(usage)`` reads ``12 in / 34 out tokens · $0.000022``; ``cost_text`` is the cost alone.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    cache_read_input_tokens: int = 0  # included in input_tokens
    cache_creation_input_tokens: int = 0  # included in input_tokens
    reasoning_tokens: int = 0  # included in output_tokens
    reported: bool = True  # False: the provider sent no usage; the counts are unknown

    @property
    def cost_text(self) -> str:
        """The cost, formatted with ``format_usd``."""
        return format_usd(self.cost_usd)

    def __str__(self) -> str:
        return f"{self.input_tokens} in / {self.output_tokens} out tokens · {self.cost_text}"

    @classmethod
    def from_proto(cls, usage: llm_pb2.Usage) -> Usage:
        return cls(
            usage.input_tokens,
            usage.output_tokens,
            usage.total_tokens,
            usage.cost_usd,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
            usage.reasoning_tokens,
            usage.usage_reported,
        )


def _finish_reason(value: int) -> FinishReason:
    name = llm_pb2.FinishReason.Name(value)  # type: ignore[arg-type]
    return FinishReason(name.removeprefix("FINISH_REASON_").lower())


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One completion: the text (the proto's ``content``) and its summary."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    provider: str
    response_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    provider_state: bytes = field(default=b"", repr=False)

    def message(self) -> Message:
        """This answer as the assistant message of the next turn (state sent back unchanged)."""
        return Message(
            Role.ASSISTANT, self.text, tool_calls=self.tool_calls, provider_state=self.provider_state
        )

    @classmethod
    def from_proto(cls, response: llm_pb2.ChatResponse) -> ChatResult:
        return cls(
            text=response.content,
            finish_reason=_finish_reason(response.finish_reason),
            usage=Usage.from_proto(response.usage),
            model=response.model,
            provider=response.provider,
            response_id=response.response_id,
            tool_calls=tuple(ToolCall.from_proto(c) for c in response.tool_calls),
            reasoning=response.reasoning,
            provider_state=response.provider_state,
        )

    @classmethod
    def from_stream(cls, text: str, done: llm_pb2.StreamChatDone) -> ChatResult:
        """The result of a finished stream: the concatenated deltas and the final message."""
        return cls(
            text=text,
            finish_reason=_finish_reason(done.finish_reason),
            usage=Usage.from_proto(done.usage),
            model=done.model,
            provider=done.provider,
            response_id=done.response_id,
            tool_calls=tuple(ToolCall.from_proto(c) for c in done.tool_calls),
            reasoning=done.reasoning,
            provider_state=done.provider_state,
        )


@dataclass(frozen=True, slots=True)
class TestKeyResult:
    """What the provider said about a key."""

    __test__ = False  # not a pytest test class, despite its name

    valid: bool
    message: str
    reason: TestKeyReason
    provider: str
    latency_ms: int

    @classmethod
    def from_proto(cls, response: llm_pb2.TestKeyResponse) -> TestKeyResult:
        name = llm_pb2.TestKeyReason.Name(response.reason)
        return cls(
            valid=response.valid,
            message=response.message,
            reason=TestKeyReason(name.removeprefix("TEST_KEY_REASON_").lower()),
            provider=response.provider,
            latency_ms=response.latency_ms,
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model: id, name, context window (0: unknown) and USD prices per 1M tokens."""

    id: str
    display_name: str
    context_window: int
    input_price_per_mtok: float
    output_price_per_mtok: float

    @classmethod
    def from_proto(cls, model: llm_pb2.ModelInfo) -> ModelInfo:
        return cls(
            model.id,
            model.display_name,
            model.context_window,
            model.input_price_per_mtok,
            model.output_price_per_mtok,
        )


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """One provider of the registry."""

    id: str
    aliases: tuple[str, ...]
    display_name: str
    wire_format: str
    default_base_url: str
    default_model: str
    requires_key: bool
    features: tuple[str, ...]
    models: tuple[ModelInfo, ...]

    @classmethod
    def from_proto(cls, info: llm_pb2.ProviderInfo) -> ProviderInfo:
        return cls(
            id=info.id,
            aliases=tuple(info.aliases),
            display_name=info.display_name,
            wire_format=info.wire_format,
            default_base_url=info.default_base_url,
            default_model=info.default_model,
            requires_key=info.requires_key,
            features=tuple(info.features),
            models=tuple(ModelInfo.from_proto(m) for m in info.models),
        )


@dataclass(frozen=True, slots=True)
class ModelList:
    """The models of one provider; ``live`` when the provider listed them itself."""

    provider: str
    models: tuple[ModelInfo, ...]
    live: bool

    @classmethod
    def from_proto(cls, response: llm_pb2.ListModelsResponse) -> ModelList:
        return cls(response.provider, tuple(ModelInfo.from_proto(m) for m in response.models), response.live)


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Per-provider defaults for chat requests; ``None``/empty: not set."""

    default_model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None

    @classmethod
    def from_proto(cls, settings: vault_pb2.ProviderSettings) -> ProviderSettings:
        return cls(
            default_model=settings.default_model,
            temperature=settings.temperature if settings.HasField("temperature") else None,
            max_tokens=settings.max_tokens if settings.HasField("max_tokens") else None,
        )

    def to_proto(self) -> vault_pb2.ProviderSettings:
        settings = vault_pb2.ProviderSettings(default_model=self.default_model)
        if self.temperature is not None:
            settings.temperature = self.temperature
        if self.max_tokens is not None:
            settings.max_tokens = self.max_tokens
        return settings


def _time(message: vault_pb2.ProviderConfig, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A stored provider configuration. It never holds the key: only its last 4 characters."""

    provider: str
    key_hint: str
    base_url: str
    settings: ProviderSettings
    is_active: bool
    create_time: datetime | None
    update_time: datetime | None
    last_used_time: datetime | None
    usage_count: int

    @classmethod
    def from_proto(cls, config: vault_pb2.ProviderConfig) -> ProviderConfig:
        return cls(
            provider=config.provider,
            key_hint=config.key_hint,
            base_url=config.base_url,
            settings=ProviderSettings.from_proto(config.settings),
            is_active=config.is_active,
            create_time=_time(config, "create_time"),
            update_time=_time(config, "update_time"),
            last_used_time=_time(config, "last_used_time"),
            usage_count=config.usage_count,
        )


__all__ = [
    "ChatResult",
    "Document",
    "FinishReason",
    "Image",
    "Message",
    "ModelInfo",
    "ModelList",
    "Part",
    "ProviderConfig",
    "ProviderInfo",
    "ProviderSettings",
    "Reasoning",
    "ResponseFormat",
    "Role",
    "TestKeyReason",
    "TestKeyResult",
    "Tool",
    "ToolCall",
    "ToolChoiceArg",
    "Usage",
    "apply_features",
    "conversation",
    "struct",
]
