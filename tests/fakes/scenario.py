"""What the fake provider does with the next request: a ``Scenario``.

A scenario names a response (a recorded transcript, a canned provider error, a
JSON body, or a synthetic stream in the request's own wire format) and how to
deliver it: write sizes (``chunks``, cycled: ``(1,)`` is byte by byte), a
``delay`` between writes, and a failure: ``truncate_at`` (abort the connection
after N body bytes), ``end_at`` (end the body cleanly after N bytes, so the end
marker is missing), ``stall_at`` (stop writing after N bytes but keep the
connection open), ``hang`` (never answer at all). ``from_dict`` reads the same
fields from the HTTP control API's JSON.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace
from typing import Any

from fakes import transcripts
from fakes.synth import DEFAULT_PIECES


@dataclass(frozen=True)
class Scenario:
    """One scripted answer (see the module docstring for the fields)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # None: synthesise in the request's wire format
    name: str = ""  # a label (the transcript's name) for reports
    error: tuple[str, str] | None = None  # canned (provider, kind), rendered with the request's key
    pieces: tuple[str, ...] = DEFAULT_PIECES
    fail_after: int | None = None  # synthetic stream: the format's error event after this many pieces
    chunks: tuple[int, ...] = ()
    delay: float = 0.0
    truncate_at: int | None = None
    end_at: int | None = None
    stall_at: int | None = None
    hang: bool = False
    route: str | None = None  # "chat" (POST) or "get": only such requests take it; None: any
    times: int = 1  # how many requests a queued scenario answers

    @classmethod
    def transcript(cls, name: str, **changes: Any) -> Scenario:
        """Replay a recorded transcript byte for byte."""
        t = transcripts.load(name)
        return replace(
            cls(status=t.status, headers=t.headers, body=t.body, name=name, route="chat"), **changes
        )

    @classmethod
    def canned(cls, provider: str, kind: str, **changes: Any) -> Scenario:
        """Answer with ``provider``'s real ``kind`` error (see ``fakes.provider_errors.KINDS``)."""
        return replace(cls(error=(provider, kind), name=f"{provider}:{kind}"), **changes)

    @classmethod
    def json(cls, payload: Any, status: int = 200, **changes: Any) -> Scenario:
        """Answer with a JSON body."""
        headers = {"Content-Type": "application/json", **changes.pop("headers", {})}
        return replace(cls(status=status, headers=headers, body=json.dumps(payload).encode()), **changes)

    @classmethod
    def stream(cls, pieces: tuple[str, ...] = DEFAULT_PIECES, **changes: Any) -> Scenario:
        """A synthetic stream in the request's wire format (use ``delay`` for a slow one)."""
        return replace(cls(pieces=tuple(pieces), route="chat"), **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """A scenario from the control API's JSON (same field names; plus ``transcript``,
        ``canned`` ``[provider, kind]``, ``json``, ``body_b64``)."""
        data = dict(data)
        fields: dict[str, Any] = {}
        for name in (
            "status",
            "fail_after",
            "delay",
            "truncate_at",
            "end_at",
            "stall_at",
            "hang",
            "route",
            "times",
        ):
            if name in data:
                fields[name] = data.pop(name)
        if "headers" in data:
            fields["headers"] = dict(data.pop("headers"))
        for name in ("pieces", "chunks"):
            if name in data:
                fields[name] = tuple(data.pop(name))
        if "transcript" in data:
            return cls.transcript(data.pop("transcript"), **fields)
        if "canned" in data:
            provider, kind = data.pop("canned")
            return cls.canned(provider, kind, **fields)
        if "json" in data:
            return cls.json(data.pop("json"), **fields)
        if "body_b64" in data:
            fields["body"] = base64.b64decode(data.pop("body_b64"))
        if data:
            raise ValueError(f"unknown scenario fields: {sorted(data)}")
        return cls(**fields)

    def cut(self) -> int | None:
        """Where the body stops (truncate, end or stall point), if anywhere."""
        points = [p for p in (self.truncate_at, self.end_at, self.stall_at) if p is not None]
        return min(points) if points else None
