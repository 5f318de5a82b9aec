"""The adapter interface: one adapter per wire format, given everything it needs.

An adapter turns a normalised chat request into one provider HTTP exchange and the
provider's answer into normalised events. It is *given* the endpoint and key
(``Endpoint``, resolved once by the service before the adapter is called) and the
process's one ``aiohttp.ClientSession``; it never fetches keys or reads settings.

``stream_chat`` is the one code path for both Chat and StreamChat: it yields zero
or more ``TextDelta``, ``ReasoningDelta`` and ``ToolCallDelta`` in the order the
provider produced them, and then exactly one ``Finished`` carrying the assembled
tool calls, the reasoning text, the opaque ``provider_state`` and the ``Usage``
(OpenTelemetry GenAI semantics: ``input_tokens`` includes cached tokens,
``output_tokens`` includes reasoning tokens; ``reported`` false when the provider
sent none). Anything else ends with an exception from ``rmllm_common.errors``:

* ``ProviderKeyInvalid`` (401/403, and the bad-key 400s of Gemini and xAI),
* ``ProviderRateLimited`` (429, ``retry_after`` from Retry-After or Gemini RetryInfo),
* ``ProviderQuotaExhausted`` (429 ``insufficient_quota`` and the like; not retried),
* ``ProviderUnavailable`` (408, 409, 5xx, Anthropic 529, connection failures),
* ``UpstreamStreamTruncated`` (the stream ended without the format's end marker),
* ``DeadlineExceeded`` (the ``timeout`` given ran out),
* ``InvalidRequest`` (a provider 400 that is about the request, e.g. unknown model),
* ``ProviderError`` (an error mid-stream or an answer that fits none of the above).

Every one carries ``provider`` in its metadata, and its message never contains the
key or an upstream body that echoes it. The service retries only
``ProviderUnavailable`` and ``ProviderRateLimited``, and only while nothing has
been yielded.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp

from rmllm_common.registry import ProviderSpec
from rmllm_common.secret import Secret

Role = Literal["system", "user", "assistant", "tool"]
ToolChoiceMode = Literal["auto", "none", "required"]
ResponseFormatType = Literal["text", "json_object", "json_schema"]
Effort = Literal["low", "medium", "high"]


_DATA_URL = re.compile(r"^data:([a-z]+/[a-z0-9.+-]+);base64,(.*)$", re.DOTALL | re.IGNORECASE)


def data_url(url: str) -> tuple[str, bytes] | None:
    """The MIME type and bytes of a base64 ``data:`` URL (None: not one, or not decodable)."""
    match = _DATA_URL.match(url)
    if not match:
        return None
    try:
        return match.group(1).lower(), base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of message text."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image: an http(s) or ``data:`` URL, or bytes with their MIME type."""

    url: str = ""
    data: bytes = b""
    mime_type: str = ""

    def inline(self) -> tuple[str, bytes] | None:
        """The MIME type and bytes, when given as bytes or as a base64 ``data:`` URL."""
        if self.data:
            return self.mime_type, self.data
        return data_url(self.url) if self.url.startswith("data:") else None


@dataclass(frozen=True, slots=True)
class DocumentPart:
    """A document (PDF) given inline."""

    data: bytes
    mime_type: str = "application/pdf"


Part = TextPart | ImagePart | DocumentPart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call of an answer: its id, the tool's name, the arguments' JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the conversation.

    ``content`` is plain text; ``parts`` follow it in order. Assistant messages may
    carry ``tool_calls`` and the ``provider_state`` of that answer; tool messages
    name the call they answer in ``tool_call_id``.
    """

    role: Role
    content: str
    parts: tuple[Part, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    provider_state: bytes = b""

    def content_parts(self) -> tuple[Part, ...]:
        """``content`` (when not empty) as the first text part, then ``parts``."""
        return ((TextPart(self.content),) if self.content else ()) + self.parts

    def text(self) -> str:
        """Every text part, joined (for roles whose wire form takes text only)."""
        return "".join(p.text for p in self.content_parts() if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A declared tool: ``parameters`` is its JSON Schema (None: no arguments)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool = False

    def schema(self) -> dict[str, Any]:
        """The parameters' schema, an empty object schema when none was given."""
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A mode, or (``name``) one tool the model must call."""

    mode: ToolChoiceMode | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The answer's shape: text, any JSON object, or JSON matching ``schema``."""

    type: ResponseFormatType = "text"
    name: str = ""
    schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Reasoning options: an effort or a token budget, and whether to return the text."""

    effort: Effort | None = None
    budget_tokens: int = 0
    include: bool = False

    def budget(self, default_by_effort: dict[str, int]) -> int:
        """The thinking budget: the explicit one, else the effort's, else 0 (provider's default)."""
        if self.budget_tokens:
            return self.budget_tokens
        return default_by_effort.get(self.effort or "", 0)


@dataclass(frozen=True, slots=True)
class ChatParams:
    """A validated chat request with the user's defaults already applied."""

    model: str
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None

    @property
    def include_reasoning(self) -> bool:
        """Whether reasoning text is to be returned."""
        return self.reasoning is not None and self.reasoning.include


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to call: the provider's spec, the base URL to use, the key."""

    spec: ProviderSpec
    base_url: str
    api_key: Secret

    def headers(self) -> dict[str, str]:
        """Auth and fixed headers for this endpoint."""
        return self.spec.auth_headers(self.api_key.reveal())


class FinishReason(enum.Enum):
    """Why the model stopped (mirrors the proto enum)."""

    UNSPECIFIED = 0
    STOP = 1
    LENGTH = 2
    CONTENT_FILTER = 3
    TOOL_CALLS = 4
    OTHER = 5


@dataclass(frozen=True, slots=True)
class Usage:
    """The provider's own token counts, in OpenTelemetry GenAI terms.

    ``input_tokens`` includes the cache reads and writes; ``output_tokens``
    includes the reasoning tokens. ``reported`` is False when the provider sent no
    usage: the zeros are then unknown, not measured.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    reported: bool = True


NOT_REPORTED = Usage(reported=False)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of answer text (never empty)."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """The next piece of reasoning text (never empty; only with ``include_reasoning``)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call: ``index`` 0..n-1 in the order the calls started.

    ``id`` and ``name`` come with a call's first delta; the ``arguments`` pieces of
    one call, concatenated, are exactly its ``ToolCall.arguments``.
    """

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a successful completion."""

    finish_reason: FinishReason
    usage: Usage
    model: str
    response_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    provider_state: bytes = b""


ChatEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finished


class ProbeOutcome(enum.Enum):
    """TestKey's verdict (mirrors the proto TestKeyReason)."""

    VALID = 1
    INVALID_KEY = 2
    QUOTA_EXHAUSTED = 3
    RATE_LIMITED = 4
    UNREACHABLE = 5
    UNKNOWN = 6


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """TestKey's outcome and a sentence for a person (never containing the key)."""

    outcome: ProbeOutcome
    message: str


@dataclass(frozen=True, slots=True)
class ListedModel:
    """A model a provider listed live."""

    id: str
    display_name: str = ""
    context_window: int = 0


class Adapter(Protocol):
    """One wire format. Implementations are stateless and shared by all requests."""

    def stream_chat(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        params: ChatParams,
        timeout: float | None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield text, reasoning and tool-call deltas then one ``Finished``; raise the errors above.

        ``timeout`` is the caller's remaining deadline in seconds (None: none); the
        whole HTTP exchange must end within it. Closing the iterator early (the
        caller cancelled) must close the upstream response at once.
        """
        ...

    async def probe_key(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, timeout: float | None
    ) -> ProbeResult:
        """Run the registry's probe for the endpoint's key; never raises for HTTP outcomes."""
        ...

    async def list_models(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, timeout: float | None
    ) -> list[ListedModel]:
        """The models the provider lists for this key (``spec.models_path``)."""
        ...
