"""Synthetic provider answers in each wire format, for requests no transcript was set for.

``stream_events`` builds a streamed answer event by event (so a "slow stream" can
pause between events), ``unary_body`` the non-streamed JSON answer, both shaped
like the real providers' and carrying the requested model. ``fail_after`` ends a
stream with the format's mid-stream error event instead of its end. Token counts
are deterministic: input is the request text's length / 4, output the number of
pieces, so tests can assert them.
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_PIECES = ("Hello", " from", " the", " fake", " provider", ".")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def input_tokens(request: Any) -> int:
    """A deterministic prompt token count for a request body (chars / 4, at least 1)."""
    text = (
        json.dumps(request.get("messages") or request.get("contents") or "")
        if isinstance(request, dict)
        else ""
    )
    return max(1, len(text) // 4)


def _openai(model: str, pieces: tuple[str, ...], inp: int, fail_after: int | None) -> list[bytes]:
    base = {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion.chunk",
        "created": 1746720000,
        "model": model,
    }
    events = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    for i, piece in enumerate(pieces):
        if fail_after is not None and i == fail_after:
            error = {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "code": 500,
            }
            return [b"data: " + _dumps(e) + b"\n\n" for e in events] + [
                b"data: " + _dumps({"error": error}) + b"\n\n"
            ]
        events.append({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": inp, "completion_tokens": len(pieces), "total_tokens": inp + len(pieces)}
    events.append({**base, "choices": [], "usage": usage})
    return [b"data: " + _dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _anthropic(model: str, pieces: tuple[str, ...], inp: int, fail_after: int | None) -> list[bytes]:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"

    message: dict[str, Any] = {
        "id": "msg_fake0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": inp, "output_tokens": 1},
    }
    out = [
        ev("message_start", {"type": "message_start", "message": message}),
        ev(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ev("ping", {"type": "ping"}),
    ]
    for i, piece in enumerate(pieces):
        if fail_after is not None and i == fail_after:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return [*out, ev("error", error)]
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        out.append(ev("content_block_delta", delta))
    out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(
        ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(pieces)},
            },
        )
    )
    out.append(ev("message_stop", {"type": "message_stop"}))
    return out


def _gemini_chunk(
    model: str, text: str | None, inp: int, out: int | None, finish: str | None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"} if text else {"role": "model"}
    }
    if finish:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    usage: dict[str, Any] = {"promptTokenCount": inp, "totalTokenCount": inp + (out or 0)}
    if out is not None:
        usage["candidatesTokenCount"] = out
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "fakeRespId0001",
    }


def _gemini(model: str, pieces: tuple[str, ...], inp: int, fail_after: int | None) -> list[bytes]:
    def ev(data: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ": ")).encode() + b"\r\n\r\n"

    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        if fail_after is not None and i == fail_after:
            error = {
                "error": {
                    "code": 503,
                    "message": "The model is overloaded. Please try again later.",
                    "status": "UNAVAILABLE",
                }
            }
            return [*out, ev(error)]
        last = i == len(pieces) - 1
        out.append(
            ev(_gemini_chunk(model, piece, inp, len(pieces) if last else None, "STOP" if last else None))
        )
    if not pieces:
        out.append(ev(_gemini_chunk(model, None, inp, 0, "STOP")))
    return out


_OLLAMA_CREATED = "2025-05-08T14:22:00.123456Z"


def _ollama_done(model: str, text: str, inp: int, out: int) -> dict[str, Any]:
    """Ollama's last line (``api.ChatResponse`` with ``done`` and its ``Metrics``)."""
    return {
        "model": model,
        "created_at": _OLLAMA_CREATED,
        "message": {"role": "assistant", "content": text},
        "done_reason": "stop",
        "done": True,
        "total_duration": 912345678,
        "load_duration": 12345678,
        "prompt_eval_count": inp,
        "prompt_eval_duration": 45678901,
        "eval_count": out,
        "eval_duration": 765432109,
    }


def _ollama(model: str, pieces: tuple[str, ...], inp: int, fail_after: int | None) -> list[bytes]:
    """Ollama's native /api/chat stream: one JSON object per line."""
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        if fail_after is not None and i == fail_after:
            return [
                *out,
                _dumps({"error": "an error was encountered while running the model: unexpected EOF"}) + b"\n",
            ]
        line = {
            "model": model,
            "created_at": _OLLAMA_CREATED,
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        out.append(_dumps(line) + b"\n")
    out.append(_dumps(_ollama_done(model, "", inp, len(pieces))) + b"\n")
    return out


_STREAMS = {"openai": _openai, "anthropic": _anthropic, "gemini": _gemini, "ollama": _ollama}


def stream_events(
    wire_format: str,
    model: str,
    request: Any,
    pieces: tuple[str, ...] = DEFAULT_PIECES,
    fail_after: int | None = None,
) -> list[bytes]:
    """A streamed answer, one bytes object per SSE event (per line for Ollama's NDJSON)."""
    return _STREAMS[wire_format](model, pieces, input_tokens(request), fail_after)


def unary_body(
    wire_format: str, model: str, request: Any, pieces: tuple[str, ...] = DEFAULT_PIECES
) -> dict[str, Any]:
    """The non-streamed JSON answer."""
    inp, text, n = input_tokens(request), "".join(pieces), len(pieces)
    if wire_format == "openai":
        return {
            "id": "chatcmpl-fake0001",
            "object": "chat.completion",
            "created": 1746720000,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": inp, "completion_tokens": n, "total_tokens": inp + n},
        }
    if wire_format == "ollama":
        return _ollama_done(model, text, inp, n)
    if wire_format == "anthropic":
        return {
            "id": "msg_fake0001",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": inp, "output_tokens": n},
        }
    return _gemini_chunk(model, text, inp, n, "STOP")
