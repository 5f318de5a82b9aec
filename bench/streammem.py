"""Memory per open StreamChat, by owner: ``python -m bench.streammem --streams N``.

Starts the slow fake provider (a process of its own), and in this process a fake
vault and the real LLM server with the real adapters; opens ``N`` StreamChats
from a client in this process, waits until every one has its first delta (all
open at once), and compares ``tracemalloc`` snapshots taken before and then.
Each allocation still alive is charged by the frames that made it: to the client
(this module's own calls: not the server's cost), to our code (``llm_service``,
``rmllm_common``), to ``aiohttp``, to ``grpc``'s Python layer, to ``asyncio``, or
to the rest. Printed as one JSON object: bytes per stream per owner and the
largest allocation sites. Memory that ``tracemalloc`` cannot see (gRPC's C core,
the kernel's socket buffers) is not in these figures; the RSS figure includes it.

``--rss`` measures that figure on its own, quickly, the way ``python -m bench``
phase 4 does: a vault process, a fresh LLM service process (the cache on) and the
slow fake; the client here opens N StreamChats on ``max(1, min(64, N // 100))``
channels, waits until every one has had its first delta, and reports (the LLM
process's RSS with N open - its RSS before) / N. ``--config NAME:K=V,K=V`` (repeatable)
adds environment to the LLM process (``MALLOC_ARENA_MAX=2``, ...), ``--source`` runs
a configuration from another checkout (``NAME@/path:K=V``), and ``--rounds`` alternates
them, each measurement in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from bench import procstat
from bench.stack import ROOT, Stack, raise_fd_limit, start
from llm_service.server import build_server
from llm_service.settings import LLMSettings

sys.path.insert(0, str(ROOT / "tests"))
from testkit.llm_fake_vault import FakeVault, StoredKey
from testkit.llm_harness import ALICE, SERVICE_TOKEN, auth

OWNERS = (
    ("ours", os.sep + "llm_service" + os.sep),
    ("ours", os.sep + "rmllm_common" + os.sep),
    ("aiohttp", os.sep + "aiohttp" + os.sep),
    ("grpc", os.sep + "grpc" + os.sep),
    ("asyncio", os.sep + "asyncio" + os.sep),
)


async def open_one(stub: Any, request: llm_pb2.StreamChatRequest, calls: list[Any]) -> None:
    """The client: one StreamChat, held open after its first delta."""
    call = stub.StreamChat(request, metadata=auth(), timeout=600)
    calls.append(call)
    first = await call.read()
    assert first.WhichOneof("event") == "delta", first


_SOURCE, _FIRST = inspect.getsourcelines(open_one)
_CLIENT_LINES = range(_FIRST, _FIRST + len(_SOURCE))


def owner_of(trace: tracemalloc.Traceback) -> str:
    """Who made an allocation: the client if made under ``open_one``, else the innermost known owner."""
    if any(f.filename == __file__ and f.lineno in _CLIENT_LINES for f in trace):
        return "client"
    for frame in reversed(trace):  # innermost first: tracemalloc lists the oldest frame first
        for owner, marker in OWNERS:
            if marker in frame.filename:
                return owner
    return "other"


async def measure(streams: int, fake_address: str, top: int) -> dict[str, Any]:
    vault = FakeVault(SERVICE_TOKEN, users={ALICE: "u-alice"})  # type: ignore[abstract]
    vault.keys[("u-alice", "openrouter")] = StoredKey(
        "sk-or-v1-" + "0" * 64, base_url=f"http://{fake_address}/openrouter/api/v1"
    )
    vault_address = await vault.start()
    settings = LLMSettings.from_env(
        {
            "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
            "RMLLM_VAULT_ADDR": vault_address,
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
            "RMLLM_ALLOWED_ENDPOINT_NETWORKS": fake_address,
            "RMLLM_CHAT_RATE_PER_MINUTE": "0",
            "RMLLM_MAX_CONCURRENT_STREAMS": "0",  # one user holds them all
            "RMLLM_CREDENTIAL_CACHE_SECONDS": "30",
        },
        listen="127.0.0.1:0",
    )
    handle = await build_server(settings)
    await handle.server.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") for _ in range(max(1, streams // 100))]
    request = llm_pb2.StreamChatRequest(
        provider="openrouter", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="Hi")]
    )
    calls: list[Any] = []
    stubs = [llm_pb2_grpc.LLMServiceStub(channel) for channel in channels]

    try:
        await open_one(stubs[0], request, calls)  # warm: connections, caches, the first resolve
        for call in calls:
            call.cancel()
        calls.clear()
        await asyncio.sleep(0.5)
        gc.collect()
        tracemalloc.start(30)
        before = tracemalloc.take_snapshot()
        await asyncio.gather(*(open_one(stubs[i % len(stubs)], request, calls) for i in range(streams)))
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
        await handle.stop(0)
        await vault.stop()
    by_owner: dict[str, int] = defaultdict(int)
    sites: dict[tuple[str, str], int] = defaultdict(int)
    for stat in after.compare_to(before, "traceback"):
        if stat.size_diff <= 0:
            continue
        owner = owner_of(stat.traceback)
        by_owner[owner] += stat.size_diff
        frame = stat.traceback[-1]  # where the allocation itself happened
        sites[(owner, f"{Path(frame.filename).name}:{frame.lineno}")] += stat.size_diff
    server = sum(size for owner, size in by_owner.items() if owner != "client")
    return {
        "streams": streams,
        "bytes_per_stream": {owner: round(size / streams) for owner, size in sorted(by_owner.items())},
        "server_bytes_per_stream": round(server / streams),
        "top_sites": [
            {"owner": owner, "site": site, "bytes_per_stream": round(size / streams)}
            for (owner, site), size in sorted(sites.items(), key=lambda kv: -kv[1])[:top]
        ],
    }


KB = 1024


def parse_config(text: str) -> tuple[str, Path, dict[str, str]]:
    """``NAME[@SOURCE][:K=V,K=V]``: a name, the checkout to run, the LLM process's extra environment."""
    head, _, env_text = text.partition(":")
    name, _, source = head.partition("@")
    env = dict(item.split("=", 1) for item in env_text.split(",") if item)
    return name, Path(source) if source else ROOT, env


async def hold_streams(address: str, token: str, streams: int, pid: int) -> dict[str, float]:
    """Open ``streams`` StreamChats at ``address``: the LLM's RSS before, and with them open."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, min(64, streams // 100)))]
    stubs = [llm_pb2_grpc.LLMServiceStub(channel) for channel in channels]
    request = llm_pb2.StreamChatRequest(
        provider="openrouter", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="Hi")]
    )
    metadata = (("authorization", f"Bearer {token}"),)
    calls: list[Any] = []
    failed: list[str] = []

    async def one(index: int) -> None:
        call = stubs[index % len(stubs)].StreamChat(request, metadata=metadata, timeout=900)
        calls.append(call)
        try:
            first: Any = await call.read()
        except grpc.aio.AioRpcError as exc:
            failed.append(exc.code().name)
            return
        assert first.WhichOneof("event") == "delta", first

    try:
        await asyncio.gather(*(one(i) for i in range(len(stubs))))  # warm: every channel, the first resolve
        if failed:
            raise RuntimeError(f"the warm-up streams failed: {failed}")
        for call in calls:
            call.cancel()
        calls.clear()
        await asyncio.sleep(2.0)
        before = procstat.rss_bytes(pid)
        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(streams)))
        opened_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the server settle (no stream ends: the fake is slow)
        open_rss = procstat.rss_bytes(pid)
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    opened = streams - len(failed)
    return {
        "rss_before_mb": before / KB / KB,
        "rss_open_mb": open_rss / KB / KB,
        "kb_per_stream": (open_rss - before) / KB / max(1, opened),
        "open_s": opened_s,
        "failed": float(len(failed)),
    }


def measure_rss(
    streams: int, configs: list[str], rounds: int, say: Any, *, delay: float = 15.0
) -> dict[str, Any]:
    """Each configuration in a fresh LLM process per round, alternating; KB per stream (RSS)."""
    parsed = [parse_config(c) for c in configs]
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in parsed}
    with tempfile.TemporaryDirectory(prefix="rmllm-bench-streammem-") as tmp:
        stack = Stack(Path(tmp))
        try:
            slow = stack.start_fake(
                "slow-fake", "--default", "slow", "--slow-delay", f"{delay:g}", "--slow-pieces", "100"
            )
            stack.start_vault()
            token = stack.create_user()
            stack.put_key(
                "openrouter", "sk-or-bench" + secrets.token_hex(16), f"http://{slow.address}/api/v1"
            )
            for round_no in range(rounds):
                for name, source, env in parsed:
                    llm = stack.start_llm(f"llm-{name}", cache_seconds=30, extra_env=env, source=source)
                    try:
                        row = asyncio.run(hold_streams(llm.address, token, streams, llm.pid))
                    finally:
                        stack.stop_proc(llm)
                    rows[name].append(row)
                    say(
                        f"round {round_no} {name}: {row['kb_per_stream']:.1f} KB/stream "
                        f"({row['rss_before_mb']:.1f} -> {row['rss_open_mb']:.1f} MB, "
                        f"opened in {row['open_s']:.1f}s, {row['failed']:.0f} failed)"
                    )
        finally:
            stack.stop()
    return {
        "streams": streams,
        "rounds": rounds,
        "kb_per_stream": {
            name: statistics.median(r["kb_per_stream"] for r in runs) for name, runs in rows.items()
        },
        "runs": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streammem", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--rss", action="store_true", help="RSS per stream of a real LLM service process")
    parser.add_argument(
        "--config", action="append", default=[], help="with --rss: NAME[@SOURCE][:K=V,K=V] (repeatable)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --rss: alternations of the configurations"
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=15.0,
        help="with --rss: seconds between the slow fake's events (default 15)",
    )
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.rss:
        started = time.monotonic()

        def say(message: str) -> None:
            print(f"[streammem {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

        print(
            json.dumps(
                measure_rss(args.streams, args.config or ["default"], args.rounds, say, delay=args.delay),
                indent=2,
            )
        )
        return
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    fake = start(
        "fake-slow",
        [
            "fakes.server",
            "--port",
            "0",
            "--no-record",
            "--default",
            "slow",
            "--slow-delay",
            "30",
            "--slow-pieces",
            "3",
        ],
        env,
    )
    try:
        result = asyncio.run(measure(args.streams, f"127.0.0.1:{fake.port}", args.top))
    finally:
        fake.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
