"""The typed values the client returns and accepts, and their conversion from protos.

Calls return frozen dataclasses, not raw protos: ``ChatResult``, ``StreamResult``,
``Usage``, ``ProviderConfig`` (with ``ProviderSettings``), ``TestKeyResult``,
``ProviderInfo``, ``ModelInfo`` and ``ModelList``. Enums are ``StrEnum`` values
with short lowercase names (``FinishReason.STOP == "stop"``,
``TestKeyReason.INVALID_KEY == "invalid_key"``). Timestamps are timezone-aware UTC
``datetime`` values, ``None`` when unset. A conversation is a sequence of
``Message(role, content)``; a plain string is one user message.

Tools and the rest of a real workload: ``Tool`` (``Tool.from_function`` builds
one from a Python function's signature and docstring), ``ToolCall`` (what the
model asked for: ``id``, ``name``, ``arguments`` JSON text; ``.args()`` parses
it), ``Image``/``Document`` message parts, ``Reasoning`` options and
``ResponseFormat`` (``ResponseFormat.json_schema(name, schema)``). A
``ChatResult`` carries the assembled ``tool_calls``, the ``reasoning`` text and
the opaque ``provider_state``; ``result.message()`` is the assistant message to
send back on the next turn (state included, byte-exact) and
``Message.tool_result(call, content)`` the answer to one call.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from google.protobuf import struct_pb2, timestamp_pb2
from realmultillm.llm.v1 import llm_pb2
from realmultillm.vault.v1 import vault_pb2


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
_MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
_MIME_BY_SUFFIX[".webp"] = "image/webp"


@dataclass(frozen=True, slots=True)
class Image:
    """An image part: an http(s) or ``data:`` URL, or bytes with their MIME type."""

    url: str = ""
    data: bytes = b""
    mime_type: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> Image:
        """An image read from a file; the type from its suffix (png, jpg, gif, webp)."""
        path = Path(path)
        mime = _MIME_BY_SUFFIX.get(path.suffix.lower())
        if mime is None:
            raise ValueError(f"{path}: unsupported image type; use a .png, .jpg, .gif or .webp file")
        return cls(data=path.read_bytes(), mime_type=mime)

    def to_proto(self) -> llm_pb2.ContentPart:
        if self.url:
            return llm_pb2.ContentPart(image=llm_pb2.ImagePart(url=self.url, mime_type=self.mime_type))
        return llm_pb2.ContentPart(image=llm_pb2.ImagePart(data=self.data, mime_type=self.mime_type))


@dataclass(frozen=True, slots=True)
class Document:
    """A document part (a PDF), given inline."""

    data: bytes
    mime_type: str = "application/pdf"

    @classmethod
    def from_file(cls, path: str | Path) -> Document:
        return cls(Path(path).read_bytes())

    def to_proto(self) -> llm_pb2.ContentPart:
        return llm_pb2.ContentPart(document=llm_pb2.DocumentPart(data=self.data, mime_type=self.mime_type))


Part = str | Image | Document


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for: ``arguments`` is the JSON text it produced."""

    id: str
    name: str
    arguments: str

    def args(self) -> Any:
        """The arguments, parsed (``{}`` when empty)."""
        return json.loads(self.arguments) if self.arguments else {}

    def to_proto(self) -> llm_pb2.ToolCall:
        return llm_pb2.ToolCall(id=self.id, name=self.name, arguments=self.arguments)

    @classmethod
    def from_proto(cls, call: llm_pb2.ToolCall) -> ToolCall:
        return cls(call.id, call.name, call.arguments)


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


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_schema(annotation: Any) -> dict[str, Any]:
    """A JSON Schema for a type annotation (str, int, float, bool, list[...], dict,
    Literal[...], Optional[...]); anything else is left open."""
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is Literal:
        return {"enum": list(arguments)}
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return {"type": "array", "items": _json_schema(arguments[0])} if arguments else {"type": "array"}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in arguments if a is not type(None)]
        return _json_schema(kept[0]) if len(kept) == 1 else {"anyOf": [_json_schema(a) for a in kept]}
    return {}


def _doc_params(doc: str) -> tuple[str, dict[str, str]]:
    """A docstring's summary and its ``name: description`` lines (Google style ``Args:``)."""
    summary, _, rest = doc.strip().partition("\n\n")
    described: dict[str, str] = {}
    for line in rest.splitlines():
        match = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$", line)
        if match and match.group(1) not in ("Args", "Returns", "Raises"):
            described[match.group(1)] = match.group(2).strip()
    return " ".join(summary.split()), described


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call: a name, a description and a JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool = False

    @classmethod
    def from_function(cls, function: Callable[..., Any], *, strict: bool = False) -> Tool:
        """A tool from a function: its name, its docstring's first paragraph as the
        description, and a schema from its annotated parameters (those without a
        default are required; ``Args:`` lines of the docstring describe them)."""
        summary, described = _doc_params(inspect.getdoc(function) or "")
        hints = typing.get_type_hints(function)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            schema = _json_schema(hints.get(name, Any))
            if name in described:
                schema["description"] = described[name]
            properties[name] = schema
            if parameter.default is inspect.Parameter.empty:
                required.append(name)
        parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        if strict:
            parameters["additionalProperties"] = False
        return cls(function.__name__, summary, parameters, strict)

    def to_proto(self) -> llm_pb2.Tool:
        tool = llm_pb2.Tool(name=self.name, description=self.description, strict=self.strict)
        if self.parameters is not None:
            tool.parameters.CopyFrom(struct(self.parameters))
        return tool


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON object as a ``google.protobuf.Struct``."""
    out = struct_pb2.Struct()
    out.update(value)
    return out


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The answer's shape: ``text``, ``json_object``, or ``json_schema`` with a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = ""
    schema: dict[str, Any] | None = None
    strict: bool = False

    @classmethod
    def json_schema(cls, name: str, schema: dict[str, Any], *, strict: bool = True) -> ResponseFormat:
        return cls("json_schema", name, schema, strict)

    def to_proto(self) -> llm_pb2.ResponseFormat:
        kind = {"text": 1, "json_object": 2, "json_schema": 3}[self.type]
        out = llm_pb2.ResponseFormat(type=kind, name=self.name, strict=self.strict)  # type: ignore[arg-type]
        if self.schema is not None:
            out.schema.CopyFrom(struct(self.schema))
        return out


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Reasoning options: ``effort`` (low, medium, high) or a token budget, and
    whether to return the reasoning text."""

    effort: Literal["low", "medium", "high"] | None = None
    budget_tokens: int = 0
    include: bool = False

    def to_proto(self) -> llm_pb2.ReasoningOptions:
        effort = {None: 0, "low": 1, "medium": 2, "high": 3}[self.effort]
        return llm_pb2.ReasoningOptions(
            effort=effort,  # type: ignore[arg-type]
            budget_tokens=self.budget_tokens,
            include_reasoning=self.include,
        )


ToolChoiceArg = Literal["auto", "none", "required"] | str


def apply_features(
    request: llm_pb2.ChatRequest,
    *,
    tools: Sequence[Tool | Callable[..., Any]] = (),
    tool_choice: ToolChoiceArg | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: ResponseFormat | None = None,
    reasoning: Reasoning | None = None,
) -> llm_pb2.ChatRequest:
    """Fill a request's tools, tool choice, response format and reasoning options.

    ``tools`` may hold plain functions (``Tool.from_function``); ``tool_choice``
    is auto, none, required, or the name of one tool.
    """
    request.tools.extend((t if isinstance(t, Tool) else Tool.from_function(t)).to_proto() for t in tools)
    if tool_choice is not None:
        modes = {"auto": 1, "none": 2, "required": 3}
        if tool_choice in modes:
            request.tool_choice.mode = modes[tool_choice]  # type: ignore[assignment]
        else:
            request.tool_choice.name = tool_choice
    if parallel_tool_calls is not None:
        request.parallel_tool_calls = parallel_tool_calls
    if response_format is not None:
        request.response_format.CopyFrom(response_format.to_proto())
    if reasoning is not None:
        request.reasoning.CopyFrom(reasoning.to_proto())
    return request


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and cost (US dollars, from the registry's prices; 0 when unknown)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    cache_read_input_tokens: int = 0  # included in input_tokens
    cache_creation_input_tokens: int = 0  # included in input_tokens
    reasoning_tokens: int = 0  # included in output_tokens
    reported: bool = True  # False: the provider sent no usage; the counts are unknown

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
