"""The OpenAI chat-completions wire format (OpenAI, OpenRouter, GitHub Models, xAI, Ollama /v1).

``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage`` always, max_tokens in the registry's
``max_tokens_field``. The stream ends only at a data field that is exactly
``[DONE]`` (the same text inside a content string is just text). Along the way:
comments (OpenRouter's ``: OPENROUTER PROCESSING``) are skipped by the decoder;
chunks with empty ``choices`` (GitHub Models' first event, the usage chunk) carry
no text; a later ``finish_reason: null`` never erases an earlier reason
(OpenRouter sends its usage chunk after the finish chunk); reasoning deltas are not
answer text; an ``{"error": ...}`` event ends the stream with the mapped error.
Usage is the provider's usage chunk, or zeros if it sent none. A body that ends
without ``[DONE]`` is ``UpstreamStreamTruncated``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

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
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


def build_body(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    """The JSON request body for a chat."""
    spec = endpoint.spec
    body: dict[str, Any] = {
        "model": params.model,
        "messages": [{"role": m.role, "content": m.content} for m in params.messages],
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
    return body


def _usage(raw: dict[str, Any]) -> Usage:
    """The usage chunk's counts; output includes reasoning tokens even where
    ``completion_tokens`` leaves them out (xAI), as the provider's total shows."""
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    total = int(raw.get("total_tokens") or 0)
    if total > prompt + completion:
        completion = total - prompt
    return Usage(prompt, completion, total or prompt + completion)


class OpenAIAdapter(AccountCalls):
    """Chat completions over SSE; stateless."""

    async def stream_chat(
        self,
        http: aiohttp.ClientSession,
        endpoint: Endpoint,
        params: ChatParams,
        timeout: float | None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield ``TextDelta``\\ s then one ``Finished``; raise the errors of ``adapters.base``."""
        spec = endpoint.spec
        url = endpoint.base_url.rstrip("/") + "/chat/completions"
        finish = ""
        usage = Usage()
        model = params.model
        response_id = ""
        with unexpected_shapes(spec):
            async with EventStream(http, endpoint, url, build_body(endpoint, params), timeout) as events:
                async for event in events:
                    data = event.data
                    if data == "[DONE]":
                        break
                    if not data:
                        continue
                    chunk = load_event(endpoint, data)
                    if chunk.get("error"):
                        raise from_stream_error(spec, chunk, endpoint.api_key.reveal())
                    for choice in chunk.get("choices") or ():
                        if choice.get("index", 0):  # only the first choice is the answer
                            continue
                        delta = choice.get("delta")
                        if delta:
                            text = delta.get("content")
                            if text:
                                yield TextDelta(text)
                        reason = choice.get("finish_reason")
                        if reason:
                            finish = reason
                    raw_usage = chunk.get("usage")
                    if raw_usage:
                        usage = _usage(raw_usage)
                    if not response_id:
                        response_id = chunk.get("id") or ""
                        model = chunk.get("model") or model
                else:
                    raise UpstreamStreamTruncated(
                        f"{spec.display_name} ended the stream without [DONE]"
                        + (" in the middle of an event" if events.cut else ""),
                        provider=spec.id,
                    )
        yield Finished(FINISH_REASONS.get(finish, FinishReason.OTHER), usage, model, response_id)
