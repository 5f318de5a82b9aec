"""A hostile provider: an HTTP server that misbehaves in every way a provider can.

``HostileProvider`` serves, on one loopback port, one behaviour per first path
segment; the rest of the path is whatever the adapter appends, so a base URL of
``{origin}/{behaviour}/v1`` works for every wire format (OpenAI, Anthropic and
Gemini chat paths, and the probe/listing GETs). The behaviours:

* ``deltas-fast`` / ``deltas-slow``: a 200 event stream of valid OpenAI deltas that
  never ends (as fast as the client reads, or one every ``slow_interval``);
* ``comments``: a 200 event stream of ``:`` comment lines without end;
* ``one-line``: a 200 event stream that is one ``data:`` line that never ends;
* ``huge-error``: a 500 whose body never ends;
* ``nested-json``: a 200 event stream whose one event is JSON nested 20,000 deep
  (and a GET answered with such JSON);
* ``nested-error``: a 400 whose body is JSON nested 20,000 deep;
* ``redirect``: a 307 (method and body kept) to ``redirect_to`` on another origin;
* ``echo-key``: a 401 (or ``echo_status``) whose message echoes the request's key
  without its first three characters (``sk-``), as an unwary proxy does;
* ``stall``: a 200 with headers, then nothing, with the connection kept open;
* ``silent``: accepts the request and never answers;
* ``gzip-bomb``: a 200 event stream, gzip-encoded, that inflates from about 100 KiB
  to 100 MiB of comment lines;
* ``ok``: for contrast, a well-formed OpenAI stream of ``ok_deltas`` deltas (a
  baseline for tests).

Every request is recorded (behaviour, method, path, headers); ``open_streams``
counts answers still being written, so a test can wait for the server side to
notice that the client closed the connection. Bodies without end stop when the
client goes away or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import zlib
from dataclasses import dataclass, field

from aiohttp import web

BEHAVIOURS = (
    "deltas-fast",
    "deltas-slow",
    "comments",
    "one-line",
    "huge-error",
    "nested-json",
    "nested-error",
    "redirect",
    "echo-key",
    "stall",
    "silent",
    "gzip-bomb",
    "ok",
)
DEPTH = 20_000  # far past any recursion limit, small enough to pass the line limits
_SSE = {"Content-Type": "text/event-stream"}
DELTA = (
    b'data: {"id":"chatcmpl-hostile","object":"chat.completion.chunk","model":"hostile",'
    b'"choices":[{"index":0,"delta":{"content":"all work and no play "},"finish_reason":null}]}\n\n'
)


@dataclass
class HostileRequest:
    """One request the hostile provider received."""

    behaviour: str
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names

    @property
    def api_key(self) -> str:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return self.headers.get("x-api-key") or self.headers.get("x-goog-api-key") or ""


@dataclass
class HostileProvider:
    """``async with HostileProvider() as hostile: hostile.base_url("comments")``."""

    host: str = "127.0.0.1"
    port: int = 0
    slow_interval: float = 0.05
    redirect_to: str = "http://127.0.0.1:9"  # another origin (set it to a recording server)
    echo_status: int = 401  # the status of echo-key's answer (503: a retryable one)
    ok_deltas: int = 3  # deltas of the well-behaved "ok" answer
    requests: list[HostileRequest] = field(default_factory=list)
    open_streams: int = 0
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> HostileProvider:
        # Compressing the bomb takes 0.5 s on a quiet machine and several on a busy one:
        # paid here, not inside a request that a test's call deadline is timing.
        await asyncio.to_thread(_gzip_bomb)
        app = web.Application()
        app.router.add_route("*", "/{behaviour}/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._idle.set()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, behaviour: str, suffix: str = "/v1") -> str:
        """The base URL that makes every request of a provider meet ``behaviour``."""
        assert behaviour in BEHAVIOURS, behaviour
        return f"{self.origin}/{behaviour}{suffix}"

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no answer is being written any more (the client closed every stream)."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        behaviour = request.match_info["behaviour"]
        await request.read()
        record = HostileRequest(
            behaviour, request.method, request.path, {k.lower(): v for k, v in request.headers.items()}
        )
        self.requests.append(record)
        canned = self._canned(request, record)
        if canned is not None:
            return canned
        if behaviour == "silent":
            await self._stopping.wait()
            return web.Response(status=503)
        if behaviour == "ok":
            return web.Response(status=200, body=DELTA * self.ok_deltas + _OK_END, headers=_SSE)
        if behaviour == "gzip-bomb":
            headers = {**_SSE, "Content-Encoding": "gzip"}
            return web.Response(status=200, body=_gzip_bomb(), headers=headers)
        return await self._stream(request, behaviour)

    def _canned(self, request: web.Request, record: HostileRequest) -> web.Response | None:
        """The behaviours answered at once."""
        behaviour = record.behaviour
        if behaviour not in BEHAVIOURS:
            return web.json_response({"error": f"no behaviour {behaviour!r}"}, status=404)
        if behaviour == "redirect":
            location = self.redirect_to + request.path_qs.removeprefix("/redirect")
            return web.Response(status=307, headers={"Location": location})
        if behaviour == "echo-key":
            message = f"Incorrect API key provided: {record.api_key[3:]}. Find your key in your account."
            error = {"message": message, "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=self.echo_status)
        if behaviour == "nested-error" or (behaviour == "nested-json" and request.method == "GET"):
            status = 400 if behaviour == "nested-error" else 200
            return web.Response(status=status, body=_nested(), content_type="application/json")
        return None

    async def _stream(self, request: web.Request, behaviour: str) -> web.StreamResponse:
        status = 500 if behaviour == "huge-error" else 200
        headers = {"Content-Type": "text/plain"} if behaviour == "huge-error" else _SSE
        response = web.StreamResponse(status=status, headers=headers)
        self.open_streams += 1
        self._idle.clear()
        try:
            await response.prepare(request)
            if behaviour == "nested-json":
                await response.write(b"data: " + _nested() + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
                await response.write_eof()
                return response
            if behaviour == "stall":
                await self._stopping.wait()
                return response
            piece = _PIECES[behaviour]
            if behaviour == "one-line":
                await response.write(b"data: ")
            while not self._stopping.is_set():
                await response.write(piece)
                if behaviour == "deltas-slow":
                    await asyncio.sleep(self.slow_interval)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.open_streams -= 1
            if not self.open_streams:
                self._idle.set()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


@functools.cache
def _gzip_bomb() -> bytes:
    """100 MiB of SSE comment lines, gzip-compressed (made once, about 100 KiB)."""
    line = b": " + b"0" * 1022 + b"\n"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    parts = [compressor.compress(line * 1024) for _ in range(100)]
    return b"".join(parts) + compressor.flush()


def _nested() -> bytes:
    """A JSON text nested ``DEPTH`` deep (valid, just deep)."""
    return b'{"error":' + b"[" * DEPTH + b"]" * DEPTH + b"}"


_OK_END = (
    b'data: {"id":"chatcmpl-hostile","object":"chat.completion.chunk","model":"hostile",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
_PIECES = {
    "deltas-fast": DELTA * 64,
    "deltas-slow": DELTA,
    "comments": b": keep-alive, nothing to see here\n" * 256,
    "one-line": b"x" * 16384,
    "huge-error": b"Internal Server Error " * 1024,
}
