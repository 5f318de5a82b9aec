"""The adapter interface: one adapter per wire format, given everything it needs.

An adapter turns a normalised chat request into one provider HTTP exchange and the
provider's answer into normalised events. It is *given* the endpoint and key
(``Endpoint``, resolved once by the service before the adapter is called) and the
process's one ``aiohttp.ClientSession``; it never fetches keys or reads settings.

``stream_chat`` is the one code path for both Chat and StreamChat: it yields zero
or more ``TextDelta`` and then exactly one ``Finished``; anything else ends with an
exception from ``rmllm_common.errors``:

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

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

from rmllm_common.registry import ProviderSpec
from rmllm_common.secret import Secret

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the conversation."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatParams:
    """A validated chat request with the user's defaults already applied."""

    model: str
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


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
    """The provider's own token counts."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of answer text (never empty)."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a successful completion."""

    finish_reason: FinishReason
    usage: Usage
    model: str
    response_id: str = ""


ChatEvent = TextDelta | Finished


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
        """Yield ``TextDelta``\\ s then one ``Finished``; raise the errors above.

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
