"""The ledger under faults and scale-out, through real processes.

* The vault is killed (SIGKILL) and restarted while the LLM service is under load
  (its watch stream cut, the LLM service drops its cached credentials, so calls
  fail until the vault is back): once the LLM service has flushed, the ledger
  holds exactly one record per completed call, no duplicates, and nothing else —
  on SQLite and on PostgreSQL.
* A budget holds across two LLM replicas and two vault processes sharing one
  PostgreSQL database, with the overshoot of concurrent calls within the bound
  documented in docs/LEDGER.md.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from fakes.harness import KEYS
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from testkit import pg, procs
from testkit.stack import Stack

from clients import BudgetExceeded, Client, Unavailable, UsageRecord

LOAD_THREADS = 4


def until(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def all_records(client: Client) -> list[UsageRecord]:
    records: list[UsageRecord] = []
    token = ""
    while True:
        page = client.usage_records(page_size=1000, page_token=token)
        records += page.records
        token = page.next_page_token
        if not token:
            return records


def records_or_none(client: Client) -> list[UsageRecord]:
    """``all_records``, or none while the vault is not reachable yet."""
    try:
        return all_records(client)
    except Unavailable:
        return []


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
        return
    with pg.schema_url("ledger") as url:
        yield {"RMLLM_DATABASE_URL": url}


def chat_request() -> llm_pb2.ChatRequest:
    return llm_pb2.ChatRequest(
        provider="openai", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="Count to three")]
    )


def test_the_vault_killed_under_load_loses_and_doubles_nothing(
    tmp_path: Path, database_env: dict[str, str]
) -> None:
    stack = Stack.start(
        tmp_path,
        RMLLM_USAGE_FLUSH_SECONDS="0.05",
        RMLLM_CREDENTIAL_CACHE_SECONDS="30",
        RMLLM_CHAT_RATE_PER_MINUTE="0",
        **database_env,
    )
    try:
        token = stack.create_user("loaded")
        client = Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address)
        client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        stack.control("PUT", "record", {"enabled": False})
        completed: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with grpc.insecure_channel(stack.llm.address) as channel:
                stub = llm_pb2_grpc.LLMServiceStub(channel)
                while not stop.is_set():
                    request_id = "load-" + secrets.token_hex(8)
                    metadata = (("authorization", f"Bearer {token}"), ("x-request-id", request_id))
                    try:
                        stub.Chat(chat_request(), metadata=metadata, timeout=10)
                        completed.append(request_id)
                    except grpc.RpcError:
                        failed.append(request_id)

        with ThreadPoolExecutor(LOAD_THREADS) as pool:
            # Warm the credential cache, then load, kill the vault, keep loading, restart it.
            client.chat("openai", "Count to three")
            futures = [pool.submit(load) for _ in range(LOAD_THREADS)]
            until(lambda: len(completed) >= 50)
            assert stack.vault.stop(signal.SIGKILL) == -signal.SIGKILL
            during = len(completed)
            # The watch stream died with the vault, so the LLM service dropped its cache and
            # stopped caching (a revocation must never be missed): calls fail meanwhile.
            failed_before = len(failed)
            until(lambda: len(failed) >= failed_before + 20)
            stack.restart_vault()
            restarted = len(completed)
            until(lambda: len(completed) >= restarted + 50)
            stop.set()
            for future in futures:
                future.result()
        assert len(completed) > restarted >= during

        client.close()
        client = Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address)
        # The restarted vault may still be settling for this new channel: retry until it answers.
        until(lambda: len(records_or_none(client)) >= len(completed) + 1)  # + the warm-up call
        records = all_records(client)
        ids = [r.request_id for r in records]
        assert len(ids) == len(set(ids))  # no duplicates
        loaded = {r.request_id for r in records if r.request_id.startswith("load-")}
        # Every completed call is in the ledger once; a failed call only if it got as far as a
        # known user (then with its failure), never as a success.
        assert set(completed) <= loaded
        for record in records:
            if record.request_id in failed:
                assert record.status_code != "OK"
        assert len([r for r in records if r.status_code == "OK"]) == len(completed) + 1  # + the warm-up
        summary = client.usage_summary(datetime.now(UTC) - timedelta(days=1))
        assert summary.totals.calls == len(records)
        assert summary.totals.output_tokens == sum(r.output_tokens for r in records)
        client.close()
    finally:
        stack.stop()
    stats = [e for e in stack.llm.events() if e.get("event") == "usage_reporter_stopped"]
    assert stats and stats[-1]["overflow"] == 0 and stats[-1]["lost"] == 0


@pytest.mark.postgres
def test_a_budget_holds_across_two_llm_replicas_and_two_vaults(tmp_path: Path) -> None:
    with pg.schema_url("budget") as url:
        stack = Stack.start(
            tmp_path,
            RMLLM_DATABASE_URL=url,
            RMLLM_USAGE_FLUSH_SECONDS="0.05",
            RMLLM_CREDENTIAL_CACHE_SECONDS="0",
            RMLLM_CHAT_RATE_PER_MINUTE="0",
        )
        extra: list[procs.Service] = []
        try:
            vault2 = procs.start(["vault_service.cli", "serve", "--listen", "127.0.0.1:0"], stack.env)
            extra.append(vault2)
            llm2 = procs.start(
                ["llm_service.cli", "serve", "--listen", "127.0.0.1:0"],
                {**stack.env, "RMLLM_VAULT_ADDR": vault2.address},
            )
            extra.append(llm2)
            token = stack.create_user("shared-budget")
            with Client(token, llm_target=stack.llm.address, vault_target=vault2.address) as client:
                client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
                # Every answer: 10 pieces 20 ms apart, so calls overlap; each costs the same.
                stack.control("PUT", "default", {"pieces": ["x"] * 10, "delay": 0.02, "route": "chat"})
                cost = client.chat("openai", "Count to three").usage.cost_usd
                assert cost > 0
                calls_allowed = 40
                limit = cost * calls_allowed
                set_budget = stack.vault_cli(
                    "users", "budget", "shared-budget", "--daily-usd", f"{limit:.12f}"
                )
                assert set_budget.returncode == 0, set_budget.stderr
                admitted = [0]
                lock = threading.Lock()

                def spend(address: str) -> None:
                    with Client(token, llm_target=address, vault_target=vault2.address) as mine:
                        while True:
                            try:
                                mine.chat("openai", "Count to three")
                            except BudgetExceeded:  # the loop ends on the refusal
                                return
                            with lock:
                                admitted[0] += 1

                with ThreadPoolExecutor(2 * LOAD_THREADS) as pool:
                    jobs = [
                        pool.submit(spend, a)
                        for a in (stack.llm.address, llm2.address)
                        for _ in range(LOAD_THREADS)
                    ]
                    for job in jobs:
                        job.result(timeout=120)
                until(
                    lambda: (
                        client.usage_summary(datetime.now(UTC) - timedelta(days=1)).totals.calls
                        >= admitted[0] + 1
                    )
                )
                spent = client.usage_summary(datetime.now(UTC) - timedelta(days=1)).totals.cost_usd
            # The bound (docs/LEDGER.md): the calls in flight when the budget is reached (here 8),
            # plus what the other replica finishes within one flush interval and one vault round
            # trip (here at most one call per thread: a call takes over 200 ms), each one call's cost.
            overshoot_calls = (spent - limit) / cost
            assert spent >= limit * 0.999
            assert overshoot_calls <= 2 * LOAD_THREADS + LOAD_THREADS, overshoot_calls
            print(f"overshoot: {overshoot_calls:.2f} calls over a budget of {calls_allowed} calls")
        finally:
            for service in extra:
                service.stop()
            stack.stop()


def test_sigkill_of_the_llm_service_loses_only_its_unflushed_records(tmp_path: Path) -> None:
    """The documented loss window: records buffered when the LLM service is SIGKILLed are lost.

    With the default flush interval (200 ms) that is at most the calls of the last
    interval plus one batch in flight; the figure measured here goes to docs/LEDGER.md.
    Whatever is lost, nothing is invented: every record is of a call that completed.
    """
    stack = Stack.start(tmp_path, RMLLM_CHAT_RATE_PER_MINUTE="0")
    try:
        token = stack.create_user("killed")
        with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
            client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        stack.control("PUT", "record", {"enabled": False})
        completed: list[tuple[str, float]] = []
        stop = threading.Event()

        def load() -> None:
            with grpc.insecure_channel(stack.llm.address) as channel:
                stub = llm_pb2_grpc.LLMServiceStub(channel)
                while not stop.is_set():
                    request_id = "k-" + secrets.token_hex(8)
                    metadata = (("authorization", f"Bearer {token}"), ("x-request-id", request_id))
                    try:
                        stub.Chat(chat_request(), metadata=metadata, timeout=10)
                    except grpc.RpcError:
                        continue
                    completed.append((request_id, time.monotonic()))

        with ThreadPoolExecutor(LOAD_THREADS) as pool:
            futures = [pool.submit(load) for _ in range(LOAD_THREADS)]
            until(lambda: len(completed) >= 300)
            stack.llm.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            stop.set()
            for future in futures:
                future.result()
        # A graceful vault restart drains any report still being ingested; nothing else will come.
        stack.vault.stop()
        stack.restart_vault()
        with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
            stored = {r.request_id for r in all_records(client)}
        done = {rid for rid, _ in completed}
        assert stored <= done
        lost = [(rid, at) for rid, at in completed if rid not in stored]
        window = killed_at - min((at for _, at in lost), default=killed_at)
        rate = len(completed) / (completed[-1][1] - completed[0][1])
        print(
            f"SIGKILL lost {len(lost)} of {len(completed)} records ({rate:.0f} calls/s), "
            f"window {window * 1000:.0f} ms"
        )
        assert len(lost) < len(completed)
    finally:
        stack.stop()
