"""Recorded-style provider transcripts: the exact bytes a provider sends, and what they mean.

Each transcript is two files under ``transcripts/``: ``NAME.sse`` holds the
response body byte for byte (comments, pings, CRLFs and all), ``NAME.json`` its
metadata: ``provider`` (registry id), ``description`` (the trap it covers),
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

    def end_offset(self, wire_format: str) -> int:
        """The offset where the format's end of stream starts (cut before it: truncated)."""
        marker = _END_MARKERS.get(wire_format)
        if marker is not None:
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
    return Transcript(
        name=name,
        provider=meta["provider"],
        description=meta["description"],
        status=int(meta.get("status", 200)),
        headers=dict(meta.get("headers", {})),
        body=(DIRECTORY / f"{name}.sse").read_bytes(),
        expect=meta.get("expect", {}),
        expect_error=meta.get("expect_error", {}),
        request=meta.get("request", ""),
        params=meta.get("params", {}),
    )


def names(provider: str | None = None) -> list[str]:
    """Every transcript name (of one provider, if given), sorted."""
    found = sorted(p.stem for p in DIRECTORY.glob("*.json"))
    return [n for n in found if provider is None or load(n).provider == provider]
