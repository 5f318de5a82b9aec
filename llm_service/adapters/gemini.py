"""The Gemini ``streamGenerateContent`` wire format (SSE).

``POST {base_url}/models/{model}:streamGenerateContent?alt=sse``, the key only in
the ``x-goog-api-key`` header (never in the URL). System messages become
``systemInstruction``, assistant turns role ``model``, sampling goes in
``generationConfig``. Events are separated by CRLF CRLF and there is no end
marker: the stream is complete when a chunk carried a ``finishReason`` (or
``promptFeedback.blockReason``) and the body then ended cleanly; a body that ends
before that is ``UpstreamStreamTruncated``. ``usageMetadata`` is cumulative, so the
last one wins: ``promptTokenCount`` (which includes ``cachedContentTokenCount``,
the cache reads) + ``toolUsePromptTokenCount`` is the input, candidates +
``thoughtsTokenCount`` the output;
parts marked ``thought`` are reasoning, not answer text; a final chunk may carry
no ``parts`` at all.

Gemini gives function calls whole, in one part each, and usually without ids:
the adapter makes a stable one per call (``call_`` + a hash of the response id,
the call's position, name and arguments) unless Gemini sent its own, and on the
next turn maps a tool result's ``tool_call_id`` back to the call's name for the
``functionResponse`` part (consecutive results in one user turn). A
``thoughtSignature`` (on a ``functionCall`` part; of parallel calls only the first
carries one; or on a text part) is kept in ``provider_state`` by call id and sent
back unchanged on the same part. Requests: images and PDFs as ``inlineData``
(http(s) image URLs are not fetched: the registry refuses them), tools as
``functionDeclarations`` with ``parametersJsonSchema``, ``toolConfig``
AUTO/NONE/ANY (``allowedFunctionNames`` for one named tool), JSON output as
``responseMimeType`` + ``responseJsonSchema``, reasoning as ``thinkingConfig``
(``thinkingBudget`` from the budget or the effort, ``includeThoughts``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

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
from llm_service.adapters.exchange import EventStream, load_event
from llm_service.adapters.readends import FLUSH, READ_END
from rmllm_common.errors import UpstreamStreamTruncated

FINISH_REASONS = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "IMAGE_RECITATION": FinishReason.CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": FinishReason.OTHER,
}


def model_path(model: str) -> str:
    """``models/{model}`` with the model id escaped (a leading ``models/`` is accepted)."""
    return "models/" + quote(model.removeprefix("models/"), safe="-._~")


THINKING_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def _inline(mime: str, data: bytes) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}


def _user_parts(message: Message) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in message.content_parts():
        if isinstance(part, TextPart):
            parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            inline = part.inline()
            if inline is not None:
                parts.append(_inline(*inline))
        elif isinstance(part, DocumentPart):
            parts.append(_inline(part.mime_type, part.data))
    return parts


def _model_parts(message: Message, index: int) -> list[dict[str, Any]]:
    state = decode_state(message.provider_state, "gemini", f"messages[{index}].provider_state")
    signatures: dict[str, str] = state.get("calls") or {}
    native: list[str] = state.get("native_ids") or []
    parts: list[dict[str, Any]] = []
    text = message.text()
    if text:
        part: dict[str, Any] = {"text": text}
        if state.get("text"):
            part["thoughtSignature"] = state["text"]
        parts.append(part)
    for call in message.tool_calls:
        function: dict[str, Any] = {"name": call.name, "args": json.loads(call.arguments or "{}")}
        if call.id in native:
            function["id"] = call.id
        part = {"functionCall": function}
        if call.id in signatures:
            part["thoughtSignature"] = signatures[call.id]
        parts.append(part)
    return parts


def _function_response(message: Message, names: dict[str, str], native: set[str]) -> dict[str, Any]:
    text = message.text()
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    response = value if isinstance(value, dict) else {"result": value}
    function: dict[str, Any] = {"name": names.get(message.tool_call_id, ""), "response": response}
    if message.tool_call_id in native:
        function["id"] = message.tool_call_id
    return {"functionResponse": function}


def _contents(params: ChatParams) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    native: set[str] = set()
    contents: list[dict[str, Any]] = []
    for index, message in enumerate(params.messages):
        if message.role == "system":
            continue
        if message.role == "assistant":
            for call in message.tool_calls:
                names[call.id] = call.name
            state = decode_state(message.provider_state, "gemini", f"messages[{index}].provider_state")
            native.update(state.get("native_ids") or [])
            contents.append({"role": "model", "parts": _model_parts(message, index)})
            continue
        parts = (
            [_function_response(message, names, native)] if message.role == "tool" else _user_parts(message)
        )
        previous = contents[-1] if contents else None
        if previous is not None and previous["role"] == "user" and message.role == "tool":
            previous["parts"].extend(parts)  # parallel results answer in one turn, in order
        else:
            contents.append({"role": "user", "parts": parts})
    return contents


def _tools(params: ChatParams, body: dict[str, Any]) -> None:
    if params.tools:
        declarations = []
        for tool in params.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters is not None:
                declaration["parametersJsonSchema"] = tool.parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
    choice = params.tool_choice
    if choice is not None:
        config: dict[str, Any] = {"mode": "ANY" if choice.name else _MODES[choice.mode or "auto"]}
        if choice.name:
            config["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": config}


def _generation_config(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if params.temperature is not None:
        config["temperature"] = params.temperature
    if params.max_tokens is not None:
        config["maxOutputTokens"] = params.max_tokens
    if params.top_p is not None:
        config["topP"] = params.top_p
    if params.stop:
        config["stopSequences"] = list(params.stop)
    fmt = params.response_format
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema":
            config["responseJsonSchema"] = fmt.schema
    reasoning = params.reasoning
    if reasoning is not None:
        thinking: dict[str, Any] = {}
        budget = reasoning.budget(THINKING_BUDGETS)
        if budget:
            thinking["thinkingBudget"] = budget
        if reasoning.include:
            thinking["includeThoughts"] = True
        if thinking:
            config["thinkingConfig"] = thinking
    return config


def build_body(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    """The JSON request body for a chat."""
    body: dict[str, Any] = {"contents": _contents(params)}
    system = [{"text": m.text()} for m in params.messages if m.role == "system"]
    if system:
        body["systemInstruction"] = {"parts": system}
    _tools(params, body)
    config = _generation_config(endpoint, params)
    if config:
        body["generationConfig"] = config
    return body


def _usage(raw: dict[str, Any]) -> Usage:
    # the tool-use prompt (what a server-side tool such as Google Search fed back to
    # the model) is input billed on top of promptTokenCount, and inside totalTokenCount
    prompt = int(raw.get("promptTokenCount") or 0) + int(raw.get("toolUsePromptTokenCount") or 0)
    thoughts = int(raw.get("thoughtsTokenCount") or 0)
    output = int(raw.get("candidatesTokenCount") or 0) + thoughts
    return Usage(
        prompt,
        output,
        int(raw.get("totalTokenCount") or prompt + output),
        cache_read_input_tokens=int(raw.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


@dataclass
class _Reading:
    """What one stream has told so far."""

    answer: Answer
    model: str = ""
    response_id: str = ""
    finish: FinishReason | None = None
    usage: Usage = NOT_REPORTED
    signatures: dict[str, str] = field(default_factory=dict)
    native_ids: list[str] = field(default_factory=list)
    text_signature: str = ""

    def chunk(self, chunk: dict[str, Any]) -> list[ChatEvent]:
        """One streamed ``GenerateContentResponse``: the first candidate's events."""
        events: list[ChatEvent] = []
        if not self.response_id:
            self.response_id = chunk.get("responseId") or ""
            self.model = chunk.get("modelVersion") or self.model
        for candidate in chunk.get("candidates") or ():
            if candidate.get("index", 0) != 0:
                continue
            for part in (candidate.get("content") or {}).get("parts") or ():
                out = self.part(part)
                if out is not None:
                    events.append(out)
            reason = candidate.get("finishReason")
            if reason:
                self.finish = FINISH_REASONS.get(reason, FinishReason.OTHER)
        feedback = chunk.get("promptFeedback")
        if feedback and feedback.get("blockReason"):
            self.finish = FinishReason.CONTENT_FILTER
        raw_usage = chunk.get("usageMetadata")
        if raw_usage:
            self.usage = _usage(raw_usage)
        return events

    def part(self, part: dict[str, Any]) -> ChatEvent | None:
        signature = part.get("thoughtSignature") or ""
        call = part.get("functionCall")
        if call is not None:
            name = call.get("name") or ""
            arguments = json.dumps(call.get("args") or {}, ensure_ascii=False, separators=(",", ":"))
            given = call.get("id") or ""
            identifier = given or stable_call_id(self.response_id, self.answer.call_count, name, arguments)
            if given:
                self.native_ids.append(given)
            if signature:
                self.signatures[identifier] = signature
            return self.answer.start_call(self.answer.call_count, identifier, name, arguments)
        text = part.get("text")
        if part.get("thought"):
            return self.answer.add_reasoning(text or "")
        if signature:
            self.text_signature = signature
        return TextDelta(text) if text else None

    def state(self) -> bytes:
        return encode_state(
            "gemini", calls=self.signatures, text=self.text_signature, native_ids=self.native_ids
        )


class GeminiAdapter(AccountCalls):
    """streamGenerateContent over SSE; stateless."""

    async def stream_chat(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        params: ChatParams,
        timeout: float | None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield text, reasoning and tool-call deltas, then one ``Finished`` (see ``adapters.base``)."""
        spec = endpoint.spec
        url = f"{endpoint.base_url.rstrip('/')}/{model_path(params.model)}:streamGenerateContent?alt=sse"
        reading = _Reading(Answer(params.include_reasoning), model=params.model)
        with unexpected_shapes(spec):
            async with EventStream(http, endpoint, url, build_body(endpoint, params), timeout) as events:
                async for event in events:
                    if event is READ_END:
                        yield FLUSH
                        continue
                    if not event.data:
                        continue
                    chunk = load_event(endpoint, event.data)
                    if chunk.get("error"):
                        raise from_stream_error(spec, chunk, endpoint.api_key.reveal())
                    for out in reading.chunk(chunk):
                        yield out
        finish = reading.finish
        if finish is None or events.cut:
            raise UpstreamStreamTruncated(
                f"{spec.display_name} ended the stream before a finish reason"
                if finish is None
                else f"{spec.display_name} ended the stream in the middle of an event",
                provider=spec.id,
            )
        calls = reading.answer.tool_calls()
        if calls and finish is FinishReason.STOP:
            finish = FinishReason.TOOL_CALLS  # Gemini says STOP after function calls
        yield Finished(
            finish,
            reading.usage,
            reading.model,
            reading.response_id,
            calls,
            reading.answer.reasoning,
            reading.state(),
        )
