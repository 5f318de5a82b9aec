"""The auth and error interceptors over every kind of handler: unary and streaming, either way.

A real server (``new_server`` with the ``AuthInterceptor``) serves generic handlers of
each of the four kinds under VaultService method names, so the policy table applies:
each kind refuses a missing or wrong credential with the contract's status before it
runs (and before it reads the request stream), and hands the authenticated user to the
handler while it runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from testkit.vault import SERVICE_TOKEN, failure, md

from rmllm_common import requestctx
from rmllm_common.errors import TokenInvalid
from rmllm_common.secret import Secret
from rmllm_common.server import bind, new_server
from vault_service.accounts import Principal
from vault_service.auth import SERVICE_NAME, AuthInterceptor, current_user

USER_TOKEN = "rmk_" + "u" * 43
ALICE = Principal("usr_alice", "alice")
# One method of each kind; the names choose the policy (user or service).
KINDS = {
    "unary_unary": "GetUsageSummary",  # user
    "stream_unary": "ReportUsage",  # service
    "unary_stream": "WatchInvalidations",  # service
    "stream_stream": "ListUsageRecords",  # user
}
SERVICE_METHODS = {"ReportUsage", "WatchInvalidations"}


def _who() -> bytes:
    try:
        user = current_user()
    except TokenInvalid:  # the service RPCs carry no user
        return b"service@" + requestctx.request_id().encode()
    return user.user_id.encode() + b"@" + requestctx.request_id().encode()


async def _unary_unary(request: bytes, context: Any) -> bytes:
    return _who() + b":" + request


async def _stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    seen = [r async for r in requests]
    return _who() + b":" + b",".join(seen)


async def _unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield _who() + b":" + request


async def _stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield _who() + b":" + request


HANDLERS: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    KINDS["unary_unary"]: grpc.unary_unary_rpc_method_handler(_unary_unary),
    KINDS["stream_unary"]: grpc.stream_unary_rpc_method_handler(_stream_unary),
    KINDS["unary_stream"]: grpc.unary_stream_rpc_method_handler(_unary_stream),
    KINDS["stream_stream"]: grpc.stream_stream_rpc_method_handler(_stream_stream),
}


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    async def authenticate(token: str) -> Principal | None:
        return ALICE if token == USER_TOKEN else None

    server = new_server([AuthInterceptor(Secret(SERVICE_TOKEN), authenticate)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, HANDLERS),))
    port = bind(server, "127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await server.stop(0)


async def _requests() -> AsyncIterator[bytes]:
    for item in (b"a", b"b"):
        yield item


def _call(
    channel: grpc.aio.Channel, kind: str, metadata: Any, *, write: bool = True
) -> Callable[[], Awaitable[list[bytes]]]:
    path = f"/{SERVICE_NAME}/{KINDS[kind]}"
    chan: Any = channel  # generic calls on raw bytes: no stub types to check against

    async def run() -> list[bytes]:
        if kind == "stream_stream" and not write:
            # A refused call: write nothing (a write racing the server's abort fails on
            # the client's side with its own INTERNAL), then read the status.
            call = chan.stream_stream(path)(metadata=metadata)
            await call.done_writing()
            return [m async for m in call]
        if kind == "unary_unary":
            return [await chan.unary_unary(path)(b"a", metadata=metadata)]
        if kind == "stream_unary":
            return [await chan.stream_unary(path)(_requests(), metadata=metadata)]
        if kind == "unary_stream":
            return [m async for m in chan.unary_stream(path)(b"a", metadata=metadata)]
        return [m async for m in chan.stream_stream(path)(_requests(), metadata=metadata)]

    return run


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_handler_kind_is_authenticated(channel: grpc.aio.Channel, kind: str) -> None:
    method = KINDS[kind]
    is_service = method in SERVICE_METHODS
    good = md(SERVICE_TOKEN) if is_service else md(USER_TOKEN)
    wrong = md(USER_TOKEN) if is_service else md(SERVICE_TOKEN)
    expected_wrong = (
        (grpc.StatusCode.PERMISSION_DENIED, "SERVICE_CREDENTIAL_REQUIRED")
        if is_service
        else (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    )
    for metadata, expected in (
        ((), (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")),
        (wrong, expected_wrong),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, kind, metadata, write=False)()
        refused = failure(caught.value)
        assert (refused.code, refused.reason) == expected, kind

    rid = (("x-request-id", f"rid-{kind}"),)
    answers = await _call(channel, kind, good + rid)()
    who = b"service" if is_service else ALICE.user_id.encode()
    prefix = who + b"@" + f"rid-{kind}".encode() + b":"
    expected_answers = {
        "unary_unary": [prefix + b"a"],
        "stream_unary": [prefix + b"a,b"],
        "unary_stream": [prefix + b"a", prefix + b"a"],
        "stream_stream": [prefix + b"a", prefix + b"b"],
    }[kind]
    assert answers == expected_answers
