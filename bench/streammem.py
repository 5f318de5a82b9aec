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
the kernel's socket buffers) is not in these figures; the benchmark's RSS figure
(``python -m bench``, phase 4) includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import sys
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from bench.stack import ROOT, raise_fd_limit, start
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streammem", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    raise_fd_limit()
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
