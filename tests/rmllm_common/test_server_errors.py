"""The error interceptor (rmllm_common.server): a failed call's frames released at once,
and the client-streaming kind of handler translated like the others."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rmllm_common.errors import InvalidRequest, ProviderError
from rmllm_common.server import _released, bind, new_server


class Buffer(bytearray):
    """A bytearray that can be weakly referenced."""


def _fail(holder: list[weakref.ref[Buffer]]) -> None:
    data = Buffer(1024 * 1024)  # a provider's answer, held by this frame
    holder.append(weakref.ref(data))
    try:
        raise ConnectionResetError("cut")
    except ConnectionResetError as e:
        raise ProviderError("the provider failed") from e


def test_a_released_error_keeps_no_frame_alive() -> None:
    gc.disable()
    try:
        holder: list[weakref.ref[Buffer]] = []
        try:
            _fail(holder)
        except ProviderError as e:
            error = e
        assert holder[0]() is not None  # the traceback keeps the frame, and the buffer, alive
        released = _released(error)
        assert released is error and error.__traceback__ is None and error.__cause__ is not None
        assert error.__cause__.__traceback__ is None
        assert holder[0]() is None  # freed by reference counting, no garbage collection needed
    finally:
        gc.enable()


async def _sum(requests: AsyncIterator[wrappers_pb2.Int64Value], context: object) -> wrappers_pb2.Int64Value:
    total = 0
    async for request in requests:
        if request.value < 0:
            raise InvalidRequest("value: must not be negative")
        total += request.value
    return wrappers_pb2.Int64Value(value=total)


@pytest.fixture
async def summing() -> AsyncIterator[grpc.aio.Channel]:
    """A server with one client-streaming method, behind the shared interceptors."""
    server = new_server()
    handler = grpc.stream_unary_rpc_method_handler(
        _sum,
        request_deserializer=wrappers_pb2.Int64Value.FromString,
        response_serializer=wrappers_pb2.Int64Value.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Summer", {"Sum": handler}),))
    port = bind(server, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    await channel.close()
    await server.stop(0)


async def _call(channel: grpc.aio.Channel, payloads: list[bytes]) -> bytes:
    call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary("/test.Summer/Sum")
    return await call(iter(payloads), timeout=10)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    [detail] = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    info = error_details_pb2.ErrorInfo()
    detail.Unpack(info)
    return str(info.reason)


async def test_client_streaming_errors_are_translated_and_undecodable_messages_refused(
    summing: grpc.aio.Channel,
) -> None:
    one, two = (wrappers_pb2.Int64Value(value=v).SerializeToString() for v in (1, 2))
    answer = wrappers_pb2.Int64Value.FromString(await _call(summing, [one, two]))
    assert answer.value == 3
    with pytest.raises(grpc.aio.AioRpcError) as bad_bytes:
        await _call(summing, [one, b"\xff\xff\xff"])
    assert bad_bytes.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(bad_bytes.value) == "MALFORMED_REQUEST"
    negative = wrappers_pb2.Int64Value(value=-1).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(summing, [negative])
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(refused.value) == "INVALID_REQUEST"
