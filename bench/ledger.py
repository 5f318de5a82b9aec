"""The usage ledger's cost and exactness: ``python -m bench.ledger [--calls N] [--concurrency C]``.

Two measurements, printed as one JSON object:

* ``cpu_us_per_call``: the LLM service's CPU for accounting one Chat, timed with
  ``time.process_time`` over many repetitions in this process: opening and closing
  the call's record (``accounting.recorded``), the notes the call path makes
  (caller, target, first token, usage), submitting it to the reporter, and the
  reporter's share of sending it (building its ``UsageRecord`` and serialising it
  in a batch of 500). Nothing of it waits on I/O, so it adds no latency to the call.
* ``vault``: the vault's CPU per ResolveCredentials / AuthenticateToken for reading
  the caller's limits (one primary-key lookup; with a budget, the spend summed
  from the rollups too), each inside its own pooled connection as the service runs it;
  and its CPU per record to ingest a ReportUsage message of 500 (one transaction).
* the soak: a real stack (fake provider in fast mode, vault on SQLite, LLM
  service) serves ``--calls`` Chats at ``--concurrency``; the LLM service is then
  stopped (SIGTERM flushes its buffer) and the ledger must hold exactly one
  successful record per call answered, with token sums equal to what the fake
  provider reported in the answers (``ledger_exact``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc
from realmultillm.vault.v1 import vault_pb2

from bench.stack import Stack
from clients import Client
from llm_service import accounting
from llm_service.deadline import Deadline
from llm_service.usage import UsageReporter
from vault_service import accounts, ledger, limits, migrations
from vault_service.database import Database

BATCH = 500


def _per_call(fn: Callable[[], None], repeat: int) -> float:
    """Microseconds of CPU per call of ``fn``."""
    fn()
    started = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - started) * 1e6 / repeat


def accounting_cpu(repeat: int = 20_000) -> dict[str, float]:
    """CPU microseconds per Chat spent on its usage record, by piece and in total."""

    async def send(batches: Any, timeout: float) -> vault_pb2.ReportUsageResponse:
        return vault_pb2.ReportUsageResponse()

    reporter = UsageReporter(send, max_buffer=10**9)  # not started: submit only appends
    usage = llm_pb2.Usage(input_tokens=24, output_tokens=8, total_tokens=32, cost_usd=0.0000084)
    deadline = Deadline.after(None)

    def one_call() -> None:
        with accounting.recorded(reporter, "Chat", False, deadline):
            accounting.note_target("openai")
            accounting.note_caller("usr_0123456789abcdef", "tok_0123456789ab")
            accounting.note_target("openai", "gpt-4o-mini")
            accounting.note_first_token()
            accounting.note_usage(usage, "gpt-4o-mini-2024-07-18", True)

    record_us = _per_call(one_call, repeat)
    finished = list(reporter._buffer)[:BATCH]

    def serialise() -> None:  # what the reporter does per batch: build the protos, serialise
        vault_pb2.ReportUsageRequest(records=[r.to_proto() for r in finished]).SerializeToString()

    send_us = _per_call(serialise, max(1, repeat // BATCH)) / len(finished)
    message = vault_pb2.ReportUsageRequest(records=[r.to_proto() for r in finished])
    return {
        "record_and_submit_us": record_us,
        "send_share_us": send_us,
        "cpu_us_per_call": record_us + send_us,
        "record_bytes": len(message.SerializeToString()) / len(finished),
    }


def vault_lookup_cpu(repeat: int = 5_000) -> dict[str, float]:
    """The vault's CPU per resolve for the limits it now returns (SQLite, as the service runs it)."""
    with tempfile.TemporaryDirectory(prefix="rmllm-ledger-bench-") as tmp:
        db = Database(f"sqlite:///{tmp}/vault.sqlite3")
        try:
            migrations.migrate(db)
            principal, token_id, _ = db.call(accounts.create_user, db, "bench")
            user_id = principal.user_id

            def lookup() -> None:
                db.call(limits.lookup, db, user_id, token_id)

            none_us = _per_call(lookup, repeat)
            target = db.call(limits.user_target, db, "bench")
            db.call(functools.partial(limits.set_budget, daily=5.0, monthly=50.0), db, target)
            budget_us = _per_call(lookup, repeat)
            batches = itertools.count()

            def ingest() -> None:  # one ReportUsage message of BATCH new records, as the vault stores it
                start = next(batches) * BATCH
                now = ledger.now_us()
                entries = [
                    ledger.Entry(
                        f"b{start + i}",
                        now,
                        user_id,
                        token_id,
                        "openai",
                        "gpt-4o-mini",
                        "Chat",
                        False,
                        24,
                        8,
                        0,
                        0,
                        0,
                        True,
                        8.4e-6,
                        3000,
                        2000,
                        "OK",
                        "",
                        0,
                    )
                    for i in range(BATCH)
                ]
                db.call(ledger.ingest, db, entries)

            ingest_us = _per_call(ingest, 8) / BATCH
        finally:
            db.close()
    return {
        "limits_lookup_us": none_us,
        "limits_lookup_with_budget_us": budget_us,
        "ingest_us_per_record": ingest_us,
    }


async def _drive(address: str, token: str, calls: int, concurrency: int) -> dict[str, int]:
    counter = itertools.count()
    totals = {"ok": 0, "failed": 0, "input_tokens": 0, "output_tokens": 0}
    request = llm_pb2.ChatRequest(
        provider="openai", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="Count to three")]
    )
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = llm_pb2_grpc.LLMServiceStub(channel)

        async def worker() -> None:
            while next(counter) < calls:
                try:
                    reply = await stub.Chat(request, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError:
                    totals["failed"] += 1
                    continue
                totals["ok"] += 1
                totals["input_tokens"] += reply.usage.input_tokens
                totals["output_tokens"] += reply.usage.output_tokens

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return totals


def soak(calls: int, concurrency: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Serve ``calls`` Chats through a real stack; compare the ledger with what was served."""
    with tempfile.TemporaryDirectory(prefix="rmllm-ledger-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            fake = stack.start_fake("fake")
            vault = stack.start_vault()
            token = stack.create_user()
            stack.put_key("openai", "sk-bench0123456789abcdef", f"http://{fake.address}/v1")
            llm = stack.start_llm("llm")
            say(f"soak: {calls} Chats at concurrency {concurrency}")
            started = time.monotonic()
            served = asyncio.run(_drive(llm.address, token, calls, concurrency))
            elapsed = time.monotonic() - started
            stack.stop_proc(llm)  # SIGTERM: the reporter flushes before the process exits
            reporter = _reporter_stats(list(llm.tail))
            with Client(token, vault_target=vault.address) as client:
                summary = client.usage_summary(datetime.now(UTC) - timedelta(days=1))
        finally:
            stack.stop()
    ledger = {
        "records": summary.totals.calls,
        "failed": summary.totals.failed_calls,
        "input_tokens": summary.totals.input_tokens,
        "output_tokens": summary.totals.output_tokens,
    }
    # Every answered call is in the ledger once, with the tokens its answer carried. A call
    # that failed is recorded too when it got as far as a known user (a vault that could not
    # be reached under load, for one, never told the LLM service whose call it was).
    exact = (
        ledger["records"] - ledger["failed"] == served["ok"]
        and ledger["failed"] <= served["failed"]
        and ledger["input_tokens"] == served["input_tokens"]
        and ledger["output_tokens"] == served["output_tokens"]
    )
    return {
        "calls": calls,
        "seconds": elapsed,
        "served": served,
        "ledger": ledger,
        "reporter": reporter,
        "ledger_exact": exact,
    }


def _reporter_stats(lines: list[str]) -> dict[str, Any]:
    """The LLM service's ``usage_reporter_stopped`` log line: reported, duplicates, overflow, lost."""
    for line in reversed(lines):
        if '"usage_reporter_stopped"' in line:
            event = json.loads(line)
            return {k: event.get(k) for k in ("reported", "duplicates", "overflow", "lost")}
    return {}


def main(argv: list[str] | None = None) -> int:
    """Measure; print the JSON; exit 1 when the ledger is not exact."""
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="Chats in the soak (default 100000)")
    parser.add_argument("--concurrency", type=int, default=32, help="Chats in flight (default 32)")
    parser.add_argument("--repeat", type=int, default=20_000, help="repetitions of the CPU measurement")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench.ledger {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"accounting": accounting_cpu(args.repeat), "vault": vault_lookup_cpu()}
    say(f"accounting: {result['accounting']['cpu_us_per_call']:.1f} us of CPU per Chat")
    if args.calls > 0:
        result["soak"] = soak(args.calls, args.concurrency, say)
        say(f"soak: ledger exact: {result['soak']['ledger_exact']}")
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0 if result.get("soak", {}).get("ledger_exact", True) else 1


if __name__ == "__main__":
    sys.exit(main())
