"""The OpenAI chat-completions wire format (OpenAI, OpenRouter, GitHub Models, xAI, Ollama /v1).

``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage`` always, max_tokens in the registry's
``max_tokens_field``. The stream ends only at a data field that is exactly
``[DONE]`` (the same text inside a content string is just text). Along the way:
comments (OpenRouter's ``: OPENROUTER PROCESSING``) are skipped by the decoder;
chunks with empty ``choices`` (GitHub Models' first event, the usage chunk) carry
no text; a later ``finish_reason: null`` never erases an earlier reason
(OpenRouter sends its usage chunk after the finish chunk); reasoning deltas are not
answer text (they are reasoning, in the registry's ``reasoning_fields``); a
``refusal`` delta (structured outputs) is delivered as text with finish
CONTENT_FILTER; a ``stop`` finish after tool calls (OpenAI's answer to a forced
named tool choice, Ollama's /v1 before ollama/ollama#7963) is TOOL_CALLS; an
``{"error": ...}`` event ends the stream with the mapped error. Usage is the
provider's usage chunk (``prompt_tokens_details.cached_tokens`` as cache reads,
OpenRouter's ``prompt_tokens_details.cache_write_tokens`` as cache writes,
``completion_tokens_details.reasoning_tokens`` as reasoning); a stream without
one reports ``usage_reported=false``. A body that ends without ``[DONE]`` is
``UpstreamStreamTruncated``. A server that ignores ``stream`` and answers one
whole ``chat.completion`` (``choices[].message``, tool calls without ``index``)
gives the same events, its message read as one delta.

Requests carry messages with image/file parts (images as ``image_url``, PDFs as
``file`` data URLs), assistant ``tool_calls`` and ``tool`` messages, ``tools`` as
functions, ``tool_choice``, ``parallel_tool_calls``, ``response_format``
(``json_object`` / ``json_schema``) and reasoning as the registry says the
provider takes it (``reasoning_effort``, or OpenRouter's ``reasoning`` object).
Streamed ``delta.tool_calls`` fragments are keyed by the provider's ``index``
(a new ``id`` at a used index starts a new call, for providers that number every
call 0) and renumbered 0..n-1 by ``assembly.Answer``. ``delta.reasoning_details``
(OpenRouter's reasoning blocks with their signatures) is gathered into
``provider_state`` and sent back on the assistant message to the same provider.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from llm_service.adapters.account import AccountCalls
from llm_service.adapters.assembly import Answer, decode_state, encode_state, stable_call_id
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
from llm_service.adapters.exchange import JSON_ANSWER, EventStream, load_event
from llm_service.adapters.readends import FLUSH, READ_END
from rmllm_common.errors import ProviderError, UpstreamStreamTruncated

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _content(message: Message) -> str | list[dict[str, Any]]:
    parts = message.content_parts()
    if all(isinstance(p, TextPart) for p in parts):
        return message.text()
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            url = part.url or _data_url(part.mime_type, part.data)
            out.append({"type": "image_url", "image_url": {"url": url}})
        elif isinstance(part, DocumentPart):
            out.append(
                {
                    "type": "file",
                    "file": {"filename": "document.pdf", "file_data": _data_url(part.mime_type, part.data)},
                }
            )
    return out


def message_body(message: Message, provider: str = "", index: int = 0) -> dict[str, Any]:
    """One message in chat-completions form; an assistant message carries back the
    ``reasoning_details`` its provider (OpenRouter) streamed, when sent to that provider."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text()}
    if message.role == "assistant":
        body = _assistant_body(message)
        state = decode_state(message.provider_state, "openai", f"messages[{index}].provider_state")
        if state.get("provider") == provider and state.get("reasoning_details"):
            body["reasoning_details"] = state["reasoning_details"]
        return body
    return {"role": message.role, "content": _content(message)}


def _assistant_body(message: Message) -> dict[str, Any]:
    if message.tool_calls:
        return {
            "role": "assistant",
            "content": message.text() or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments or "{}"},
                }
                for c in message.tool_calls
            ],
        }
    return {"role": message.role, "content": _content(message)}


def _tools(params: ChatParams, body: dict[str, Any]) -> None:
    if not params.tools:
        return  # OpenAI refuses tool_choice and parallel_tool_calls without tools (400)
    functions = []
    for tool in params.tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = tool.schema()
        if tool.strict:
            function["strict"] = True
        functions.append({"type": "function", "function": function})
    body["tools"] = functions
    choice = params.tool_choice
    if choice is not None:
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.name else choice.mode
        )
    if params.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = params.parallel_tool_calls


def _format_and_reasoning(endpoint: Endpoint, params: ChatParams, body: dict[str, Any]) -> None:
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
        if fmt.strict:
            schema["strict"] = True
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    reasoning = params.reasoning
    style = endpoint.spec.reasoning_request
    if reasoning is None or style == "none":
        return
    if style == "reasoning_object":
        options: dict[str, Any] = {}
        if reasoning.budget_tokens:
            options["max_tokens"] = reasoning.budget_tokens
        elif reasoning.effort:
            options["effort"] = reasoning.effort
        if options:
            body["reasoning"] = options
    elif reasoning.effort:
        body["reasoning_effort"] = reasoning.effort


def build_body(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    """The JSON request body for a chat."""
    spec = endpoint.spec
    body: dict[str, Any] = {
        "model": params.model,
        "messages": [message_body(m, spec.id, i) for i, m in enumerate(params.messages)],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.max_tokens is not None:
        body[spec.max_tokens_field] = params.max_tokens
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop"] = list(params.stop)
    _tools(params, body)
    _format_and_reasoning(endpoint, params, body)
    return body


def _usage(raw: dict[str, Any]) -> Usage:
    """The usage chunk's counts; output includes reasoning tokens even where
    ``completion_tokens`` leaves them out (xAI), as the provider's total shows.
    ``prompt_tokens`` already holds the cache reads (``cached_tokens``) and, on
    OpenRouter, the cache writes (``cache_write_tokens``)."""
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    total = int(raw.get("total_tokens") or 0)
    if total > prompt + completion:
        completion = total - prompt
    prompt_details = raw.get("prompt_tokens_details") or {}
    cached = int(prompt_details.get("cached_tokens") or 0)
    written = int(prompt_details.get("cache_write_tokens") or 0)
    reasoning = int((raw.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return Usage(
        prompt,
        completion,
        total or prompt + completion,
        cache_read_input_tokens=cached,
        cache_creation_input_tokens=written,
        reasoning_tokens=reasoning,
    )


def _message_as_delta(message: dict[str, Any] | None) -> dict[str, Any]:
    """A whole answer's ``message`` as one delta: its tool calls (which carry no
    ``index``) numbered in their order."""
    delta = dict(message or {})
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        delta["tool_calls"] = [{**c, "index": i} if isinstance(c, dict) else c for i, c in enumerate(calls)]
    return delta


class _Calls:
    """Maps the provider's tool-call indices to calls of the answer, and gathers the
    ``reasoning_details`` pieces (by type and index: text, summary and data concatenate)."""

    def __init__(self, answer: Answer, model: str) -> None:
        self.answer = answer
        self.model = model
        self.usage = NOT_REPORTED
        self.current: dict[int, tuple[int, str]] = {}  # provider index -> (answer key, id)
        self.details: dict[tuple[str, int], dict[str, Any]] = {}
        self.refused = False
        self.response_id = ""
        self.finish = ""

    def add_details(self, pieces: list[Any]) -> None:
        for piece in pieces:
            if not isinstance(piece, dict):
                continue
            key = (str(piece.get("type", "")), int(piece.get("index") or 0))
            known = self.details.get(key)
            if known is None:
                self.details[key] = dict(piece)
                continue
            for name, value in piece.items():
                if name in ("text", "summary", "data") and isinstance(value, str):
                    known[name] = (known.get(name) or "") + value
                elif value is not None:
                    known[name] = value

    def state(self, provider: str) -> bytes:
        details = [self.details[k] for k in sorted(self.details, key=lambda k: (k[1], k[0]))]
        return encode_state("openai", provider=provider, reasoning_details=details) if details else b""

    def feed(self, fragment: dict[str, Any]) -> ChatEvent | None:
        index = int(fragment.get("index") or 0)
        function = fragment.get("function") or {}
        call_id = fragment.get("id") or ""
        arguments = function.get("arguments") or ""
        known = self.current.get(index)
        if known is None or (call_id and call_id != known[1]):
            key = self.answer.call_count
            self.current[index] = (key, call_id)
            name = function.get("name") or ""
            given = call_id or stable_call_id(self.response_id, key, name)
            return self.answer.start_call(key, given, name, arguments)
        return self.answer.add_arguments(known[0], arguments)

    def take(self, endpoint: Endpoint, data: str, reasoning_fields: tuple[str, ...]) -> list[ChatEvent]:
        """One chunk's events (its id, model and usage noted); a stream error is raised."""
        chunk = load_event(endpoint, data)
        if chunk.get("error"):
            raise from_stream_error(endpoint.spec, chunk, endpoint.api_key.reveal())
        if not self.response_id:
            self.response_id = chunk.get("id") or ""
            self.model = chunk.get("model") or self.model
        events = self.choice_events(chunk, reasoning_fields)
        raw_usage = chunk.get("usage")
        if raw_usage:
            self.usage = _usage(raw_usage)
        return events

    def take_whole(self, endpoint: Endpoint, data: str, reasoning_fields: tuple[str, ...]) -> list[ChatEvent]:
        """The events of a whole ``chat.completion`` answered instead of a stream."""
        answer = load_event(endpoint, data)
        choices = answer.get("choices")
        if not isinstance(choices, list) or not any(isinstance(c, dict) and "message" in c for c in choices):
            spec = endpoint.spec
            raise ProviderError(
                f"{spec.display_name} answered with JSON instead of an event stream", provider=spec.id
            )
        return self.take(endpoint, data, reasoning_fields)

    def choice_events(self, chunk: dict[str, Any], reasoning_fields: tuple[str, ...]) -> list[ChatEvent]:
        """The events of a chunk's first choice (the answer), noting its finish reason."""
        events: list[ChatEvent] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0):  # only the first choice is the answer
                continue
            delta = choice.get("delta")
            if delta is None and "message" in choice:  # a whole answer's choice
                delta = _message_as_delta(choice["message"])
            if delta:
                self.delta_events(delta, reasoning_fields, events)
            reason = choice.get("finish_reason")
            if reason:
                self.finish = reason
        return events

    def delta_events(
        self, delta: dict[str, Any], reasoning_fields: tuple[str, ...], events: list[ChatEvent]
    ) -> None:
        """One choice delta's reasoning, text and tool-call events, in that order, added to ``events``."""
        for name in reasoning_fields:
            text = delta.get(name)
            if text:
                piece = self.answer.add_reasoning(text)
                if piece is not None:
                    events.append(piece)
        text = delta.get("content")
        if text:
            events.append(TextDelta(text))
        refusal = delta.get("refusal")
        if refusal:  # a structured-output refusal: the text the caller reads, never dropped
            self.refused = True
            events.append(TextDelta(refusal))
        for fragment in delta.get("tool_calls") or ():
            event = self.feed(fragment)
            if event is not None:
                events.append(event)
        details = delta.get("reasoning_details")
        if isinstance(details, list):
            self.add_details(details)


class OpenAIAdapter(AccountCalls):
    """Chat completions over SSE; stateless."""

    async def stream_chat(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        params: ChatParams,
        timeout: float | None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield text, reasoning and tool-call deltas, then one ``Finished`` (see ``adapters.base``)."""
        spec = endpoint.spec
        url = endpoint.base_url.rstrip("/") + "/chat/completions"
        answer = Answer(params.include_reasoning)
        calls = _Calls(answer, params.model)
        reasoning_fields = spec.reasoning_fields
        with unexpected_shapes(spec):
            body = build_body(endpoint, params)
            async with EventStream(http, endpoint, url, body, timeout, json_answer=True) as events:
                async for event in events:
                    if event is READ_END:
                        yield FLUSH
                        continue
                    data = event.data
                    if data == "[DONE]":
                        break
                    if not data:
                        continue
                    if event.event == JSON_ANSWER:  # the whole answer, not streamed: complete
                        for piece in calls.take_whole(endpoint, data, reasoning_fields):
                            yield piece
                        break
                    for piece in calls.take(endpoint, data, reasoning_fields):  # the chunk dies in there
                        yield piece
                else:
                    raise UpstreamStreamTruncated(
                        f"{spec.display_name} ended the stream without [DONE]"
                        + (" in the middle of an event" if events.cut else ""),
                        provider=spec.id,
                    )
        # No finish_reason at all is "not reported" (UNSPECIFIED); one we do not know is OTHER.
        reason = (
            FINISH_REASONS.get(calls.finish, FinishReason.OTHER) if calls.finish else FinishReason.UNSPECIFIED
        )
        if calls.refused:
            reason = FinishReason.CONTENT_FILTER
        elif reason is FinishReason.STOP and answer.call_count:
            reason = FinishReason.TOOL_CALLS  # "stop" after a forced named call (OpenAI), or any (old Ollama)
        yield Finished(
            reason,
            calls.usage,
            calls.model,
            calls.response_id,
            answer.tool_calls(),
            answer.reasoning,
            calls.state(spec.id),
        )
