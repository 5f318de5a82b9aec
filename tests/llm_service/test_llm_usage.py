"""Usage records, budgets and model policy in the LLM service, against the fake vault.

Every Chat, StreamChat, TestKey and live ListModels call leaves one record at the
vault whatever its outcome; records are delivered off the call's path, kept while
the vault is down and delivered when it is back, and flushed at stop. Budgets
and policies that the vault returns are enforced before the provider is called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from realmultillm.llm.v1 import llm_pb2
from realmultillm.vault.v1 import vault_pb2
from testkit.llm_fake_vault import FakeVault
from testkit.llm_harness import BOB, auth, chat_request, llm_harness, rich_error, stream_request
from testkit.llm_scripted import STALL, ScriptedAdapter, answer, finished

from llm_service.accounting import CallRecord
from llm_service.adapters.base import Finished, FinishReason, ListedModel, TextDelta, Usage
from llm_service.usage import UsageReporter
from rmllm_common.errors import ProviderUnavailable

FAST = {"RMLLM_USAGE_FLUSH_SECONDS": "0.02"}


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``check`` until it holds (or fail after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def finished_call(request_id: str, cost: float = 0.0) -> CallRecord:
    """A finished call as ``accounting.recorded`` hands it to the reporter."""
    record = CallRecord(
        "Chat", False, time.time(), time.perf_counter(), user_id="u", token_id="t", cost_usd=cost
    )
    record.request_id, record.status_code, record.ended = request_id, "OK", time.perf_counter()
    return record


def by_method(vault: FakeVault) -> dict[str, list[vault_pb2.UsageRecord]]:
    grouped: dict[str, list[vault_pb2.UsageRecord]] = {}
    for record in vault.usage.values():
        grouped.setdefault(record.method, []).append(record)
    return grouped


async def test_every_outcome_leaves_one_record() -> None:
    adapter = ScriptedAdapter(
        scripts=[
            answer("Hello", ", world", input_tokens=12, output_tokens=7),  # Chat: OK
            answer("a", "b", input_tokens=3, output_tokens=2),  # StreamChat: OK
            [ProviderUnavailable("down", provider="openai")],  # Chat: fails after retries
        ]
    )
    async with llm_harness({**FAST, "RMLLM_RETRY_ATTEMPTS": "2"}, adapter=adapter) as llm:
        ok = await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        streamed = [m async for m in llm.stub.StreamChat(stream_request(), metadata=auth(), timeout=10)]
        with pytest.raises(grpc.aio.AioRpcError):
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        # The vault refuses bob (no key stored): that refusal is in the vault's audit log, and
        # the LLM service never learns whose call it was, so there is nothing to account.
        with pytest.raises(grpc.aio.AioRpcError):
            await llm.stub.Chat(chat_request(), metadata=auth(BOB), timeout=10)
        await llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="openai"), metadata=auth(), timeout=10)
        llm.adapter.models = [ListedModel("gpt-4o-mini")]
        await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="openai"), metadata=auth(), timeout=10)
        # The registry answers without calling the provider: not a provider call, not recorded.
        await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="github"), metadata=auth(), timeout=10)
        await until(lambda: len(llm.vault.usage) == 5)
        records = by_method(llm.vault)
        chats = sorted(records["Chat"], key=lambda r: r.status_code)
        assert [(r.status_code, r.reason, r.user_id) for r in chats] == [
            ("OK", "", "u-alice"),
            ("UNAVAILABLE", "PROVIDER_UNAVAILABLE", "u-alice"),
        ]
        good = chats[0]
        assert (good.input_tokens, good.output_tokens, good.usage_reported) == (12, 7, True)
        assert good.cost_usd == pytest.approx(ok.usage.cost_usd) and good.cost_usd > 0
        assert (good.provider, good.model, good.token_id, good.stream) == (
            "openai",
            "gpt-4o-mini",
            "tok_u-alice",
            False,
        )
        assert good.HasField("time_to_first_token") and good.retries == 0
        assert abs(good.time.seconds - time.time()) < 60
        assert chats[1].retries == 1  # two attempts
        (stream,) = records["StreamChat"]
        assert (stream.stream, stream.input_tokens, stream.output_tokens) == (True, 3, 2)
        assert stream.cost_usd == pytest.approx(streamed[-1].done.usage.cost_usd)
        assert [r.status_code for r in records["TestKey"]] == ["OK"]
        assert [(r.status_code, r.provider) for r in records["ListModels"]] == [("OK", "openai")]
        assert len({r.request_id for r in llm.vault.usage.values()}) == 5


async def test_a_cancelled_stream_and_a_deadline_are_recorded() -> None:
    adapter = ScriptedAdapter(scripts=[[TextDelta("first"), STALL]])
    async with llm_harness(FAST, adapter=adapter) as llm:
        call = llm.stub.StreamChat(stream_request(), metadata=auth())
        assert (await call.read()).delta == "first"
        call.cancel()
        await until(lambda: len(llm.vault.usage) == 1)
        (cancelled,) = llm.vault.usage.values()
        assert (cancelled.status_code, cancelled.method, cancelled.usage_reported) == (
            "CANCELLED",
            "StreamChat",
            False,
        )
        assert cancelled.HasField("time_to_first_token")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: len(llm.vault.usage) == 2)
        late = [r for r in llm.vault.usage.values() if r.method == "Chat"]
        assert [r.status_code for r in late] == ["DEADLINE_EXCEEDED"]


async def test_records_wait_for_a_vault_that_is_down_and_are_flushed_at_stop() -> None:
    async with llm_harness({"RMLLM_USAGE_FLUSH_SECONDS": "10"}) as llm:
        for _ in range(5):
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        # A long interval: nothing sent yet; stopping the server flushes all five.
        assert llm.vault.usage == {}
        await llm.handle.stop(1)
        assert len(llm.vault.usage) == 5


async def test_reporter_keeps_records_through_an_outage_and_never_double_counts() -> None:
    vault = FakeVault("svc-token-0123456789abcdefghijklmnopqrstu")  # type: ignore[abstract]
    sent: list[int] = []
    failing = {"on": True}

    async def send(batches: Any, timeout: float) -> vault_pb2.ReportUsageResponse:
        sent.append(sum(len(b) for b in batches))
        if failing["on"]:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        accepted = duplicates = 0
        for batch in batches:
            for record in batch:
                if record.request_id in vault.usage:
                    duplicates += 1
                else:
                    vault.usage[record.request_id] = record
                    accepted += 1
        return vault_pb2.ReportUsageResponse(accepted=accepted, duplicates=duplicates)

    reporter = UsageReporter(send, interval=0.01, batch_size=3, max_buffer=10, max_backoff=0.02)
    reporter.start()
    records = [finished_call(f"r{i}", cost=0.5) for i in range(12)]
    for record in records:
        reporter.submit(record)
    assert reporter.stats.overflow == 2  # the buffer holds 10
    assert reporter.pending("u", "t", "user") == pytest.approx(5.0)
    await until(lambda: len(sent) >= 3)
    assert vault.usage == {}
    failing["on"] = False
    await until(lambda: reporter.buffered == 0)
    assert sorted(vault.usage) == sorted(f"r{i}" for i in range(10))
    assert reporter.pending("u", "t", "token") == 0.0
    assert max(sent) <= 5_000
    # A batch delivered twice (an answer lost on the way back) is a duplicate, not a second count.
    reporter.submit(records[0])
    await reporter.close(1.0)
    assert (reporter.stats.duplicates, len(vault.usage)) == (1, 10)


async def test_budgets_and_policies_are_enforced_before_the_provider() -> None:
    reset = int(time.time()) + 3600
    async with llm_harness(FAST) as llm:
        llm.vault.limits["u-alice"] = {
            "budgets": [
                vault_pb2.BudgetStatus(
                    scope=vault_pb2.LIMIT_SCOPE_TOKEN,
                    period=vault_pb2.BUDGET_PERIOD_DAILY,
                    limit_usd=1.0,
                    spent_usd=1.0,
                    reset_time=timestamp_pb2.Timestamp(seconds=reset),
                )
            ],
            "user_policy": vault_pb2.ModelPolicy(allow=["openai/*"], deny=["openai/gpt-4o"]),
        }
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(model="gpt-4o"), metadata=auth(), timeout=10)
        denied = rich_error(caught.value)
        assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_ALLOWED")
        assert denied.metadata == {"provider": "openai", "model": "gpt-4o"}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        spent = rich_error(caught.value)
        assert (spent.code, spent.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
        assert spent.metadata["budget_usd"] == "1" and spent.metadata["spent_usd"] == "1"
        assert spent.metadata["scope"] == "token" and spent.metadata["period"] == "daily"
        assert spent.metadata["reset_time"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset))
        assert spent.retry_delay is not None and 3500 <= spent.retry_delay <= 3600
        assert llm.adapter.calls == []  # the provider was never called
        # Listings show only what the policy allows.
        providers = await llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=auth(), timeout=10)
        assert [p.id for p in providers.providers] == ["openai"]
        assert "gpt-4o" not in [m.id for m in providers.providers[0].models]
        assert "gpt-4o-mini" in [m.id for m in providers.providers[0].models]
        llm.adapter.models = [ListedModel("gpt-4o"), ListedModel("gpt-4o-mini")]
        listed = await llm.stub.ListModels(
            llm_pb2.ListModelsRequest(provider="openai"), metadata=auth(), timeout=10
        )
        assert [m.id for m in listed.models] == ["gpt-4o-mini"]
        # Under the budget, the call goes through; refused calls were recorded too.
        llm.vault.limits["u-alice"]["budgets"][0].spent_usd = 0.5
        await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        await until(
            lambda: any(r.status_code == "OK" and r.method == "Chat" for r in llm.vault.usage.values())
        )
        reasons = sorted(r.reason for r in llm.vault.usage.values() if r.method == "Chat")
        assert reasons == ["", "BUDGET_EXCEEDED", "MODEL_NOT_ALLOWED"]


async def test_unreported_spend_of_this_replica_counts_against_the_budget() -> None:
    reset = timestamp_pb2.Timestamp(seconds=int(time.time()) + 60)
    # A flush interval far longer than the test: the vault's spend never moves.
    async with llm_harness(
        {"RMLLM_USAGE_FLUSH_SECONDS": "10"},
        adapter=ScriptedAdapter(scripts=[[finished(input_tokens=1_000_000, output_tokens=0)]]),
    ) as llm:
        llm.vault.limits["u-alice"] = {
            "budgets": [
                vault_pb2.BudgetStatus(
                    scope=vault_pb2.LIMIT_SCOPE_USER,
                    period=vault_pb2.BUDGET_PERIOD_DAILY,
                    limit_usd=0.40,
                    spent_usd=0.0,
                    reset_time=reset,
                )
            ]
        }
        # gpt-4o-mini input costs $0.15 per million tokens: the third call reaches $0.45.
        for _ in range(3):
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        assert rich_error(caught.value).reason == "BUDGET_EXCEEDED"
        assert len(llm.adapter.calls) == 3


async def test_credentials_with_a_budget_are_never_served_from_the_cache() -> None:
    cached = {**FAST, "RMLLM_CREDENTIAL_CACHE_SECONDS": "30"}
    async with llm_harness(cached) as llm:
        await llm.until(lambda: llm.cache.enabled)  # the cache works once the watch stream is in sync
        for _ in range(3):
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        assert llm.vault.methods().count("ResolveCredentials") == 1  # no budget: cached
    async with llm_harness(cached) as llm:
        await llm.until(lambda: llm.cache.enabled)
        budget = vault_pb2.BudgetStatus(
            scope=vault_pb2.LIMIT_SCOPE_USER,
            period=vault_pb2.BUDGET_PERIOD_DAILY,
            limit_usd=5.0,
            reset_time=timestamp_pb2.Timestamp(seconds=int(time.time()) + 60),
        )
        llm.vault.limits["u-alice"] = {"budgets": [budget]}
        for _ in range(3):
            await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        # Each call asks the vault: the spend it compares is always the vault's latest.
        assert llm.vault.methods().count("ResolveCredentials") == 3


async def test_an_unexpected_send_error_does_not_stop_delivery() -> None:
    sent: list[int] = []

    async def send(batches: Any, timeout: float) -> vault_pb2.ReportUsageResponse:
        sent.append(sum(len(b) for b in batches))
        if len(sent) == 1:
            raise RuntimeError("a bug in the send path")
        return vault_pb2.ReportUsageResponse(accepted=sent[-1])

    reporter = UsageReporter(send, interval=0.01, max_backoff=0.02)
    reporter.start()
    reporter.submit(finished_call("r1"))
    await until(lambda: reporter.stats.reported == 1)
    assert sent == [1, 1] and reporter.buffered == 0
    await reporter.close(1.0)


async def test_a_record_that_cannot_be_built_is_dropped_alone() -> None:
    sent: list[list[str]] = []

    async def send(batches: Any, timeout: float) -> vault_pb2.ReportUsageResponse:
        sent.append([r.request_id for b in batches for r in b])
        return vault_pb2.ReportUsageResponse(accepted=len(sent[-1]))

    reporter = UsageReporter(send, interval=0.01)
    broken = finished_call("r2")
    broken.retries = 2**40  # past int32: its proto cannot be built
    for record in (finished_call("r1"), broken, finished_call("r3")):
        reporter.submit(record)
    await reporter.flush(1.0)
    assert sent == [["r1", "r3"]]
    assert (reporter.stats.rejected, reporter.stats.reported, reporter.buffered) == (1, 2, 0)


async def test_cache_and_reasoning_tokens_and_unreported_usage_are_recorded() -> None:
    cached = Finished(
        FinishReason.STOP,
        Usage(
            1000,
            300,
            1300,
            cache_read_input_tokens=800,
            cache_creation_input_tokens=100,
            reasoning_tokens=200,
        ),
        "gpt-4o-mini",
        "resp-1",
    )
    silent = Finished(FinishReason.STOP, Usage(reported=False), "gpt-4o-mini", "resp-2")
    adapter = ScriptedAdapter(scripts=[[TextDelta("a"), cached], [TextDelta("b"), silent]])
    async with llm_harness(FAST, adapter=adapter) as llm:
        answer_usage = (await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)).usage
        await llm.stub.Chat(chat_request(), metadata=auth(), timeout=10)
        await until(lambda: len(llm.vault.usage) == 2)
        first, second = sorted(
            llm.vault.usage.values(), key=lambda r: r.cache_read_input_tokens, reverse=True
        )
        assert (first.input_tokens, first.output_tokens) == (1000, 300)
        assert (first.cache_read_input_tokens, first.cache_creation_input_tokens, first.reasoning_tokens) == (
            800,
            100,
            200,
        )
        assert first.usage_reported and first.cost_usd == pytest.approx(answer_usage.cost_usd)
        assert not second.usage_reported and second.input_tokens == second.output_tokens == 0


async def test_an_acknowledgement_keeps_one_cost_per_user_and_token_not_one_per_record() -> None:
    """What is kept for the checks in flight grows with the acknowledgements, not the calls:
    at 500 calls a second it held two entries per call for a minute (the soak's RSS growth)."""

    async def send(batches: Any, timeout: float) -> vault_pb2.ReportUsageResponse:
        return vault_pb2.ReportUsageResponse(accepted=sum(len(b) for b in batches))

    reporter = UsageReporter(send, interval=60.0, batch_size=300)  # the 300 go in one acknowledgement
    reporter.start()
    before = time.monotonic()
    for n in range(300):
        reporter.submit(finished_call(f"r-{n}", cost=0.001))
    await until(lambda: reporter.buffered == 0)
    assert reporter.remembered == 2  # user "u" and token "t"
    assert reporter.pending("u", "t", "user", since=before) == pytest.approx(0.3)
    assert reporter.pending("u", "t", "token", since=before) == pytest.approx(0.3)
    assert reporter.pending("u", "t", "user", since=time.monotonic()) == 0.0
    await reporter.close(1.0)


async def test_a_cost_acknowledged_during_a_check_still_counts_for_that_check() -> None:
    """The vault may read the spend before it commits a batch that is acknowledged here before
    the check compares: the batch's cost must count for that check, else it counts nowhere."""
    stored: list[str] = []
    refuse = {"on": False}

    async def send(batches: Any, timeout: float) -> vault_pb2.ReportUsageResponse:
        if refuse["on"]:  # refused as invalid: dropped, never stored
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        stored.extend(record.request_id for batch in batches for record in batch)
        return vault_pb2.ReportUsageResponse(accepted=sum(len(b) for b in batches))

    reporter = UsageReporter(send, interval=0.01)
    reporter.start()
    before = time.monotonic()  # a check begins: it asks the vault for the spend
    reporter.submit(finished_call("r-1", cost=0.25))
    await until(lambda: reporter.buffered == 0)  # stored and acknowledged meanwhile
    after = time.monotonic()
    assert stored == ["r-1"]
    assert reporter.pending("u", "t", "user", since=before) == pytest.approx(0.25)
    assert reporter.pending("u", "t", "token", since=before) == pytest.approx(0.25)
    assert reporter.pending("u", "t", "user", since=after) == 0.0  # a later check reads it in the vault
    assert reporter.pending("u", "t", "user") == 0.0
    refuse["on"] = True
    reporter.submit(finished_call("r-2", cost=0.5))
    await until(lambda: reporter.buffered == 0)
    assert reporter.pending("u", "t", "user", since=after) == 0.0  # dropped, not stored: counts nowhere
    await reporter.close(1.0)
