"""Helpers adapter and service tests share: realistic test keys, endpoints on the fake, collecting a stream.

``KEYS`` holds a fake key per provider in that provider's real format (long
enough for redaction tests to be meaningful); ``endpoint(fake, provider)`` points
the registry's spec at the fake (at its real base path, or at ``path``);
``collect`` drains an adapter stream into its text, its deltas and its
``Finished`` (or the error that ended it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fakes import conversations
from fakes.server import FakeProvider
from fakes.transcripts import Transcript
from llm_service.adapters.base import (
    ChatEvent,
    ChatParams,
    Endpoint,
    Finished,
    Message,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
)
from llm_service.validation import ChatInput
from rmllm_common.errors import RmllmError
from rmllm_common.registry import default_registry
from rmllm_common.secret import Secret

KEYS = {
    "openai": "sk-proj-T3stK3yAbCdEfGhIjKlMnOpQrStUvWxYz0123456789WXYZ",
    "anthropic": "sk-ant-api03-T3stK3yAbCdEfGhIjKlMnOpQrStUvWxYz0123456789-QRSTAA",
    "google": "AIzaSyT3stK3yAbCdEfGhIjKlMnOpQrStUvWx",
    "openrouter": "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",
    "github": "github_pat_11ABCDEFG0T3stK3yAbCdEfGhIjKlMnOpQrStUvWxYz",
    "grok": "xai-T3stK3yAbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrSt56",
    "llama": "",
}
PROVIDERS = tuple(sorted(default_registry().providers))


def endpoint(
    fake: FakeProvider, provider: str, key: str | None = None, *, path: str | None = None
) -> Endpoint:
    """The registry's spec for ``provider``, its base URL moved onto the fake (``path``: at
    that path of the fake's origin instead of the registry's base path, "" for the origin)."""
    spec = default_registry().providers[provider]
    base_url = fake.base_url(provider) if path is None else fake.origin + path
    return Endpoint(spec=spec, base_url=base_url, api_key=Secret(KEYS[provider] if key is None else key))


def params(provider: str, **changes: object) -> ChatParams:
    """A small chat with a system message, for ``provider``'s default model, resolved."""
    spec = default_registry().providers[provider]
    fields: dict[str, object] = {
        "model": spec.default_model,
        "messages": (
            Message("system", "You are terse."),
            Message("user", "Say hello."),
            Message("assistant", "Hello."),
            Message("user", "Again, in French."),
        ),
    }
    fields.update(changes)
    # Resolved as the service resolves a request, so the registry's defaults apply.
    return ChatInput(spec, ChatParams(**fields)).params()  # type: ignore[arg-type]


def transcript_params(transcript: Transcript) -> ChatParams:
    """What to send for a transcript: its named conversation, else the small default chat."""
    if transcript.request:
        return conversations.build(transcript.request, transcript.provider, transcript.params)
    changes = dict(transcript.params)
    if "reasoning" in changes:
        changes["reasoning"] = conversations.reasoning_of(changes["reasoning"])
    return params(transcript.provider, **changes)


@dataclass
class Collected:
    """What a stream delivered before it ended."""

    deltas: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_deltas: list[ToolCallDelta] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # "text" / "reasoning" / "tool", as they came
    finished: Finished | None = None
    error: RmllmError | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    def assembled(self) -> list[tuple[str, str, str]]:
        """The tool calls the deltas spell: (id, name, arguments) per index, 0..n-1."""
        calls: list[list[str]] = []
        for delta in self.tool_deltas:
            if delta.index == len(calls):
                calls.append([delta.id, delta.name, delta.arguments])
            else:
                assert delta.index < len(calls), f"index {delta.index} skipped ahead"
                assert not delta.id and not delta.name, "id and name come with a call's first delta only"
                calls[delta.index][2] += delta.arguments
        return [(i, n, a) for i, n, a in calls]


async def collect(stream: AsyncIterator[ChatEvent]) -> Collected:
    """Drain ``stream``; an ``RmllmError`` ends it and is kept, not raised."""
    out = Collected()
    try:
        async for event in stream:
            if isinstance(event, TextDelta):
                assert out.finished is None, "a TextDelta after Finished"
                assert event.text, "an empty TextDelta"
                out.deltas.append(event.text)
                out.order.append("text")
            elif isinstance(event, ReasoningDelta):
                assert out.finished is None, "a ReasoningDelta after Finished"
                assert event.text, "an empty ReasoningDelta"
                out.reasoning.append(event.text)
                out.order.append("reasoning")
            elif isinstance(event, ToolCallDelta):
                assert out.finished is None, "a ToolCallDelta after Finished"
                out.tool_deltas.append(event)
                out.order.append("tool")
            else:
                assert out.finished is None, "two Finished events"
                out.finished = event
    except RmllmError as e:
        out.error = e
    return out
