"""A pure, incremental newline-delimited JSON decoder: bytes in, lines out, no I/O.

Ollama's native API streams ``application/x-ndjson``: one JSON object per line,
each ended by LF. ``feed(chunk)`` accepts whatever bytes the network delivered and
returns, as ``SSEEvent``\\ s (``data`` is the line, so ``EventStream`` and its
limits serve both formats), the lines those bytes completed; a partial line is
buffered until its LF arrives, and bytes are decoded to text only once a line is
complete, so a UTF-8 character split across reads survives. A CR before the LF is
dropped and blank lines are skipped. At a clean end of input, ``end()`` returns the
last line when it came without its LF but is a whole JSON value (Go's
``bufio.Scanner``, which Ollama's own client reads the stream with, yields such a
line too); ``flush()`` then discards anything still held and says whether
something was (the stream was cut mid-line).

The decoder is bounded and linear like ``sse.SSEDecoder``: a partial line is kept
in a ``bytearray`` that only grows by what arrives, and a line longer than
``max_line`` bytes raises ``SSELimitExceeded`` (after dropping what it held).
"""

from __future__ import annotations

import json

from llm_service.sse import UNLIMITED, SSEEvent, SSELimitExceeded

_BOM = b"\xef\xbb\xbf"


class NDJSONDecoder:
    """Turns an NDJSON body's bytes, fed in any split, into one ``SSEEvent`` per line."""

    __slots__ = ("_buffer", "_max_line", "_started")

    def __init__(self, *, max_line: int = UNLIMITED) -> None:
        self._buffer = bytearray()  # the bytes of a line whose LF has not arrived yet
        self._max_line = max_line
        self._started = False  # a BOM is dropped only from the body's start

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume the next bytes; return the lines they completed, in order.

        Raises ``SSELimitExceeded`` when a line passes ``max_line`` bytes.
        """
        if not chunk:
            return []
        if b"\n" not in chunk:  # still inside one line: keep it, scan nothing old
            self._buffer += chunk
            if len(self._buffer) > self._max_line:
                self._overflow()
            return []
        if self._buffer:  # the buffered line ends in this chunk: join once
            self._buffer += chunk
            chunk = bytes(self._buffer)
            self._buffer = bytearray()
        lines = chunk.split(b"\n")
        rest = lines.pop()  # what follows the last LF: a partial line, or b""
        if rest:
            self._buffer = bytearray(rest)
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) > self._max_line:
            self._overflow()
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if len(line) > self._max_line:
            self._overflow()
        if not self._started:
            self._started = True
            line = line.removeprefix(_BOM)
        line = line.strip(b" \t\r")
        return SSEEvent(line.decode("utf-8", "replace")) if line else None

    def end(self) -> list[SSEEvent]:
        """A clean end of input: the last line when it lacks only its LF (a whole JSON value)."""
        held = bytes(self._buffer).strip(b" \t\r")
        if not self._started:
            held = held.removeprefix(_BOM)
        if not held:
            self._buffer = bytearray()
            return []
        try:
            json.loads(held.decode("utf-8"))
        except (ValueError, RecursionError):
            return []  # cut mid-line: kept, so ``flush`` reports it
        self._buffer = bytearray()
        event = self._line(held)
        return [event] if event is not None else []

    def flush(self) -> bool:
        """End of input: discard any unfinished line and reset; True if one was cut short."""
        cut = bool(self._buffer.strip(b" \t\r"))
        self._buffer = bytearray()
        return cut

    def _overflow(self) -> None:
        """Drop everything held (the memory goes at once) and say which limit was passed."""
        self._buffer = bytearray()
        raise SSELimitExceeded(f"a line longer than {self._max_line} bytes")
