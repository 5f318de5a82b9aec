"""What both gRPC servers share: standard services, error translation, lifecycle.

``new_server`` makes a ``grpc.aio`` server with the error interceptor first in the
chain (it also observes every call: request id, trace, metrics hooks, log line), the
standard health service (``SERVING`` for "" and each service name) and
server reflection. ``ErrorInterceptor`` is the one place where an ``RmllmError``
becomes a gRPC status (via ``errors.to_status``) and where an unexpected exception
becomes a generic ``INTERNAL`` with a request id, logged with its traceback, so
servicer methods hold no ``try`` ladders. The status is sent outside the ``except``
block, after the error's traceback chain is dropped (``_released``), so a failed
call leaves no frames behind in reference cycles. It also wraps each method's request
deserializer: bytes that do not decode as the method's message become
``INVALID_ARGUMENT`` / ``MALFORMED_REQUEST`` (gRPC alone would answer ``UNKNOWN``
naming a Python exception). ``run_until_signal`` starts a server,
logs one structured line with its address, and on SIGTERM or SIGINT flips health to
``NOT_SERVING`` and lets in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from rmllm_common import reflection, requestctx
from rmllm_common.errors import Internal, MalformedRequest, RmllmError, Unimplemented, to_status
from rmllm_common.observe import Call, Observer

log = logging.getLogger(__name__)

# Methods of these services are not ours to translate or authenticate.
STANDARD_SERVICE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_standard_method(method: str) -> bool:
    """Health and reflection: open to everyone, never wrapped."""
    return method.startswith(STANDARD_SERVICE_PREFIXES)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: RmllmError) -> None:
    """End the call with the rich status of ``error`` (and the request id, as every answer)."""
    status = rpc_status.to_status(to_status(error))
    metadata = (*status.trailing_metadata, (requestctx.REQUEST_ID_HEADER, requestctx.request_id()))
    await context.abort(status.code, status.details, metadata)


def _unexpected(method: str, exc: BaseException) -> RmllmError:
    if isinstance(exc, NotImplementedError):
        return Unimplemented(f"{method} is not implemented by this server version")
    request_id = requestctx.request_id()
    log.error("unhandled error in %s (request %s)", method, request_id, exc_info=exc)
    return Internal(
        f"internal error; quote request id {request_id} to the operator",
        metadata={"request_id": request_id},
    )


class _Undecodable:
    """What the tolerant deserializer hands the handler instead of raising."""

    __slots__ = ()


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns ``UNDECODABLE`` for bytes it cannot decode."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, RecursionError, bad UTF-8...: all the caller's bytes
            return UNDECODABLE

    return deserialize


def _malformed(method: str) -> MalformedRequest:
    return MalformedRequest(
        f"the request is not a valid {method.rsplit('/', 1)[-1]} message: its bytes could not be "
        "decoded; check that the client was built from the same protos"
    )


def _released(error: RmllmError) -> RmllmError:
    """``error`` without the tracebacks of its chain, so the frames they hold (and the
    buffers in those frames: a provider's answer, an HTTP response) are freed at once
    rather than at the garbage collector's next full pass. Only the status is needed
    from here on; an unexpected error was logged with its traceback already."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


def _outcome(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and reason of a call that ended with ``exc`` outside our error classes."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED, ""
    code = context.code() if isinstance(exc, grpc.aio.AbortError) else None
    if isinstance(code, grpc.StatusCode):
        return code, ""
    return grpc.StatusCode.UNKNOWN, ""


async def _fail(
    observer: Observer,
    call: Call,
    context: grpc.aio.ServicerContext[Any, Any],
    failure: RmllmError,
) -> None:
    """End an observed call with ``failure``'s status (the observer hears of it first)."""
    observer.end(call, failure.code, failure.reason)
    await abort_with(context, _released(failure))


def _interrupted(
    observer: Observer, call: Call, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException
) -> None:
    """A call cancelled, aborted elsewhere, or closed by gRPC: observe how it ended."""
    code, reason = _outcome(context, exc)
    observer.end(call, code, reason)


def _wrap(
    method: str, handler: grpc.RpcMethodHandler[Any, Any], observer: Observer
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` observed (``Observer``) and every exception translated, whatever its kind.

    A unary-response handler (unary-unary, stream-unary) is awaited; a
    streaming-response one (unary-stream, stream-stream) is an async generator
    whose messages are forwarded. Requests are decoded tolerantly: an undecodable
    request (or request message of a stream) is INVALID_ARGUMENT / MALFORMED_REQUEST.
    """

    def checked(request: Any, streamed: bool) -> Any:
        if not streamed:
            if request is UNDECODABLE:
                raise _malformed(method)
            return request

        async def each() -> AsyncIterator[Any]:
            async for item in request:
                if item is UNDECODABLE:
                    raise _malformed(method)
                yield item

        return each()

    def unary_response(inner: Any, streamed: bool) -> Any:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = observer.begin(method, context, False)
            try:
                answer = await inner(checked(request, streamed), context)
            except RmllmError as exc:
                failure = exc
            except (asyncio.CancelledError, grpc.aio.AbortError) as exc:
                _interrupted(observer, call, context, exc)
                raise
            except Exception as exc:
                failure = _unexpected(method, exc)
            else:
                observer.end(call, grpc.StatusCode.OK, "")
                return answer
            await _fail(observer, call, context, failure)

        return behavior

    def stream_response(inner: Any, streamed: bool) -> Any:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            call = observer.begin(method, context, True)
            try:
                async for item in inner(checked(request, streamed), context):
                    yield item
            except RmllmError as exc:
                failure = exc
            except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit) as exc:
                _interrupted(observer, call, context, exc)
                raise
            except Exception as exc:
                failure = _unexpected(method, exc)
            else:
                observer.end(call, grpc.StatusCode.OK, "")
                return
            await _fail(observer, call, context, failure)

        return behavior

    serializers: Any = {
        "request_deserializer": _tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary, False), **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary, True), **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream_response(handler.unary_stream, False), **serializers
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream_response(handler.stream_stream, True), **serializers
        )
    if handler.stream_unary is not None:
        return _wrap_client_stream(method, handler, observer)
    return handler


def _wrap_client_stream(
    method: str, handler: grpc.RpcMethodHandler[Any, Any], observer: Observer
) -> grpc.RpcMethodHandler[Any, Any]:
    """The client-streaming kind of ``_wrap``: each undecodable message ends the call."""
    client_streaming: Any = handler.stream_unary  # an async function of a request iterator

    async def decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if request is UNDECODABLE:
                raise _malformed(method)
            yield request

    async def client_stream_behavior(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        call = observer.begin(method, context, False)
        try:
            answer = await client_streaming(decoded(requests), context)
        except RmllmError as exc:
            failure = exc
        except (asyncio.CancelledError, grpc.aio.AbortError) as exc:
            _interrupted(observer, call, context, exc)
            raise
        except Exception as exc:
            failure = _unexpected(method, exc)
        else:
            observer.end(call, grpc.StatusCode.OK, "")
            return answer
        await _fail(observer, call, context, failure)

    return grpc.stream_unary_rpc_method_handler(
        client_stream_behavior,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class MethodInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps the handler of each of our methods once (``wrap``).

    Health and reflection pass untouched. The wrapped handler of a method is built
    once and reused for as long as the next link of the chain hands back the same
    handler object.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """``handler`` wrapped for ``method`` (None: the method is not served)."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_standard_method(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        if wrapped is not None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped


class ErrorInterceptor(MethodInterceptor):
    """Observes every call (``observe.Observer``), and turns every exception into the contract's status."""

    def __init__(self, observer: Observer | None = None) -> None:
        super().__init__()
        self._observer = observer or Observer()

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return _wrap(method, handler, self._observer)


def new_server(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    *,
    max_message_bytes: int = 8 * 1024 * 1024,
    options: Sequence[tuple[str, Any]] = (),
    reuse_port: bool = False,
    observer: Observer | None = None,
) -> grpc.aio.Server:
    """A ``grpc.aio`` server with the error interceptor first and size limits set.

    ``SO_REUSEPORT`` is off unless ``reuse_port`` (a worker of ``serve --workers N``,
    whose supervisor checked the port): with it on, a second server would bind a
    port already in use without a word and take half its connections.
    """
    return grpc.aio.server(
        interceptors=[ErrorInterceptor(observer), *interceptors],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *options,
        ],
    )


async def add_standard_services(server: grpc.aio.Server, service_names: Sequence[str]) -> HealthServicer:
    """Register health (SERVING for "" and each service) and reflection (with comments)."""
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *service_names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable(
        server,
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
        ],
    )
    return health


def bind(server: grpc.aio.Server, listen: str) -> int:
    """Bind ``HOST:PORT`` (port 0 picks a free one) and return the port bound.

    A port in use is an ``OSError`` saying "address in use", raised here, at start.
    """
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise bind_error(listen)
    return port


def bind_error(listen: str) -> OSError:
    """Why ``HOST:PORT`` cannot be bound, as a one-line ``OSError``."""
    try:
        with socket_for(listen) as probe:
            probe.bind(address_of(listen))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return OSError(exc.errno, f"could not listen on {listen}: address in use")
        return OSError(exc.errno, f"could not listen on {listen}: {exc.strerror or exc}")
    return OSError(errno.EADDRNOTAVAIL, f"could not listen on {listen}: address not available")


def address_of(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a socket address."""
    host, port = listen.rsplit(":", 1)
    return host.strip("[]"), int(port)


def socket_for(listen: str) -> socket.socket:
    """A TCP socket of the family of ``HOST:PORT``'s host, with ``SO_REUSEADDR`` as gRPC sets it.

    ``SO_REUSEADDR`` lets it bind over connections in TIME_WAIT but never over a
    listening socket, so binding it tells "in use" from "free".
    """
    host = listen.rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


async def run_until_signal(
    server: grpc.aio.Server,
    health: HealthServicer,
    *,
    service: str,
    address: str,
    grace_seconds: float,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start ``server``, serve until SIGTERM/SIGINT, then shut down gracefully.

    ``on_drain`` runs once health says NOT_SERVING, before the grace period: it ends
    calls that would otherwise never finish (watch streams).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    loop_kind = type(loop).__module__.partition(".")[0]  # "uvloop", or "asyncio" where it has no wheels
    log.info("serving", extra={"service": service, "address": address, "event": "start", "loop": loop_kind})
    await stop.wait()
    log.info("shutting down", extra={"service": service, "grace_seconds": grace_seconds, "event": "stop"})
    await health.enter_graceful_shutdown()
    if on_drain is not None:
        await on_drain()
    await server.stop(grace_seconds)
    if on_stop is not None:
        await on_stop()
    log.info("stopped", extra={"service": service, "event": "stopped"})


@dataclass
class ServerHandle:
    """What a service's ``build_server(settings)`` returns: a bound, unstarted server."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_name: str
    on_stop: Callable[[], Awaitable[None]] | None = None
    on_drain: Callable[[], Awaitable[None]] | None = None

    async def serve(self, address: str, grace_seconds: float) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully."""
        await run_until_signal(
            self.server,
            self.health,
            service=self.service_name,
            address=address,
            grace_seconds=grace_seconds,
            on_stop=self.on_stop,
            on_drain=self.on_drain,
        )

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop serving (for tests and embedding) and release resources."""
        await self.health.enter_graceful_shutdown()
        if self.on_drain is not None:
            await self.on_drain()
        await self.server.stop(grace_seconds)
        if self.on_stop is not None:
            await self.on_stop()
