"""The Gemini ``streamGenerateContent`` wire format (SSE).

``POST {base_url}/models/{model}:streamGenerateContent?alt=sse``, the key only in
the ``x-goog-api-key`` header (never in the URL). System messages become
``systemInstruction``, assistant turns role ``model``, sampling goes in
``generationConfig``. Events are separated by CRLF CRLF and there is no end
marker: the stream is complete when a chunk carried a ``finishReason`` (or
``promptFeedback.blockReason``) and the body then ended cleanly; a body that ends
before that is ``UpstreamStreamTruncated``. ``usageMetadata`` is cumulative, so the
last one wins (thought tokens count as output); parts marked ``thought`` are not
answer text; a final chunk may carry no ``parts`` at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from llm_service.adapters.account import AccountCalls
from llm_service.adapters.base import (
    ChatEvent,
    ChatParams,
    Endpoint,
    Finished,
    FinishReason,
    TextDelta,
    Usage,
)
from llm_service.adapters.errors import from_stream_error, unexpected_shapes
from llm_service.adapters.exchange import EventStream, load_event
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
    "MALFORMED_FUNCTION_CALL": FinishReason.OTHER,
}
_ROLES = {"user": "user", "assistant": "model"}


def model_path(model: str) -> str:
    """``models/{model}`` with the model id escaped (a leading ``models/`` is accepted)."""
    return "models/" + quote(model.removeprefix("models/"), safe="-._~")


def build_body(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    """The JSON request body for a chat."""
    body: dict[str, Any] = {
        "contents": [
            {"role": _ROLES[m.role], "parts": [{"text": m.content}]}
            for m in params.messages
            if m.role != "system"
        ]
    }
    system = [{"text": m.content} for m in params.messages if m.role == "system"]
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    if params.temperature is not None:
        config["temperature"] = params.temperature
    if params.max_tokens is not None:
        config["maxOutputTokens"] = params.max_tokens
    if params.top_p is not None:
        config["topP"] = params.top_p
    if params.stop:
        config["stopSequences"] = list(params.stop)
    if config:
        body["generationConfig"] = config
    return body


def _usage(raw: dict[str, Any]) -> Usage:
    prompt = int(raw.get("promptTokenCount") or 0)
    output = int(raw.get("candidatesTokenCount") or 0) + int(raw.get("thoughtsTokenCount") or 0)
    return Usage(prompt, output, int(raw.get("totalTokenCount") or prompt + output))


class GeminiAdapter(AccountCalls):
    """streamGenerateContent over SSE; stateless."""

    async def stream_chat(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        params: ChatParams,
        timeout: float | None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield ``TextDelta``\\ s then one ``Finished``; raise the errors of ``adapters.base``."""
        spec = endpoint.spec
        url = f"{endpoint.base_url.rstrip('/')}/{model_path(params.model)}:streamGenerateContent?alt=sse"
        finish: FinishReason | None = None
        usage = Usage()
        model = params.model
        response_id = ""
        with unexpected_shapes(spec):
            async with EventStream(http, endpoint, url, build_body(endpoint, params), timeout) as events:
                async for event in events:
                    if not event.data:
                        continue
                    chunk = load_event(endpoint, event.data)
                    if chunk.get("error"):
                        raise from_stream_error(spec, chunk, endpoint.api_key.reveal())
                    for candidate in chunk.get("candidates") or ():
                        if candidate.get("index", 0) != 0:
                            continue
                        for part in (candidate.get("content") or {}).get("parts") or ():
                            text = part.get("text")
                            if text and not part.get("thought"):
                                yield TextDelta(text)
                        reason = candidate.get("finishReason")
                        if reason:
                            finish = FINISH_REASONS.get(reason, FinishReason.OTHER)
                    feedback = chunk.get("promptFeedback")
                    if feedback and feedback.get("blockReason"):
                        finish = FinishReason.CONTENT_FILTER
                    raw_usage = chunk.get("usageMetadata")
                    if raw_usage:
                        usage = _usage(raw_usage)
                    if not response_id:
                        response_id = chunk.get("responseId") or ""
                        model = chunk.get("modelVersion") or model
        if finish is None or events.cut:
            raise UpstreamStreamTruncated(
                f"{spec.display_name} ended the stream before a finish reason"
                if finish is None
                else f"{spec.display_name} ended the stream in the middle of an event",
                provider=spec.id,
            )
        yield Finished(finish, usage, model, response_id)
