"""Recorded-style provider transcripts: the exact bytes a provider sends, and what they mean.

Each transcript is two files under ``transcripts/``: ``NAME.sse`` (an event
stream) or ``NAME.ndjson`` (Ollama's native newline-delimited JSON) holds the
response body byte for byte (comments, pings, CRLFs and all), ``NAME.json`` its
metadata: ``provider`` (registry id), ``description`` (the trap it covers),
``base_path`` (optional: the path of the base URL to call it at, "" for the bare
origin, where the registry's own base path would select another wire format),
``status``, ``headers``, and either ``expect`` (``text``, ``finish_reason`` as a
``FinishReason`` name, ``usage`` as ``[input, output, total]`` or an object of
``Usage`` fields, ``model``, ``response_id``; optionally ``tool_calls`` as
``[id, name, arguments]`` triples, ``reasoning``, ``provider_state`` as the
exact JSON text) or ``expect_error`` (``class``: an ``rmllm_common.errors``
class name, ``text_before``: the text delivered before the error). Optional:
``request`` names a ``requests/NAME.json`` file with the conversation to send
(``fakes.conversations``, with ``params`` changes such as ``model`` and
``reasoning``), whose exact request body is ``requests/NAME.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

DIRECTORY = Path(__file__).parent / "transcripts"

# Where each wire format's end of stream begins: a truncation before this offset
# loses the end marker (Gemini has none: its last chunk carries the finishReason).
_END_MARKERS = {"openai": b"data: [DONE]", "anthropic": b"event: message_stop"}
BODY_SUFFIXES = (".sse", ".ndjson")


@dataclass(frozen=True)
class Transcript:
    """One recorded response."""

    name: str
    provider: str
    description: str
    status: int
    headers: dict[str, str]
    body: bytes
    expect: dict[str, Any] = field(default_factory=dict)
    expect_error: dict[str, Any] = field(default_factory=dict)
    request: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    base_path: str | None = None  # None: the registry's base path for the provider
    body_format: str = "sse"  # "sse" or "ndjson": the body file's suffix

    def end_offset(self, wire_format: str) -> int:
        """The offset where the format's end of stream starts (cut before it: truncated)."""
        marker = _END_MARKERS.get(wire_format)
        if wire_format == "ollama":  # the start of the last line, the one with "done": true
            index = self.body.rstrip(b"\n").rfind(b"\n") + 1
        elif marker is not None:
            index = self.body.rfind(marker)
        else:  # gemini: the start of the last event, the one with the finishReason
            index = self.body.rstrip(b"\r\n").rfind(b"\r\n\r\n") + 4
        if index < 0:
            raise ValueError(f"transcript {self.name} has no end of stream to cut")
        return index


@cache
def load(name: str) -> Transcript:
    """The transcript called ``name``."""
    meta = json.loads((DIRECTORY / f"{name}.json").read_text())
    body = next(
        DIRECTORY / f"{name}{suffix}" for suffix in BODY_SUFFIXES if (DIRECTORY / f"{name}{suffix}").exists()
    )
    return Transcript(
        name=name,
        provider=meta["provider"],
        description=meta["description"],
        status=int(meta.get("status", 200)),
        headers=dict(meta.get("headers", {})),
        body=body.read_bytes(),
        expect=meta.get("expect", {}),
        expect_error=meta.get("expect_error", {}),
        request=meta.get("request", ""),
        params=meta.get("params", {}),
        base_path=meta.get("base_path"),
        body_format=body.suffix[1:],
    )


def names(provider: str | None = None, *, body_format: str | None = None) -> list[str]:
    """Every transcript name (of one provider, with one body format, if given), sorted."""
    found = sorted(p.stem for p in DIRECTORY.glob("*.json"))
    return [
        n
        for n in found
        if (provider is None or load(n).provider == provider)
        and (body_format is None or load(n).body_format == body_format)
    ]
