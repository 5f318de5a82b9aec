"""StreamChat's framing: the deltas of one network read become one message.

``StreamFrames`` turns the adapter's events into ``StreamChatResponse`` messages.
Consecutive deltas of one kind are joined: text with text, reasoning with
reasoning, and the argument fragments of one tool call with that call's delta
(a fragment that names a call, or another call's, starts a new message). It
holds deltas only while the provider stream has more of the same read decoded
(see ``adapters.readends``), so the text, its order and the final ``done`` are
exactly what the caller would have had one delta per message; only the count
of messages drops, and with it the per-message cost of gRPC. When nothing
reports read ends (a scripted adapter) every delta is its own message.
"""

from __future__ import annotations

from realmultillm.llm.v1 import llm_pb2

from llm_service.adapters.base import ChatEvent, ReasoningDelta, TextDelta, ToolCallDelta
from llm_service.adapters.readends import ReadGauge

_TEXT, _REASONING, _TOOL = 1, 2, 3


class StreamFrames:
    """The held deltas of one StreamChat and the messages they become."""

    __slots__ = ("_call", "_gauge", "_kind", "_parts")

    def __init__(self, gauge: ReadGauge) -> None:
        self._gauge = gauge
        self._kind = 0  # what is held: nothing, text, reasoning or one tool call's fragments
        self._parts: list[str] = []
        self._call: ToolCallDelta | None = None

    def push(self, event: ChatEvent) -> llm_pb2.StreamChatResponse | None:
        """Hold ``event`` (a non-empty delta); the message of what was held before, when it cannot join."""
        event_type = type(event)
        if event_type is TextDelta:
            kind, piece = _TEXT, event.text  # type: ignore[union-attr]
        elif event_type is ReasoningDelta:
            kind, piece = _REASONING, event.text  # type: ignore[union-attr]
        else:
            assert isinstance(event, ToolCallDelta)
            kind, piece = _TOOL, event.arguments
            call = self._call
            if (
                self._kind == _TOOL
                and call is not None
                and call.index == event.index
                and not event.id
                and not event.name
            ):
                self._parts.append(piece)
                return None
        if kind == self._kind and kind != _TOOL:
            self._parts.append(piece)
            return None
        sent = self.flush()
        self._kind = kind
        self._parts.append(piece)
        if kind == _TOOL:
            self._call = event  # type: ignore[assignment]
        self._gauge.held = True
        return sent

    def flush(self) -> llm_pb2.StreamChatResponse | None:
        """The message of everything held (None when nothing is)."""
        kind = self._kind
        if not kind:
            return None
        parts = self._parts
        text = parts[0] if len(parts) == 1 else "".join(parts)
        parts.clear()
        self._kind = 0
        self._gauge.held = False
        if kind == _TEXT:
            return llm_pb2.StreamChatResponse(delta=text)
        if kind == _REASONING:
            return llm_pb2.StreamChatResponse(reasoning_delta=text)
        call, self._call = self._call, None
        assert call is not None
        return llm_pb2.StreamChatResponse(
            tool_call_delta=llm_pb2.ToolCallDelta(
                index=call.index, id=call.id, name=call.name, arguments_delta=text
            )
        )

    @property
    def holding(self) -> bool:
        """Whether deltas may wait for the rest of their read (a stream reports read ends)."""
        return self._gauge.attached
