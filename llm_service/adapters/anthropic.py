"""The Anthropic Messages wire format.

``POST {base_url}/messages`` with the registry's headers (``anthropic-version``)
and ``x-api-key``. System messages go in the top-level ``system``. The API requires
``max_tokens``; the registry must give this format a ``default_max_tokens``, so the
resolved parameters always carry one. Stream events: ``message_start`` (id, model, input tokens),
``content_block_start`` (a ``tool_use`` block starts a call: its ``input: {}`` is
a placeholder and never part of the arguments; ``thinking`` and
``redacted_thinking`` blocks are kept for ``provider_state``),
``content_block_delta`` (``text_delta`` is answer text, ``input_json_delta`` an
argument fragment, possibly empty (a tool without parameters gets only an empty
one: its arguments are then ``{}``, sent at ``content_block_stop``),
``thinking_delta`` reasoning,
``signature_delta`` the thinking block's signature), ``message_delta``
(``stop_reason``, and ``usage.output_tokens`` as the final total, not an
increment; input and cache counts, when it carries them, are totals too, and one
it leaves out or sends as null keeps message_start's), ``message_stop`` (the end
marker), ``ping`` anywhere, and ``error`` (e.g. ``overloaded_error``), which
ends the stream with the mapped error even after text went out. A body that ends without ``message_stop`` is
``UpstreamStreamTruncated``. Input tokens are input + cache writes + cache reads.

Requests: images and PDFs as ``base64`` (or ``url``) source blocks; assistant
tool calls as ``tool_use`` blocks after the thinking blocks from the message's
``provider_state`` (sent back byte-exact); tool results as ``tool_result`` blocks,
consecutive ones together in one user turn; ``tool_choice`` auto/any/none/tool
with ``disable_parallel_tool_use``; JSON Schema output as
``output_config.format``, or, for a model whose registry entry says
``json_schema_mode = "tool"`` (and for a bare JSON object), a forced tool whose
input is streamed back as the answer's text; reasoning as ``thinking`` with a
token budget (from ``budget_tokens`` or the effort), ``max_tokens`` raised above
the budget when it is not.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llm_service.adapters.account import AccountCalls
from llm_service.adapters.assembly import Answer, decode_state, encode_state
from llm_service.adapters.base import (
    NOT_REPORTED,
    ChatEvent,
    ChatParams,
    DocumentPart,
    Endpoint,
    Finished,
    FinishReason,
    ImagePart,
    Message,
    TextDelta,
    TextPart,
    Usage,
)
from llm_service.adapters.errors import from_stream_error, unexpected_shapes
from llm_service.adapters.exchange import EventStream, load_event
from llm_service.adapters.readends import FLUSH, READ_END
from rmllm_common.errors import UpstreamStreamTruncated

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
JSON_TOOL_DESCRIPTION = "Give the answer as this tool's input, which is the JSON the user asked for."


def _source(mime: str, data: bytes) -> dict[str, Any]:
    return {"type": "base64", "media_type": mime, "data": base64.b64encode(data).decode()}


def _user_blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in message.content_parts():
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            inline = part.inline()
            source = _source(*inline) if inline is not None else {"type": "url", "url": part.url}
            blocks.append({"type": "image", "source": source})
        elif isinstance(part, DocumentPart):
            blocks.append({"type": "document", "source": _source(part.mime_type, part.data)})
    return blocks


def _assistant_content(message: Message, index: int) -> str | list[dict[str, Any]]:
    state = decode_state(message.provider_state, "anthropic", f"messages[{index}].provider_state")
    thinking = [b for b in state.get("blocks", []) if isinstance(b, dict)]
    if not thinking and not message.tool_calls:
        return message.text()
    blocks: list[dict[str, Any]] = list(thinking)
    text = message.text()
    if text:
        blocks.append({"type": "text", "text": text})
    blocks.extend(
        {"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments or "{}")}
        for c in message.tool_calls
    )
    return blocks


def _messages(params: ChatParams) -> list[dict[str, Any]]:
    """The conversation without system messages; tool results join one user turn."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(params.messages):
        if message.role == "system":
            continue
        if message.role == "assistant":
            out.append({"role": "assistant", "content": _assistant_content(message, index)})
            continue
        if message.role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}]
        else:
            blocks = _user_blocks(message)
        previous = out[-1] if out else None
        if previous is not None and previous["role"] == "user" and isinstance(previous["content"], list):
            previous["content"].extend(blocks)  # tool results (and what follows them) in one user turn
        elif message.role == "user" and len(blocks) == 1 and blocks[0]["type"] == "text":
            out.append({"role": "user", "content": message.text()})
        else:
            out.append({"role": "user", "content": blocks})
    return out


def _json_tool(params: ChatParams, endpoint: Endpoint) -> dict[str, Any] | None:
    """The forced tool standing in for structured output, where it is needed."""
    fmt = params.response_format
    if fmt is None:
        return None
    if fmt.type == "json_object":
        return {
            "name": "json_answer",
            "description": JSON_TOOL_DESCRIPTION,
            "input_schema": {"type": "object"},
        }
    model = endpoint.spec.model(params.model)
    if model is not None and model.json_schema_mode == "tool":
        return {"name": fmt.name, "description": JSON_TOOL_DESCRIPTION, "input_schema": fmt.schema}
    return None


def _tools(params: ChatParams, json_tool: dict[str, Any] | None, body: dict[str, Any]) -> None:
    tools: list[dict[str, Any]] = []
    for tool in params.tools:
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description:
            entry["description"] = tool.description
        entry["input_schema"] = tool.schema()
        if tool.strict:
            entry["strict"] = True
        tools.append(entry)
    choice: dict[str, Any] | None = None
    if json_tool is not None:
        tools.append(json_tool)
        choice = {"type": "tool", "name": json_tool["name"]}
    elif params.tool_choice is not None:
        tc = params.tool_choice
        if tc.name:
            choice = {"type": "tool", "name": tc.name}
        else:
            choice = {"type": {"auto": "auto", "none": "none", "required": "any"}[tc.mode or "auto"]}
    if params.parallel_tool_calls is False and params.tools:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":  # ToolChoiceNone has no such field: no call, nothing parallel
            choice["disable_parallel_tool_use"] = True
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice


def build_body(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    """The JSON request body for a chat."""
    system = [m.text() for m in params.messages if m.role == "system"]
    max_tokens = params.max_tokens  # always set: the registry gives this format a default
    reasoning = params.reasoning
    budget = reasoning.budget(THINKING_BUDGETS) if reasoning is not None else 0
    if budget and max_tokens is not None and max_tokens <= budget:
        max_tokens += budget  # the budget counts within max_tokens; keep the answer's share
    body: dict[str, Any] = {"model": params.model}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body["messages"] = _messages(params)
    body["stream"] = True
    if system:
        body["system"] = "\n\n".join(system)
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    json_tool = _json_tool(params, endpoint)
    _tools(params, json_tool, body)
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_schema" and json_tool is None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": fmt.schema}}
    if budget:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return body


@dataclass
class _Reading:
    """What one stream has told so far."""

    answer: Answer
    json_tool: str = ""  # the forced structured-output tool's name, if any
    json_blocks: set[int] = field(default_factory=set)
    thinking: dict[int, dict[str, Any]] = field(default_factory=dict)
    no_input_yet: set[int] = field(default_factory=set)  # tool_use blocks without an argument fragment
    stop_reason: str = ""
    input_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output_tokens: int = 0
    reported: bool = False

    def usage(self, raw: dict[str, Any]) -> None:
        """A ``usage`` object of message_start or message_delta (counts are running totals).

        Each count is taken only when present and not null (``MessageDeltaUsage`` makes
        all but ``output_tokens`` optional): a delta that leaves one out keeps the
        earlier value, as the SDK's accumulator does.
        """
        value = raw.get("input_tokens")
        if value is not None:
            self.input_tokens = int(value)
            self.reported = True
        value = raw.get("cache_read_input_tokens")
        if value is not None:
            self.cache_read = int(value)
        value = raw.get("cache_creation_input_tokens")
        if value is not None:
            self.cache_write = int(value)
        value = raw.get("output_tokens")
        if value is not None:
            self.output_tokens = int(value)
            self.reported = True

    def start(self, index: int, block: dict[str, Any]) -> ChatEvent | None:
        kind = block.get("type")
        if kind == "tool_use":
            if self.json_tool and block.get("name") == self.json_tool:
                self.json_blocks.add(index)
                return None
            # the start block's ``input: {}`` is a placeholder: the arguments come as deltas
            self.no_input_yet.add(index)
            return self.answer.start_call(index, block.get("id") or "", block.get("name") or "")
        if kind == "thinking":
            self.thinking[index] = {"type": "thinking", "thinking": "", "signature": ""}
            return self.answer.add_reasoning(block.get("thinking") or "")
        if kind == "redacted_thinking":
            self.thinking[index] = {"type": "redacted_thinking", "data": block.get("data") or ""}
        return None

    def delta(self, index: int, delta: dict[str, Any]) -> ChatEvent | None:
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text") or ""
            return TextDelta(text) if text else None
        if kind == "input_json_delta":
            fragment = delta.get("partial_json") or ""
            if index in self.json_blocks:
                return TextDelta(fragment) if fragment else None
            if fragment:
                self.no_input_yet.discard(index)
            return self.answer.add_arguments(index, fragment) if self.answer.has_call(index) else None
        if kind == "thinking_delta":
            text = delta.get("thinking") or ""
            if index in self.thinking:
                self.thinking[index]["thinking"] += text
            return self.answer.add_reasoning(text)
        if kind == "signature_delta" and index in self.thinking:
            self.thinking[index]["signature"] += delta.get("signature") or ""
        return None

    def stop(self, index: int) -> ChatEvent | None:
        """A block's end: a call to a tool without parameters streamed no fragment
        (only an empty one), and its input is then ``{}``, as in the start block."""
        if index in self.no_input_yet:
            self.no_input_yet.discard(index)
            return self.answer.add_arguments(index, "{}")
        return None

    def finished(self, model: str, response_id: str) -> Finished:
        # No stop_reason at all is "not reported" (UNSPECIFIED); one we do not know is OTHER.
        reason = (
            STOP_REASONS.get(self.stop_reason, FinishReason.OTHER)
            if self.stop_reason
            else FinishReason.UNSPECIFIED
        )
        if self.json_blocks and self.stop_reason == "tool_use":
            reason = FinishReason.STOP  # the forced JSON tool is the answer, not a call
        total_input = self.input_tokens + self.cache_read + self.cache_write
        usage = (
            Usage(
                total_input,
                self.output_tokens,
                total_input + self.output_tokens,
                cache_read_input_tokens=self.cache_read,
                cache_creation_input_tokens=self.cache_write,
            )
            if self.reported
            else NOT_REPORTED
        )
        blocks = [self.thinking[i] for i in sorted(self.thinking)]
        return Finished(
            reason,
            usage,
            model,
            response_id,
            self.answer.tool_calls(),
            self.answer.reasoning,
            encode_state("anthropic", blocks=blocks),
        )


class AnthropicAdapter(AccountCalls):
    """Messages over SSE; stateless."""

    async def stream_chat(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        params: ChatParams,
        timeout: float | None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield text, reasoning and tool-call deltas, then one ``Finished`` (see ``adapters.base``)."""
        spec = endpoint.spec
        url = endpoint.base_url.rstrip("/") + "/messages"
        body = build_body(endpoint, params)
        json_tool = _json_tool(params, endpoint)
        reading = _Reading(Answer(params.include_reasoning), json_tool["name"] if json_tool else "")
        model = params.model
        response_id = ""
        with unexpected_shapes(spec):
            async with EventStream(http, endpoint, url, body, timeout) as events:
                async for event in events:
                    if event is READ_END:
                        yield FLUSH
                        continue
                    if event.event == "ping" or not event.data:
                        continue
                    payload = load_event(endpoint, event.data)
                    kind = payload.get("type")
                    out: ChatEvent | None = None
                    if kind == "content_block_delta":
                        out = reading.delta(int(payload.get("index") or 0), payload.get("delta") or {})
                    elif kind == "content_block_start":
                        out = reading.start(
                            int(payload.get("index") or 0), payload.get("content_block") or {}
                        )
                    elif kind == "content_block_stop":
                        out = reading.stop(int(payload.get("index") or 0))
                    elif kind == "message_delta":
                        reading.stop_reason = (payload.get("delta") or {}).get(
                            "stop_reason"
                        ) or reading.stop_reason
                        reading.usage(payload.get("usage") or {})
                    elif kind == "message_start":
                        message = payload.get("message") or {}
                        response_id = message.get("id") or ""
                        model = message.get("model") or model
                        reading.usage(message.get("usage") or {})
                    elif kind == "message_stop":
                        break
                    elif kind == "error" or event.event == "error":
                        raise from_stream_error(spec, payload, endpoint.api_key.reveal())
                    if out is not None:
                        yield out
                else:
                    raise UpstreamStreamTruncated(
                        f"{spec.display_name} ended the stream without message_stop"
                        + (" in the middle of an event" if events.cut else ""),
                        provider=spec.id,
                    )
        yield reading.finished(model, response_id)
