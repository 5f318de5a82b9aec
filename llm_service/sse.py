"""A pure, incremental Server-Sent Events decoder: bytes in, events out, no I/O.

Modelled on openai-python's ``_streaming.py`` ``SSEDecoder`` and the WHATWG
event-stream grammar. ``feed(chunk)`` accepts whatever bytes the network
delivered and returns the events those bytes completed; a partial line is
buffered until its line end arrives. CR, LF and CRLF each end a line, even a CRLF
split across two feeds. Bytes are decoded to text only once a line is complete,
so a UTF-8 character split across reads survives. Comment lines (starting with
``:``) are skipped, multi-line ``data`` is joined with ``\\n``, a leading BOM is
dropped. At end of input call ``flush()``: as the spec requires, an event not
closed by an empty line is discarded, and ``flush`` says whether that happened
(the stream was cut mid-event).

The decoder is bounded and linear: a partial line is kept in a ``bytearray`` that
only grows by what arrives (bytes already seen are never rescanned or copied per
feed), a line longer than ``max_line`` bytes or an event whose data passes
``max_event`` characters raises ``SSELimitExceeded`` (after dropping what it held), so a
provider that never sends a line end cannot make it buffer without end.
"""

from __future__ import annotations

from typing import NamedTuple

_LINE_ENDS = (b"\n", b"\r")
_BOM = "\ufeff"
UNLIMITED = 1 << 62


class SSELimitExceeded(ValueError):
    """A line or an event went past the decoder's limit; the text says which."""


class SSEEvent(NamedTuple):
    """One dispatched event. ``event`` is None when the stream named none (a tuple: cheap to make)."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns an event stream's bytes, fed in any split, into ``SSEEvent``\\ s."""

    __slots__ = (
        "_buffer",
        "_data",
        "_data_size",
        "_event",
        "_id",
        "_max_event",
        "_max_line",
        "_retry",
        "_skip_lf",
        "_started",
    )

    def __init__(self, *, max_line: int = UNLIMITED, max_event: int = UNLIMITED) -> None:
        self._buffer = bytearray()  # the bytes of a line whose end has not arrived yet
        self._skip_lf = False  # the last feed ended with CR: a leading LF is its CRLF's second half
        self._started = False  # a BOM is dropped only from the stream's first line
        self._event: str | None = None
        self._data: list[str] = []
        self._data_size = 0
        self._id: str | None = None
        self._retry: int | None = None
        self._max_line = max_line
        self._max_event = max_event

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume the next bytes; return the events they completed, in order.

        Raises ``SSELimitExceeded`` when a line or an event passes its limit.
        """
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\n" not in chunk and b"\r" not in chunk:  # still inside one line: keep it, scan nothing old
            self._buffer += chunk
            if len(self._buffer) > self._max_line:
                self._overflow(f"a line longer than {self._max_line} bytes")
            return []
        if self._buffer:  # the buffered line ends in this chunk: join once
            self._buffer += chunk
            chunk = bytes(self._buffer)
            self._buffer = bytearray()
        lines = self._split(chunk)
        if len(self._buffer) > self._max_line:
            self._overflow(f"a line longer than {self._max_line} bytes")
        return self._lines(lines)

    def _split(self, chunk: bytes) -> list[bytes]:
        """The complete lines of ``chunk``, without their line ends; a partial last line is kept."""
        if b"\r" not in chunk:  # LF only, the common case: split once, no line end to strip
            lines = chunk.split(b"\n")
            rest = lines.pop()  # what follows the last LF: a partial line, or b""
            if rest:
                self._buffer = bytearray(rest)
            return lines
        lines = chunk.splitlines(keepends=True)
        if not lines[-1].endswith(_LINE_ENDS):
            self._buffer = bytearray(lines.pop())
        elif chunk[-1] == 0x0D:
            self._skip_lf = True
        return [line.rstrip(b"\r\n") for line in lines]

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        """The events of complete lines (without their line ends); ``data:`` lines and
        event ends, nearly every line of a stream, are handled inline."""
        events: list[SSEEvent] = []
        max_line = self._max_line
        for line in lines:
            if len(line) > max_line:
                self._overflow(f"a line longer than {max_line} bytes")
            if self._started:
                if line.startswith(b"data: "):  # "data: " is ASCII: the rest decodes on its own
                    self._add_data(line[6:].decode("utf-8", "replace"))
                    continue
                if not line:
                    event = self._dispatch()
                    if event is not None:
                        events.append(event)
                    continue
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def _overflow(self, what: str) -> None:
        """Drop everything held (the memory goes at once) and say which limit was passed."""
        self.flush()
        raise SSELimitExceeded(what)

    def end(self) -> list[SSEEvent]:
        """A clean end of input completes no event: one not closed by an empty line is
        discarded, as the spec requires (``flush`` says whether there was one)."""
        return []

    def flush(self) -> bool:
        """End of input: discard any unfinished event and reset; True if one was cut short."""
        cut = bool(self._buffer) or bool(self._data) or self._event is not None
        self._buffer = bytearray()
        self._skip_lf = False
        self._event = None
        self._data = []
        self._data_size = 0
        self._retry = None
        return cut

    def _line(self, line: str) -> SSEEvent | None:
        if not self._started:
            self._started = True
            if line.startswith(_BOM):
                line = line[1:]
        if line.startswith("data: "):  # the common case first
            self._add_data(line[6:])
            return None
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._add_data(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _add_data(self, value: str) -> None:
        self._data_size += len(value) + 1
        if self._data_size > self._max_event:
            self._overflow(f"an event larger than {self._max_event} characters")
        self._data.append(value)

    def _dispatch(self) -> SSEEvent | None:
        if not self._data and self._event is None and self._retry is None:
            return None
        data = self._data
        event = SSEEvent(data[0] if len(data) == 1 else "\n".join(data), self._event, self._id, self._retry)
        self._event = None
        self._data = []
        self._data_size = 0
        self._retry = None
        return event
