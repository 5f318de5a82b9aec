"""One pipelined Redis connection per process: the commands of one event-loop tick go out together.

redis-py's asyncio client costs about 100 µs of CPU per command whatever the
command (packing, the connection pool, an ``asyncio.timeout`` per call, a write
and a read per command; docs/PERFORMANCE.md). The shared limits send one small
script call per Chat, so that overhead was most of what Redis added. This client
keeps one connection and pipelines on it:

- a command is encoded (RESP) into the connection's write buffer and answered
  through a future; the buffer is written once per loop tick, so the calls that
  arrive together cost one ``send`` (auto-pipelining);
- replies come back in order and are parsed by hiredis's compiled reader (the
  ``redis[hiredis]`` dependency), each resolving the oldest waiting future;
- one timer per connection, not one per call, enforces the reply timeout: a
  reply later than ``timeout`` seconds fails the connection and every command
  waiting on it, and the next command reconnects;
- a caller that is cancelled only drops its reply (the connection stays in step).

Errors are redis-py's (``ConnectionError``, ``TimeoutError``, ``ResponseError``,
``NoScriptError``), so callers treat both clients alike. URLs are parsed by
redis-py (``redis://``, ``rediss://``, ``unix:///path``, with password, username and
db, in the URL or as query options), and a ``rediss://`` URL's ``ssl_*`` options
mean what they mean to redis-py (``tls_context``); options the client would
ignore (unknown ``ssl_*`` ones, ``ssl_*`` without ``rediss://``) are refused.
Scripts are called by SHA (``EVALSHA``), loaded with ``EVAL`` on ``NOSCRIPT`` (a
restarted or flushed Redis).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ssl
from collections.abc import Sequence
from typing import Any, Final, cast

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


def encode(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Pipe(asyncio.Protocol):
    """The connection: a write buffer flushed once a tick, and the futures awaiting replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._buffer: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watching = False
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's (the LLM service's loop) does not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.lost is not None:
            future.set_exception(RedisConnectionError(f"connection to redis lost: {self.lost}"))
            return future
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(command)
        self._waiting.append((future, self._loop.time()))
        if not self._watching:
            self._watching = True
            self._loop.call_later(self._timeout, self._watch)
        return future

    def _flush(self) -> None:
        if self._buffer and self._transport is not None and self.lost is None:
            self._transport.write(b"".join(self._buffer))
        self._buffer.clear()

    def _watch(self) -> None:
        """The reply timeout: the oldest waiting command must be answered within it."""
        self._watching = False
        if not self._waiting or self.lost is not None:
            return
        overdue = self._waiting[0][1] + self._timeout - self._loop.time()
        if overdue <= 0:
            self._fail(RedisTimeoutError(f"redis did not answer within {self._timeout}s"))
            return
        self._watching = True
        self._loop.call_later(overdue, self._watch)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self._waiting:
                self._fail(RedisConnectionError("redis sent a reply nobody asked for"))
                return
            future, _sent = self._waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                error = NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
                future.set_exception(error)
            else:
                future.set_result(reply)

    def _fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        if self._transport is not None:
            self._transport.abort()
        self._drop(error)

    def _drop(self, error: BaseException) -> None:
        self._buffer.clear()
        while self._waiting:
            future, _sent = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        error = self.lost or RedisConnectionError(f"connection to redis lost: {exc or 'closed'}")
        self.lost = error
        self._drop(error)

    def close(self) -> None:
        if self.lost is None:
            self.lost = RedisConnectionError("the client was closed")
        if self._transport is not None:
            self._transport.close()
        self._drop(self.lost)


class Script:
    """A Lua script called by its SHA, sent in full when Redis does not know it yet."""

    __slots__ = ("_client", "body", "sha")

    def __init__(self, client: PipelinedRedis, body: str) -> None:
        self._client = client
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body, usedforsecurity=False).hexdigest().encode()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self._client.execute(b"EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._client.execute(b"EVAL", self.body, len(keys), *keys, *args)


_CERT_REQS: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TLS_OPTIONS: Final = frozenset(
    [
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_ciphers",
    ]
)


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS of a ``rediss://`` URL, from the ``ssl_*`` options redis-py's ``SSLConnection`` reads.

    As redis-py: the server is verified (``ssl_cert_reqs``: ``required``, ``optional``
    or ``none``), and so is its host name unless ``ssl_check_hostname=false`` (redis-py's
    default since 6); a client certificate is ``ssl_certfile`` and ``ssl_keyfile``
    (``ssl_password`` unlocks the key); ``ssl_ciphers`` limits the ciphers. Unlike
    redis-py, CAs given (``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_ca_data``) replace
    the system's instead of adding to them. Any other ``ssl_*`` option is refused.
    """
    unknown = sorted(name for name in options if name.startswith("ssl_") and name not in _TLS_OPTIONS)
    if unknown:
        raise ValueError(f"unsupported redis URL options: {', '.join(unknown)}")
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ValueError("ssl_cert_reqs must be none, optional or required")
    context = ssl.create_default_context(
        cafile=options.get("ssl_ca_certs"),
        capath=options.get("ssl_ca_path"),
        cadata=options.get("ssl_ca_data"),
    )
    context.check_hostname = reqs != "none" and options.get("ssl_check_hostname", True)
    context.verify_mode = _CERT_REQS[reqs]
    if options.get("ssl_keyfile") and not options.get("ssl_certfile"):
        raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
    if options.get("ssl_certfile"):
        context.load_cert_chain(
            options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password")
        )
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    return context


class PipelinedRedis:
    """Commands on one auto-pipelined connection, reconnected on the next command after a failure."""

    def __init__(self, url: str, *, timeout: float, connect_timeout: float | None = None) -> None:
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._connect_timeout = connect_timeout or timeout
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "localhost")
        self._port: int = int(options.get("port", 6379))
        self._ssl: ssl.SSLContext | None = None
        if options.get("connection_class") is SSLConnection:
            self._ssl = tls_context(options)
        elif any(name.startswith("ssl_") for name in options):
            raise ValueError("the redis URL has ssl_* options but no TLS: use rediss://")
        elif options.get("connection_class") is UnixDomainSocketConnection and not self._path:
            raise ValueError("a unix:// redis URL needs the socket's path: unix:///run/redis.sock")
        elif options.get("connection_class") not in (None, UnixDomainSocketConnection):
            raise ValueError("unsupported redis connection class")
        self._hello: list[bytes] = []
        if options.get("password"):
            user = options.get("username")
            auth = [b"AUTH", user, options["password"]] if user else [b"AUTH", options["password"]]
            self._hello.append(encode(auth))
        if int(options.get("db", 0) or 0):
            self._hello.append(encode([b"SELECT", int(options["db"])]))
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future[_Pipe] | None = None

    def register_script(self, body: str) -> Script:
        return Script(self, body)

    async def execute(self, *args: Arg) -> Any:
        """Send one command (in this tick's pipeline) and await its reply."""
        pipe = self._pipe
        if pipe is None or pipe.lost is not None:
            pipe = await self._connected()
        return await pipe.send(encode(args))

    async def zrem(self, key: str, *members: Arg) -> Any:
        return await self.execute(b"ZREM", key, *members)

    async def _connected(self) -> _Pipe:
        connecting = self._connecting
        if connecting is None:  # one connection attempt, shared by the callers of this moment
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connection_attempted)
        return await asyncio.shield(connecting)

    def _connection_attempted(self, attempt: asyncio.Future[_Pipe]) -> None:
        if self._connecting is attempt:
            self._connecting = None
        if not attempt.cancelled():
            attempt.exception()  # retrieved here, whether or not a caller still waits for it

    async def _connect(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        timeout = self._timeout

        def factory() -> _Pipe:
            return _Pipe(loop, timeout)

        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    _, pipe = await loop.create_unix_connection(factory, self._path)
                else:
                    _, pipe = await loop.create_connection(
                        factory,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl else None,
                    )
                try:
                    for command in self._hello:
                        await pipe.send(command)
                except BaseException:
                    pipe.close()
                    raise
        except TimeoutError as exc:
            raise RedisTimeoutError(f"connecting to redis timed out after {self._connect_timeout}s") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
        self._pipe = pipe
        return pipe

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
            self._connecting = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
