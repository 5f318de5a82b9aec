"""Cancellation, graceful shutdown and the process-wide resources of the LLM server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import grpc
import pytest
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_harness import LLMHarness, auth, chat_request, llm_harness, stream_request
from testkit.llm_scripted import STALL, Gate, ScriptedAdapter, finished

from llm_service.adapters.base import TextDelta


async def test_cancelling_a_stream_closes_the_upstream_at_once() -> None:
    adapter = ScriptedAdapter(scripts=[[TextDelta("first"), STALL]])
    async with llm_harness(adapter=adapter) as llm:
        call = llm.stub.StreamChat(stream_request(), metadata=auth())
        first = await call.read()
        assert first.delta == "first"
        assert adapter.closed == 0
        call.cancel()
        await asyncio.wait_for(adapter.closed_event.wait(), 10)
        assert adapter.closed == adapter.opened == 1


async def test_cancelling_before_the_first_delta_closes_the_upstream() -> None:
    gate = Gate()
    adapter = ScriptedAdapter(scripts=[[gate, TextDelta("never")]])
    async with llm_harness(adapter=adapter) as llm:
        call = llm.stub.StreamChat(stream_request(), metadata=auth())
        await asyncio.wait_for(gate.reached.wait(), 10)
        call.cancel()
        await asyncio.wait_for(adapter.closed_event.wait(), 10)
        assert adapter.closed == 1


async def test_cancelling_a_chat_closes_the_upstream() -> None:
    gate = Gate()
    adapter = ScriptedAdapter(scripts=[[TextDelta("a"), gate, STALL]])
    async with llm_harness(adapter=adapter) as llm:
        call = llm.stub.Chat(chat_request(), metadata=auth())
        task = asyncio.ensure_future(call)
        await asyncio.wait_for(gate.reached.wait(), 10)
        gate.open()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(adapter.closed_event.wait(), 10)


async def refused_before(llm: LLMHarness, deadline: float) -> bool:
    """Whether a new (side-effect-free) call is refused before ``deadline`` (monotonic seconds)."""
    while time.monotonic() < deadline:
        try:
            await llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=auth(), timeout=2)
        except grpc.aio.AioRpcError:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_in_flight_stream_finishes_within_the_grace_period() -> None:
    gate = Gate()
    adapter = ScriptedAdapter(scripts=[[TextDelta("before"), gate, TextDelta(" after"), finished()]])
    async with llm_harness(adapter=adapter) as llm:
        call = llm.stub.StreamChat(stream_request(), metadata=auth())
        assert (await call.read()).delta == "before"
        await gate.reached.wait()
        stopping = asyncio.ensure_future(llm.handle.stop(10))
        # New calls are refused while draining (polled: the stop takes effect when it runs)...
        assert await refused_before(llm, time.monotonic() + 10)
        with pytest.raises(grpc.aio.AioRpcError):
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=2)
        gate.open()
        # ...and the in-flight one runs to its final message and status OK.
        rest = []
        while (message := await call.read()) is not grpc.aio.EOF:
            rest.append(message)
        assert [m.WhichOneof("event") for m in rest] == ["delta", "done"]
        assert await call.code() == grpc.StatusCode.OK
        await stopping
        assert llm.adapter.closed == 1


async def test_one_http_session_for_all_calls_closed_at_stop() -> None:
    async with llm_harness() as llm:
        await llm.stub.Chat(chat_request(), metadata=auth())
        _ = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth())]
        first, second = llm.adapter.sessions
        assert first is second
        assert not first.closed
        assert not first.trust_env
        assert isinstance(first.cookie_jar, aiohttp.DummyCookieJar)  # shared by all users: keeps none
    assert first.closed


def test_sigterm_lets_an_in_flight_stream_finish() -> None:
    import signal
    from pathlib import Path

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from realmultillm.llm.v1 import llm_pb2_grpc
    from testkit import procs
    from testkit.llm_harness import ALICE

    tests_dir = Path(__file__).resolve().parents[1]
    running = procs.start(
        ["testkit.llm_slow_server"],
        {"PYTHONPATH": str(tests_dir), "RMLLM_SHUTDOWN_GRACE_SECONDS": "20", "RMLLM_TEST_SLOW_SECONDS": "1"},
    )
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = llm_pb2_grpc.LLMServiceStub(channel)
            health: Any = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stream = stub.StreamChat(stream_request(), metadata=auth(ALICE), timeout=30)
            first = next(stream)
            assert first.delta == "slow"
            running.proc.send_signal(signal.SIGTERM)
            # Health turns NOT_SERVING (load balancers stop sending) while the stream drains.
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            rest = list(stream)
            assert [m.WhichOneof("event") for m in rest] == ["delta", "done"]
            assert stream.code() == grpc.StatusCode.OK
        assert running.proc.wait(30) == 0
    finally:
        running.stop()
    events = [e.get("event") for e in running.events() if e.get("event") != "call"]  # not the call lines
    # After draining, the usage reporter flushes the records of the calls served, then the server stops.
    assert events[-4:] == ["start", "stop", "usage_reporter_stopped", "stopped"], running.logs
    assert "Traceback" not in running.logs
