"""The Anthropic Messages wire format.

``POST {base_url}/messages`` with the registry's headers (``anthropic-version``)
and ``x-api-key``. System messages go in the top-level ``system``. The API requires
``max_tokens``; the registry must give this format a ``default_max_tokens``, so the
resolved parameters always carry one. Stream events: ``message_start`` (id, model, input tokens),
``content_block_delta`` (only ``text_delta`` is answer text; thinking and
signature deltas are not), ``message_delta`` (``stop_reason``, and
``usage.output_tokens`` as the final total, not an increment), ``message_stop``
(the end marker), ``ping`` anywhere, and ``error`` (e.g. ``overloaded_error``),
which ends the stream with the mapped error even after text went out. A body that
ends without ``message_stop`` is ``UpstreamStreamTruncated``.
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

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


def build_body(endpoint: Endpoint, params: ChatParams) -> dict[str, Any]:
    """The JSON request body for a chat."""
    system = [m.content for m in params.messages if m.role == "system"]
    body: dict[str, Any] = {"model": params.model}
    if params.max_tokens is not None:  # always set: the registry gives this format a default
        body["max_tokens"] = params.max_tokens
    body["messages"] = [{"role": m.role, "content": m.content} for m in params.messages if m.role != "system"]
    body["stream"] = True
    if system:
        body["system"] = "\n\n".join(system)
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    return body


def _input_tokens(usage: dict[str, Any]) -> int:
    """Input tokens including the cached ones (the API counts those separately)."""
    return (
        int(usage.get("input_tokens") or 0)
        + int(usage.get("cache_creation_input_tokens") or 0)
        + int(usage.get("cache_read_input_tokens") or 0)
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
        """Yield ``TextDelta``\\ s then one ``Finished``; raise the errors of ``adapters.base``."""
        spec = endpoint.spec
        url = endpoint.base_url.rstrip("/") + "/messages"
        stop_reason = ""
        input_tokens = output_tokens = 0
        model = params.model
        response_id = ""
        with unexpected_shapes(spec):
            async with EventStream(http, endpoint, url, build_body(endpoint, params), timeout) as events:
                async for event in events:
                    if event.event == "ping" or not event.data:
                        continue
                    payload = load_event(endpoint, event.data)
                    kind = payload.get("type")
                    if kind == "content_block_delta":
                        delta = payload.get("delta") or {}
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            yield TextDelta(delta["text"])
                    elif kind == "message_delta":
                        stop_reason = (payload.get("delta") or {}).get("stop_reason") or stop_reason
                        usage = payload.get("usage") or {}
                        if "output_tokens" in usage:
                            output_tokens = int(usage["output_tokens"] or 0)
                        if "input_tokens" in usage:
                            input_tokens = _input_tokens(usage)
                    elif kind == "message_start":
                        message = payload.get("message") or {}
                        response_id = message.get("id") or ""
                        model = message.get("model") or model
                        usage = message.get("usage") or {}
                        input_tokens = _input_tokens(usage)
                        output_tokens = int(usage.get("output_tokens") or 0)
                    elif kind == "message_stop":
                        break
                    elif kind == "error" or event.event == "error":
                        raise from_stream_error(spec, payload, endpoint.api_key.reveal())
                else:
                    raise UpstreamStreamTruncated(
                        f"{spec.display_name} ended the stream without message_stop"
                        + (" in the middle of an event" if events.cut else ""),
                        provider=spec.id,
                    )
        yield Finished(
            STOP_REASONS.get(stop_reason, FinishReason.OTHER),
            Usage(input_tokens, output_tokens, input_tokens + output_tokens),
            model,
            response_id,
        )
