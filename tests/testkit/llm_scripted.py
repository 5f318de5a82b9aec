"""A scripted adapter (the ``adapters.base.Adapter`` protocol) for LLM service tests.

``ScriptedAdapter`` plays one script per ``stream_chat`` attempt: each step is an
event to yield, an exception to raise, ``STALL`` (wait until cancelled or closed)
or a ``Gate`` (wait until the test opens it). The last script repeats for further
attempts. It records every call (endpoint, params, timeout) and every stream it
opened and saw closed, so tests can check retries, key resolution and that a
cancelled call closes the upstream stream at once. ``probe_key`` and
``list_models`` return (or raise) whatever the test set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aiohttp

from llm_service.adapters.base import (
    ChatEvent,
    ChatParams,
    Endpoint,
    Finished,
    FinishReason,
    ListedModel,
    ProbeOutcome,
    ProbeResult,
    TextDelta,
    Usage,
)


class _Stall:
    def __repr__(self) -> str:
        return "STALL"


STALL = _Stall()


@dataclass
class Gate:
    """A step that waits until the test calls ``open()``; ``reached`` is set on arrival."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self) -> None:
        self.opened.set()


Step = ChatEvent | BaseException | _Stall | Gate


@dataclass
class StreamCall:
    """One ``stream_chat`` call."""

    endpoint: Endpoint
    params: ChatParams
    timeout: float | None


def finished(
    model: str = "gpt-4o-mini",
    input_tokens: int = 10,
    output_tokens: int = 5,
    reason: FinishReason = FinishReason.STOP,
) -> Finished:
    """A typical final event."""
    return Finished(reason, Usage(input_tokens, output_tokens, input_tokens + output_tokens), model, "resp-1")


def answer(*pieces: str, **kwargs: object) -> list[Step]:
    """A successful script: these deltas, then ``finished(**kwargs)``."""
    return [*(TextDelta(p) for p in pieces), finished(**kwargs)]  # type: ignore[arg-type]


@dataclass
class ScriptedAdapter:
    """Plays scripts; records calls and closings."""

    scripts: list[Sequence[Step]] = field(default_factory=lambda: [answer("Hello", ", world")])
    calls: list[StreamCall] = field(default_factory=list)
    opened: int = 0
    closed: int = 0
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)
    probe: ProbeResult | BaseException = field(
        default_factory=lambda: ProbeResult(ProbeOutcome.VALID, "the provider accepted the key")
    )
    probe_calls: list[tuple[Endpoint, float | None]] = field(default_factory=list)
    models: list[ListedModel] | BaseException = field(default_factory=list)
    model_calls: list[Endpoint] = field(default_factory=list)
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    async def stream_chat(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, params: ChatParams, timeout: float | None
    ) -> AsyncIterator[ChatEvent]:
        assert isinstance(http, aiohttp.ClientSession)
        self.sessions.append(http)
        script = self.scripts[min(len(self.calls), len(self.scripts) - 1)]
        self.calls.append(StreamCall(endpoint, params, timeout))
        self.opened += 1
        try:
            for step in script:
                if isinstance(step, BaseException):
                    raise step
                if isinstance(step, _Stall):
                    await asyncio.Event().wait()
                elif isinstance(step, Gate):
                    step.reached.set()
                    await step.opened.wait()
                else:
                    yield step
        finally:
            self.closed += 1
            self.closed_event.set()

    async def probe_key(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, timeout: float | None
    ) -> ProbeResult:
        self.probe_calls.append((endpoint, timeout))
        if isinstance(self.probe, BaseException):
            raise self.probe
        return self.probe

    async def list_models(
        self, http: aiohttp.ClientSession, endpoint: Endpoint, timeout: float | None
    ) -> list[ListedModel]:
        self.model_calls.append(endpoint)
        if isinstance(self.models, BaseException):
            raise self.models
        return self.models
