"""The usage ledger through the live services: every outcome recorded, budgets, policy, the CLIs.

A stack of real processes (fake provider, vault, LLM service) with a short usage
flush interval. Calls of every outcome leave one matching record each, and the
daily rollups the summary reads add up to those records; a user never reads
another's. Budgets and policies set with the operator CLI are enforced by the LLM
service; ``rmllm usage`` and ``rmllm-vault usage report`` print what was used.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import transcripts
from fakes.harness import KEYS
from testkit.stack import ROOT, Stack

from clients import Client, UsageRecord
from clients import errors as cerr

FLUSH = {"RMLLM_USAGE_FLUSH_SECONDS": "0.05"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack.start(tmp_path_factory.mktemp("ledger"), **FLUSH)
    yield running
    running.stop()


def user_client(stack: Stack, name: str) -> Client:
    client = Client(stack.create_user(name), llm_target=stack.llm.address, vault_target=stack.vault.address)
    client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
    return client


def all_records(client: Client) -> list[UsageRecord]:
    records: list[UsageRecord] = []
    token = ""
    while True:
        page = client.usage_records(page_size=50, page_token=token)
        records += page.records
        token = page.next_page_token
        if not token:
            return records


def until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_every_outcome_leaves_a_matching_record_and_rollup(stack: Stack) -> None:
    expected_usage = transcripts.load("openai_basic").expect["usage"]
    with user_client(stack, "outcomes") as client:
        stack.enqueue({"transcript": "openai_basic"})
        answer = client.chat("openai", "Hello")
        stack.enqueue({"transcript": "openai_basic"})
        with client.stream_chat("openai", "Hello") as stream:
            streamed = stream.result
        stack.enqueue({"canned": ["openai", "rate_limited"]})
        with pytest.raises(cerr.ProviderRateLimited):
            client.chat("openai", "Hello")
        cut = transcripts.load("openai_basic").end_offset("openai")
        stack.enqueue({"transcript": "openai_basic", "truncate_at": cut})
        with pytest.raises(cerr.UpstreamStreamTruncated), client.stream_chat("openai", "Hello") as stream:
            list(stream)
        stack.enqueue({"pieces": ["tick "] * 200, "delay": 0.05, "route": "chat"})
        with client.stream_chat("openai", "Count slowly") as stream:
            assert next(iter(stream)) == "tick "
            stream.cancel()
        stack.enqueue({"transcript": "openai_basic", "hang": True})
        with pytest.raises(cerr.DeadlineExceeded):
            client.chat("openai", "Hello", timeout=1.0)
        assert client.test_key("openai").valid
        assert client.models("openai").live

        until(lambda: len(all_records(client)) == 8)
        records = all_records(client)
        assert [r.time for r in records] == sorted((r.time for r in records), reverse=True)
        seen = sorted((r.method, r.status_code, r.reason) for r in records)
        assert seen == [
            ("Chat", "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
            ("Chat", "OK", ""),
            ("Chat", "RESOURCE_EXHAUSTED", "PROVIDER_RATE_LIMITED"),
            ("ListModels", "OK", ""),
            ("StreamChat", "CANCELLED", ""),
            ("StreamChat", "OK", ""),
            ("StreamChat", "UNAVAILABLE", "UPSTREAM_STREAM_TRUNCATED"),
            ("TestKey", "OK", ""),
        ]
        ok = [r for r in records if r.status_code == "OK" and r.method in ("Chat", "StreamChat")]
        for record, result in zip(sorted(ok, key=lambda r: r.method), (answer, streamed), strict=True):
            assert [record.input_tokens, record.output_tokens] == expected_usage[:2]
            assert record.usage_reported and record.cost_usd == pytest.approx(result.usage.cost_usd)
            assert record.model.startswith("gpt-4o-mini")
            assert record.time_to_first_token is not None and record.latency >= record.time_to_first_token
        assert all(r.token_id.startswith("tok_") and r.provider == "openai" for r in records)
        assert len({r.request_id for r in records}) == 8

        summary = client.usage_summary(datetime.now(UTC) - timedelta(days=1))
        assert summary.totals.calls == 8 and summary.totals.failed_calls == 4
        assert summary.totals.input_tokens == sum(r.input_tokens for r in records)
        assert summary.totals.output_tokens == sum(r.output_tokens for r in records)
        assert summary.totals.cost_usd == pytest.approx(sum(r.cost_usd for r in records))
        assert [(g.provider, g.totals.calls) for g in summary.by_provider] == [("openai", 8)]

        # Another user sees none of it.
        with user_client(stack, "someone-else") as other:
            assert all_records(other) == []
            assert other.usage_summary(datetime.now(UTC) - timedelta(days=1)).totals.calls == 0


def rmllm(stack: Stack, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=stack.client_env(token),
        cwd=ROOT,
        timeout=60,
    )


def test_the_usage_commands(stack: Stack) -> None:
    token = stack.create_user("reporter")
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        for _ in range(3):
            stack.enqueue({"transcript": "openai_basic"})
            client.chat("openai", "Hello")
        until(lambda: client.usage_summary(datetime.now(UTC) - timedelta(hours=1)).totals.calls == 3)
    shown = rmllm(stack, token, "usage", "--since", "7d")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split() == [
        "PROVIDER",
        "MODEL",
        "CALLS",
        "FAILED",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "REASONING",
        "COST",
    ]
    total = next(line for line in lines if line.startswith("TOTAL")).split()
    assert total[1:5] == ["3", "0", "72", "24"]
    assert "per day, by cost:" in lines and sum("█" in line for line in lines) == 1
    assert len([line for line in lines if line[:4].isdigit() and "calls" in line]) == 8  # 7 days ago to today
    bad = rmllm(stack, token, "usage", "--since", "last week")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1

    report = stack.vault_cli("usage", "report", "--by", "user", "--format", "csv")
    assert report.returncode == 0, report.stderr
    rows = {line.split(",")[0]: line.split(",") for line in report.stdout.splitlines()[1:]}
    assert rows["reporter"][1:5] == ["3", "0", "72", "24"]
    (Path(stack.data_dir) / "usage-readme.txt").write_text(shown.stdout + "\n" + report.stdout)


def test_a_budget_and_a_policy_set_by_the_operator_are_enforced(stack: Stack) -> None:
    with user_client(stack, "budgeted") as client:
        cost = 0.0
        stack.enqueue({"transcript": "openai_basic"})
        cost = client.chat("openai", "Hello").usage.cost_usd
        assert cost > 0
        # A budget of about two and a half calls: the third call is the last one let through.
        limit = f"{cost * 2.5:.10f}"
        set_budget = stack.vault_cli("users", "budget", "budgeted", "--daily-usd", limit)
        assert set_budget.returncode == 0, set_budget.stderr
        allowed = 1
        stack.control("PUT", "default", {"transcript": "openai_basic", "route": "chat"})
        try:
            for _ in range(10):
                try:
                    client.chat("openai", "Hello")
                    allowed += 1
                except cerr.BudgetExceeded as exc:
                    refused = exc
                    break
            else:
                pytest.fail("the budget never refused a call")
        finally:
            stack.reset_fake()
        # 3, exactly: the spend the vault read plus what this replica has not reported yet.
        # 2 only when a usage report was stored during the check (read before it was stored,
        # acknowledged before the compare): the check counts it twice, never zero times.
        assert allowed in (2, 3)
        assert refused.code.name == "RESOURCE_EXHAUSTED"
        assert refused.metadata["period"] == "daily" and refused.metadata["scope"] == "user"
        assert float(refused.metadata["budget_usd"]) == pytest.approx(cost * 2.5, rel=1e-6)
        assert float(refused.metadata["spent_usd"]) == pytest.approx(cost * 3, rel=1e-6)
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
        assert refused.metadata["reset_time"] == tomorrow
        assert refused.retry_after is not None and 0 < refused.retry_after <= 86_400

        cleared = stack.vault_cli("users", "budget", "budgeted", "--clear")
        assert cleared.returncode == 0 and "no budget" in cleared.stdout
        policy = stack.vault_cli("users", "policy", "budgeted", "--allow", "openai/gpt-4o-mini", "--deny", "")
        assert policy.returncode == 0, policy.stderr
        with pytest.raises(cerr.ModelNotAllowed) as caught:
            client.chat("openai", "Hello", model="gpt-4o")
        assert caught.value.metadata == {"provider": "openai", "model": "gpt-4o"}
        stack.enqueue({"transcript": "openai_basic"})
        client.chat("openai", "Hello", model="gpt-4o-mini")
        assert [m.id for m in client.models("openai").models] == ["gpt-4o-mini"]
        assert [p.id for p in client.providers()] == ["openai"]


def test_a_token_budget_and_policy_make_a_virtual_key(stack: Stack) -> None:
    first = stack.create_user("virtual")
    made = stack.vault_cli("tokens", "create", "virtual")
    assert made.returncode == 0, made.stderr
    second = made.stdout.strip().splitlines()[-1]
    token_id = made.stdout.split("token id: ", 1)[1].split()[0]
    with (
        Client(first, llm_target=stack.llm.address, vault_target=stack.vault.address) as owner,
        Client(second, llm_target=stack.llm.address, vault_target=stack.vault.address) as service,
    ):
        owner.put_config("openai", KEYS["openai"], base_url=stack.base_url("openai"))
        stack.enqueue({"transcript": "openai_basic"})
        cost = service.chat("openai", "Hello").usage.cost_usd
        budget = stack.vault_cli("tokens", "budget", token_id, "--daily-usd", f"{cost * 1.5:.10f}")
        assert budget.returncode == 0 and f"token {token_id}: daily budget" in budget.stdout
        policy = stack.vault_cli("tokens", "policy", token_id, "--allow", "openai/gpt-4o-mini*")
        assert policy.returncode == 0, policy.stderr
        stack.control("PUT", "default", {"transcript": "openai_basic", "route": "chat"})
        try:
            with pytest.raises(cerr.ModelNotAllowed):  # the token's policy
                service.chat("openai", "Hello", model="gpt-4o")
            service.chat("openai", "Hello")  # one call spent of a budget of 1.5: still under
            with pytest.raises(cerr.BudgetExceeded) as caught:
                service.chat("openai", "Hello")
            assert caught.value.metadata["scope"] == "token"
            # The user's other token is neither limited nor restricted.
            owner.chat("openai", "Hello", model="gpt-4o")
            owner.chat("openai", "Hello")
        finally:
            stack.reset_fake()
        until(lambda: len(all_records(owner)) == 6)
        by_token: dict[str, list[str]] = {}
        for record in all_records(owner):
            by_token.setdefault(record.token_id, []).append(record.reason)
        assert sorted(by_token[token_id]) == ["", "", "BUDGET_EXCEEDED", "MODEL_NOT_ALLOWED"]
        assert sorted(by_token.values(), key=len)[0] == ["", ""]
