"""Ollama's native chat wire format (``/api/chat``, newline-delimited JSON).

Spoken where the registry's ``native_format`` says so: at a base URL whose path
does not end in ``/v1`` (``ProviderSpec.wire_format_at``). ``api_root`` is the base
URL when its path ends in ``/api``, else the base URL + ``/api``; chats go to
``POST {root}/chat`` with ``stream: true`` always, key probes and model listings
to ``GET {root}/tags``.

Requests (Ollama's ``api.ChatRequest``): ``messages`` with role
system/user/assistant/tool and a ``content`` string; images as base64 strings (the
data only, no ``data:`` prefix) in ``images`` (http(s) URLs are refused by the
registry, ``image_urls = false``; PDFs cannot be sent: ``CapabilityUnsupported``);
assistant ``tool_calls`` as ``{"id", "type": "function", "function": {"index",
"name", "arguments": <object>}}``; a tool result as role ``tool`` with the called
tool's ``tool_name`` (found from the earlier assistant call with its
``tool_call_id``; newer servers also read ``tool_call_id``). Sampling goes in
``options`` (``temperature``, ``top_p``, ``num_predict``, ``stop``), ``tools`` in
the OpenAI function shape, structured output in ``format`` (a JSON schema, or
``"json"`` for any JSON object), reasoning in ``think`` (the effort ``"low"`` /
``"medium"`` / ``"high"`` as given, else ``true`` for a budget or a request for the
reasoning text, as Ollama's own OpenAI middleware maps ``reasoning_effort``).
Ollama has no ``tool_choice``: ``none`` sends no tools, the other modes are
left to the model (as its ``/v1`` endpoint ignores them).

Answers (``api.ChatResponse``), one JSON object per line: ``message.content`` is
answer text, ``message.thinking`` reasoning (never answer text), and
``message.tool_calls`` arrive whole, several per line at times, with
``arguments`` as an object (serialised compactly to the call's JSON text) and,
from newer servers, an ``id`` (otherwise a stable ``call_`` id is made from the
answer's ``created_at``, the call's position, name and arguments). The line with
``"done": true`` ends the answer: ``done_reason`` ``stop`` (or none, from servers
older than the field) is STOP, or TOOL_CALLS when calls were made, ``length`` is
LENGTH, anything else (``load``, ``unload``...) OTHER; ``prompt_eval_count`` is
the input and ``eval_count`` the output (both are left out when zero, so a done
line with neither reports no usage: ``usage_reported=false``). An ``{"error": ...}``
line ends the stream with the mapped error; a body that ends without a done line
is ``UpstreamStreamTruncated``. A server that answers one whole JSON object instead
of a stream (``application/json``) gives the same events, read as its one line.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from llm_service.adapters.account import AccountCalls
from llm_service.adapters.assembly import Answer, stable_call_id
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
    Usage,
)
from llm_service.adapters.errors import from_stream_error, unexpected_shapes
from llm_service.adapters.exchange import JSON_ANSWER, EventStream, load_event
from llm_service.adapters.readends import FLUSH, READ_END
from rmllm_common.errors import CapabilityUnsupported, ProviderError, UpstreamStreamTruncated

FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
_COMPACT = (",", ":")


def api_root(base_url: str) -> str:
    """The native API's root for a base URL: itself when its path ends in ``/api``, else ``.../api``."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/api"):
        path += "/api"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _images(message: Message, index: int, provider: str) -> list[str]:
    """The message's images as base64 data; a document cannot be sent to Ollama."""
    images: list[str] = []
    for part_index, part in enumerate(message.parts):
        path = f"messages[{index}].parts[{part_index}]"
        if isinstance(part, DocumentPart):
            raise CapabilityUnsupported(
                f"{path}.document: Ollama's chat API takes no documents; send the text instead",
                provider=provider,
                metadata={"field": f"{path}.document"},
            )
        if isinstance(part, ImagePart):
            inline = part.inline()
            if inline is None:
                raise CapabilityUnsupported(
                    f"{path}.image.url: Ollama does not fetch image URLs; send the image's bytes instead",
                    provider=provider,
                    metadata={"field": f"{path}.image.url"},
                )
            images.append(base64.b64encode(inline[1]).decode())
    return images


def message_body(message: Message, index: int, names: dict[str, str], provider: str) -> dict[str, Any]:
    """One message in ``api.Message`` form (``names``: tool names by call id, so far)."""
    body: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.role == "tool":
        name = names.get(message.tool_call_id, "")
        if name:
            body["tool_name"] = name
        if message.tool_call_id:
            body["tool_call_id"] = message.tool_call_id
        return body
    if message.role == "assistant" and message.tool_calls:
        calls = []
        for position, call in enumerate(message.tool_calls):
            names[call.id] = call.name
            function = {"index": position, "name": call.name, "arguments": json.loads(call.arguments or "{}")}
            calls.append({"id": call.id, "type": "function", "function": function})
        body["tool_calls"] = calls
    images = _images(message, index, provider)
    if images:
        body["images"] = images
    return body


def _options(params: ChatParams) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params.temperature is not None:
        options["temperature"] = params.temperature
    if params.top_p is not None:
        options["top_p"] = params.top_p
    if params.max_tokens is not None:
        options["num_predict"] = params.max_tokens
    if params.stop:
        options["stop"] = list(params.stop)
    return options


def _tools(params: ChatParams, body: dict[str, Any]) -> None:
    choice = params.tool_choice
    if not params.tools or (choice is not None and choice.mode == "none" and not choice.name):
        return
    functions = []
    for tool in params.tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = tool.schema()
        functions.append({"type": "function", "function": function})
    body["tools"] = functions


def build_body(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    """The JSON request body for a chat (``api.ChatRequest``)."""
    names: dict[str, str] = {}
    body: dict[str, Any] = {
        "model": params.model,
        "messages": [message_body(m, i, names, endpoint.spec.id) for i, m in enumerate(params.messages)],
        "stream": True,
    }
    _tools(params, body)
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.schema is not None:
        body["format"] = fmt.schema
    elif fmt is not None and fmt.type in ("json_object", "json_schema"):
        body["format"] = "json"
    reasoning = params.reasoning
    if reasoning is not None:
        body["think"] = reasoning.effort or True
    options = _options(params)
    if options:
        body["options"] = options
    return body


def _usage(done: dict[str, Any]) -> Usage:
    """The done line's counts; not reported when it carries neither."""
    if "prompt_eval_count" not in done and "eval_count" not in done:
        return NOT_REPORTED
    prompt = int(done.get("prompt_eval_count") or 0)
    output = int(done.get("eval_count") or 0)
    return Usage(prompt, output, prompt + output)


@dataclass
class _Reading:
    """What one stream has told so far."""

    answer: Answer
    model: str
    created: str = ""  # the first line's created_at: what stable call ids are made from
    started: bool = False
    done: bool = False
    finish: FinishReason = FinishReason.OTHER
    usage: Usage = NOT_REPORTED

    def line(self, chunk: dict[str, Any]) -> list[ChatEvent]:
        """One ``api.ChatResponse`` line: its reasoning, text and tool-call events, in that order."""
        if not self.started:
            self.started = True
            self.model = chunk.get("model") or self.model
            self.created = str(chunk.get("created_at") or "")
        events: list[ChatEvent] = []
        message = chunk.get("message") or {}
        piece = self.answer.add_reasoning(message.get("thinking") or "")
        if piece is not None:
            events.append(piece)
        text = message.get("content")
        if text:
            events.append(TextDelta(text))
        for call in message.get("tool_calls") or ():
            events.append(self.call(call))
        if chunk.get("done") is True:
            self.done = True
            reason = chunk.get("done_reason") or "stop"
            self.finish = FINISH_REASONS.get(reason, FinishReason.OTHER)
            self.usage = _usage(chunk)
        return events

    def call(self, call: dict[str, Any]) -> ChatEvent:
        """A whole tool call: its one delta, the arguments object as compact JSON text."""
        function = call.get("function") or {}
        name = str(function.get("name") or "")
        raw = function.get("arguments")
        arguments = (
            raw
            if isinstance(raw, str)
            else json.dumps({} if raw is None else raw, ensure_ascii=False, separators=_COMPACT)
        )
        key = self.answer.call_count
        call_id = str(call.get("id") or "") or stable_call_id(self.created, key, name, arguments)
        return self.answer.start_call(key, call_id, name, arguments)


class OllamaAdapter(AccountCalls):
    """Ollama's ``/api/chat`` over NDJSON; stateless."""

    def probe_url(self, endpoint: Endpoint) -> str:
        """``GET {root}/tags``: lists the local models, needs no key, costs nothing."""
        return api_root(endpoint.base_url) + "/tags"

    def models_url(self, endpoint: Endpoint) -> str:
        """``GET {root}/tags`` (``{"models": [{"name", "model", ...}]}``)."""
        return api_root(endpoint.base_url) + "/tags"

    async def stream_chat(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        params: ChatParams,
        timeout: float | None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield text, reasoning and tool-call deltas, then one ``Finished`` (see ``adapters.base``)."""
        spec = endpoint.spec
        url = api_root(endpoint.base_url) + "/chat"
        reading = _Reading(Answer(params.include_reasoning), params.model)
        with unexpected_shapes(spec):
            body = build_body(endpoint, params)
            async with EventStream(
                http, endpoint, url, body, timeout, json_answer=True, ndjson=True
            ) as events:
                async for event in events:
                    if event is READ_END:
                        yield FLUSH
                        continue
                    if not event.data:
                        continue
                    chunk = load_event(endpoint, event.data)
                    if chunk.get("error"):
                        raise from_stream_error(spec, chunk, endpoint.api_key.reveal())
                    if event.event == JSON_ANSWER and chunk.get("done") is not True:
                        raise ProviderError(
                            f"{spec.display_name} answered with JSON that is no chat answer", provider=spec.id
                        )
                    for out in reading.line(chunk):
                        yield out
                    if reading.done:
                        break
        if not reading.done:
            raise UpstreamStreamTruncated(
                f"{spec.display_name} ended the stream without its done line"
                + (" in the middle of a line" if events.cut else ""),
                provider=spec.id,
            )
        calls = reading.answer.tool_calls()
        finish = reading.finish
        if calls and finish is FinishReason.STOP:
            finish = FinishReason.TOOL_CALLS  # Ollama says "stop" after tool calls
        yield Finished(finish, reading.usage, reading.model, "", calls, reading.answer.reasoning)
