"""Cancellation, graceful shutdown and the process-wide resources of the LLM server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from testkit.llm_harness import auth, chat_request, llm_harness, stream_request
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


async def test_in_flight_stream_finishes_within_the_grace_period() -> None:
    gate = Gate()
    adapter = ScriptedAdapter(scripts=[[TextDelta("before"), gate, TextDelta(" after"), finished()]])
    async with llm_harness(adapter=adapter) as llm:
        call = llm.stub.StreamChat(stream_request(), metadata=auth())
        assert (await call.read()).delta == "before"
        await gate.reached.wait()
        stopping = asyncio.ensure_future(llm.handle.stop(10))
        await asyncio.sleep(0.05)
        # New calls are refused while draining...
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
    assert first.closed
