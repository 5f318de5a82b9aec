"""Where one network read of a provider stream ends, told to whoever coalesces its deltas.

StreamChat sends the deltas that arrive in one network read as one gRPC message
(``llm_service.coalescing``). Only the exchange knows where a read ends, and only
the servicer holds deltas back, so the two meet in a ``ReadGauge`` kept in a
context variable of the call's task: the servicer ``attach``\\ es one before it
iterates, an ``EventStream`` created in the same task picks it up. While the
servicer holds deltas (``held``) and the stream has no decoded event left, the
stream hands its adapter ``READ_END`` instead of waiting on the network; the
adapter answers with ``FLUSH`` (an empty text delta, which every consumer already
skips), so the servicer sends what it holds before the next read can wait. No
timer is involved: nothing is held past the read that delivered it. Without a
gauge (Chat, key tests, a scripted adapter) nothing changes.
"""

from __future__ import annotations

from contextvars import ContextVar

from llm_service.adapters.base import TextDelta
from llm_service.sse import SSEEvent


class ReadGauge:
    """One StreamChat's coalescing state, shared with its provider stream."""

    __slots__ = ("attached", "held")

    def __init__(self) -> None:
        self.attached = False  # an EventStream reports read ends to this gauge
        self.held = False  # the servicer holds deltas not yet sent


_gauge: ContextVar[ReadGauge | None] = ContextVar("rmllm_read_gauge", default=None)

READ_END = SSEEvent("", "rmllm-read-end")
"""What an ``EventStream`` yields, instead of waiting, when its read is used up and deltas are held."""

FLUSH = TextDelta("")
"""What an adapter yields on ``READ_END``: send what is held now."""


def attach() -> ReadGauge:
    """A fresh gauge for this task's next provider stream (each gRPC call runs in its own task)."""
    gauge = ReadGauge()
    _gauge.set(gauge)
    return gauge


def current() -> ReadGauge | None:
    """This task's gauge, marked attached (None when nobody coalesces)."""
    gauge = _gauge.get()
    if gauge is not None:
        gauge.attached = True
    return gauge
