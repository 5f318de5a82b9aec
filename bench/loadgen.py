"""The load generator: a separate process that runs bounded load on request.

``python -m bench.loadgen`` reads one JSON job per stdin line and answers with one
JSON result line on stdout (the orchestrator keeps it running for the session so
connections stay warm and start-up costs are paid once). A job names its ``kind``:

* ``direct``: POST the gateway's own request body to the fake's
  ``/v1/chat/completions`` with aiohttp, read the event stream to ``[DONE]``,
  decoding the deltas as a caller would;
* ``chat`` / ``stream``: ``Chat`` / ``StreamChat`` on an LLM service over
  ``grpc.aio``, spread over several channels (separate HTTP/2 connections);
* ``hold``: open ``concurrency`` StreamChat calls at once (a slow fake keeps them
  open), print ``{"event": "open"}`` once every one has its first delta, and wait
  for all to end with their final message.

Each job is bounded by ``requests`` (in total) and ``seconds``; ``concurrency``
workers loop until either runs out. Results carry latency and time-to-first-delta
percentiles, requests/s, deltas/s and every error by kind.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from bench.stack import raise_fd_limit

PROMPT = "Say hello in one short sentence."


def direct_body(model: str) -> bytes:
    """The body the gateway sends for the benchmark's request (OpenAI chat completions)."""
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Tally:
    """What one job measured."""

    latencies: list[float] = field(default_factory=list)
    ttfd: list[float] = field(default_factory=list)
    deltas: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def fail(self, kind: str, detail: str = "") -> None:
        """Count one failed request (and keep the first few details)."""
        self.errors[kind] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail}"[:300])

    def summary(self, elapsed: float) -> dict[str, Any]:
        ok = len(self.latencies)
        return {
            "ok": ok,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "error_samples": self.samples,
            "elapsed_s": elapsed,
            "rps": ok / elapsed if elapsed > 0 else 0.0,
            "p50_ms": percentile(self.latencies, 50) * 1e3,
            "p99_ms": percentile(self.latencies, 99) * 1e3,
            "ttfd_p50_ms": percentile(self.ttfd, 50) * 1e3,
            "ttfd_p99_ms": percentile(self.ttfd, 99) * 1e3,
            "deltas": self.deltas,
            "deltas_per_s": self.deltas / elapsed if elapsed > 0 else 0.0,
        }


class Generator:
    """Warm connections and the job runners."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None
        self._channels: dict[tuple[str, int], list[grpc.aio.Channel]] = {}

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trust_env=False)
        return self._http

    def stubs(self, address: str, count: int) -> list[Any]:
        """``count`` stubs on distinct connections to ``address`` (kept for the session)."""
        key = (address, count)
        if key not in self._channels:
            self._channels[key] = [
                grpc.aio.insecure_channel(
                    address,
                    options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", f"{count}-{i}")],
                )
                for i in range(count)
            ]
        return [llm_pb2_grpc.LLMServiceStub(ch) for ch in self._channels[key]]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        for channels in self._channels.values():
            for channel in channels:
                await channel.close()

    async def run(self, job: dict[str, Any]) -> dict[str, Any]:
        kind = job["kind"]
        concurrency = int(job["concurrency"])
        budget = itertools.count()
        limit = int(job["requests"])
        stop_at = time.monotonic() + float(job["seconds"])
        tally = Tally()
        one = self._direct_call(job, tally) if kind == "direct" else self._grpc_call(job, tally)

        async def worker(index: int) -> None:
            while next(budget) < limit and time.monotonic() < stop_at:
                await one(index)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return tally.summary(time.perf_counter() - started)

    def _direct_call(self, job: dict[str, Any], tally: Tally) -> Any:
        http = self.http()
        url = job["url"]
        body = direct_body(job["model"])
        headers = {
            "Authorization": f"Bearer {job['api_key']}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }

        async def one(_index: int) -> None:
            t0 = time.perf_counter()
            first: float | None = None
            deltas = 0
            done = False
            buffer = b""
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    if resp.status != 200:
                        tally.fail(f"http_{resp.status}")
                        await resp.read()
                        return
                    async for chunk in resp.content.iter_any():
                        buffer += chunk
                        *lines, buffer = buffer.split(b"\n")
                        for line in lines:
                            if not line.startswith(b"data: "):
                                continue
                            data = line[6:].strip()
                            if data == b"[DONE]":
                                done = True
                                continue
                            event = json.loads(data)
                            for choice in event.get("choices") or ():
                                if (choice.get("delta") or {}).get("content"):
                                    deltas += 1
                                    if first is None:
                                        first = time.perf_counter()
            except (aiohttp.ClientError, OSError) as exc:
                tally.fail(type(exc).__name__, str(exc))
                return
            if not done:
                tally.fail("no_done")
                return
            end = time.perf_counter()
            tally.latencies.append(end - t0)
            tally.ttfd.append((first or end) - t0)
            tally.deltas += deltas

        return one

    def _grpc_call(self, job: dict[str, Any], tally: Tally) -> Any:
        kind = job["kind"]
        stubs = self.stubs(job["address"], int(job.get("channels", 4)))
        tokens = job.get("tokens") or [job["token"]]  # several: worker i calls as user i (mod their count)
        metadatas = [(("authorization", f"Bearer {token}"),) for token in tokens]
        messages = [llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=PROMPT)]
        provider = job.get("provider", "openai")
        timeout = float(job.get("timeout", 60))
        held: Held | None = job.get("_held")

        async def chat(index: int) -> None:
            stub = stubs[index % len(stubs)]
            t0 = time.perf_counter()
            try:
                reply = await stub.Chat(
                    llm_pb2.ChatRequest(provider=provider, messages=messages),
                    metadata=metadatas[index % len(metadatas)],
                    timeout=timeout,
                )
            except grpc.aio.AioRpcError as exc:
                tally.fail(exc.code().name, f"{exc.details()} after {time.perf_counter() - t0:.2f} s")
                return
            end = time.perf_counter()
            if not reply.content:
                tally.fail("empty")
                return
            tally.latencies.append(end - t0)
            tally.ttfd.append(end - t0)

        async def stream(index: int) -> None:
            stub = stubs[index % len(stubs)]
            t0 = time.perf_counter()
            first: float | None = None
            deltas = 0
            done = False
            try:
                call = stub.StreamChat(
                    llm_pb2.StreamChatRequest(provider=provider, messages=messages),
                    metadata=metadatas[index % len(metadatas)],
                    timeout=timeout,
                )
                async for message in call:
                    if message.HasField("done"):
                        done = True
                    elif message.delta:
                        deltas += 1
                        if first is None:
                            first = time.perf_counter()
                            if held is not None:
                                held.open_now += 1
                                held.opened += 1
            except grpc.aio.AioRpcError as exc:
                tally.fail(exc.code().name, f"{exc.details()} after {time.perf_counter() - t0:.2f} s")
                return
            finally:
                if held is not None and first is not None:
                    held.open_now -= 1
            if not done:
                tally.fail("no_done")
                return
            end = time.perf_counter()
            tally.latencies.append(end - t0)
            tally.ttfd.append((first or end) - t0)
            tally.deltas += deltas

        return chat if kind == "chat" else stream

    async def hold(self, job: dict[str, Any]) -> dict[str, Any]:
        """Open ``concurrency`` streams at once; report how many are open twice a second until all end."""
        held = Held()
        job = {**job, "kind": "stream", "requests": int(job["concurrency"]), "_held": held}
        started = time.perf_counter()
        task = asyncio.ensure_future(self.run(job))
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            held.peak = max(held.peak, held.open_now)
            emit(
                {
                    "event": "progress",
                    "open_now": held.open_now,
                    "opened": held.opened,
                    "after_s": time.perf_counter() - started,
                }
            )
        result = task.result()
        result.update(opened=held.opened, peak_open=held.peak)
        return result


@dataclass
class Held:
    """Streams of a ``hold`` job: how many have had their first delta, and how many are open now."""

    opened: int = 0
    open_now: int = 0
    peak: int = 0


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve_jobs() -> None:
    """Answer jobs from stdin until it closes."""
    raise_fd_limit()
    generator = Generator()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"event": "ready"})
    try:
        while line := await reader.readline():
            job = json.loads(line)
            result = await (generator.hold(job) if job["kind"] == "hold" else generator.run(job))
            emit({"event": "result", **result})
    finally:
        await generator.close()


def main() -> None:
    """``python -m bench.loadgen``."""
    asyncio.run(serve_jobs())


if __name__ == "__main__":
    main()
