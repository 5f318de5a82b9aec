"""Assembling one answer from a provider's stream, and the opaque ``provider_state``.

``Answer`` is what every adapter feeds while it reads a stream: each tool call
start and argument fragment (keyed by whatever the provider numbers them by)
comes back as a ``ToolCallDelta`` with the index normalised to 0..n-1 in the order
the calls started, and the same fragments are concatenated into the final
``ToolCall``\\ s, so ``Finished.tool_calls[i].arguments`` is exactly the
concatenation of the deltas of call i. Reasoning text is collected the same way
(and yielded only when the caller asked for it). ``stable_call_id`` names a call
the provider sent without an id.

``provider_state`` is the gateway's own opaque bytes: compact JSON
``{"v": 1, "format": <wire format>, ...}`` holding what the provider needs back
on the next turn (Anthropic thinking blocks with their signatures, Gemini
thought signatures per part). ``encode_state`` writes it; ``decode_state`` reads
it back, ignores state written for another wire format (a conversation moved to
another provider), and raises ``InvalidRequest`` for bytes it did not write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from llm_service.adapters.base import ReasoningDelta, ToolCall, ToolCallDelta
from rmllm_common.errors import FieldViolation, InvalidRequest

STATE_VERSION = 1


@dataclass
class _Call:
    id: str
    name: str
    fragments: list[str] = field(default_factory=list)


@dataclass
class Answer:
    """The tool calls and reasoning of one answer, as they stream in."""

    include_reasoning: bool = False
    _calls: list[_Call] = field(default_factory=list)
    _by_key: dict[Hashable, int] = field(default_factory=dict)
    _reasoning: list[str] = field(default_factory=list)

    def start_call(self, key: Hashable, call_id: str, name: str, arguments: str = "") -> ToolCallDelta:
        """A new call (the provider's ``key`` for it): its first delta, with id and name."""
        index = len(self._calls)
        self._by_key[key] = index
        self._calls.append(_Call(call_id, name, [arguments] if arguments else []))
        return ToolCallDelta(index, call_id, name, arguments)

    def has_call(self, key: Hashable) -> bool:
        """Whether a call with the provider's ``key`` has started."""
        return key in self._by_key

    def add_arguments(self, key: Hashable, fragment: str) -> ToolCallDelta | None:
        """The next argument fragment of call ``key``: its delta, or None when empty."""
        if not fragment:
            return None
        index = self._by_key[key]
        self._calls[index].fragments.append(fragment)
        return ToolCallDelta(index, arguments=fragment)

    def add_reasoning(self, text: str) -> ReasoningDelta | None:
        """The next piece of reasoning: its delta when the caller asked for reasoning."""
        if not text or not self.include_reasoning:
            return None
        self._reasoning.append(text)
        return ReasoningDelta(text)

    @property
    def reasoning(self) -> str:
        """The reasoning text yielded so far."""
        return "".join(self._reasoning)

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Every call, in index order, its arguments the concatenation of its fragments."""
        return tuple(ToolCall(c.id, c.name, "".join(c.fragments)) for c in self._calls)

    @property
    def call_count(self) -> int:
        """How many calls have started."""
        return len(self._calls)


def stable_call_id(response_id: str, index: int, name: str, arguments: str = "") -> str:
    """An id for a call the provider gave none: the same answer always gets the same ids."""
    digest = hashlib.sha256(f"{response_id}\x00{index}\x00{name}\x00{arguments}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def encode_state(wire_format: str, **content: Any) -> bytes:
    """The opaque state of an answer (empty when there is nothing to send back)."""
    if not any(content.values()):
        return b""
    return json.dumps(
        {"v": STATE_VERSION, "format": wire_format, **content}, separators=(",", ":"), ensure_ascii=False
    ).encode()


def read_state(raw: bytes) -> dict[str, Any]:
    """Parse state bytes; ``ValueError`` when they are not state this gateway wrote."""
    try:
        state = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError("not state this gateway wrote") from e
    if (
        not isinstance(state, dict)
        or state.get("v") != STATE_VERSION
        or not isinstance(state.get("format"), str)
    ):
        raise ValueError("not state this gateway wrote")
    return state


def decode_state(raw: bytes, wire_format: str, field_path: str = "provider_state") -> dict[str, Any]:
    """The state for ``wire_format`` ({} when empty or written for another format)."""
    if not raw:
        return {}
    try:
        state = read_state(raw)
    except ValueError as e:
        description = "must be the provider_state of an earlier answer, sent back unchanged"
        raise InvalidRequest(
            f"{field_path}: {description}", violations=[FieldViolation(field_path, description)]
        ) from e
    return state if state["format"] == wire_format else {}
