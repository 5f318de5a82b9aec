"""The fake provider HTTP server (aiohttp.web): every provider's real paths, scripted answers.

``FakeProvider`` serves, on one loopback port, the paths of every registry
provider: ``POST .../chat/completions`` (``/v1``, ``/api/v1``, ``/inference``),
``POST /v1/messages``, ``POST /v1beta/models/{m}:streamGenerateContent?alt=sse``
and ``:generateContent``, Ollama's native ``POST .../api/chat`` (NDJSON, streamed
unless ``"stream": false``), and the probe/listing GETs (``/v1/models``,
``/api/v1/key``, ``/v1/api-key``, ``/catalog/models``, ``/api/tags``,
``/v1beta/models``). Each request takes the first queued ``Scenario`` whose
``route`` fits, else the default scenario, else a synthetic answer in the
request's wire format (GETs: the provider's canned probe/listing reply). Every
request is recorded (method, path, query, headers, body) with whether the client
disconnected before the answer was complete. Run it in-process
(``async with FakeProvider() as fake``) or as a process: see ``fakes`` and ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from fakes import account_replies, provider_errors, synth
from fakes.scenario import Scenario
from rmllm_common.registry import default_registry

_SSE = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_NDJSON = {"Content-Type": "application/x-ndjson"}  # what Ollama's streamResponse sets
_JSON = {"Content-Type": "application/json"}


@dataclass
class RecordedRequest:
    """One request the fake received, and how its answer went."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any
    route: str  # "chat" or "get"
    provider: str
    scenario: str = ""
    peer: str = ""  # the client's host:port (the same for requests on one kept-alive connection)
    outcome: str = "pending"  # answered | disconnected | truncated | ended_early | stalled | hung
    disconnected: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def api_key(self) -> str:
        """The key the request carried, whichever header it used ("" if none)."""
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return self.headers.get("x-api-key") or self.headers.get("x-goog-api-key") or ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form served by ``GET /_fake/requests``."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "json": self.json,
            "route": self.route,
            "provider": self.provider,
            "scenario": self.scenario,
            "peer": self.peer,
            "outcome": self.outcome,
            "disconnected": self.disconnected,
            "finished": self.finished.is_set(),
        }


def wire_format_of(path: str) -> str | None:
    """The wire format a generation path speaks, or None for other paths."""
    if path.endswith("/chat/completions"):
        return "openai"
    if path.endswith("/messages"):
        return "anthropic"
    if ":streamGenerateContent" in path or ":generateContent" in path:
        return "gemini"
    if path.endswith("/api/chat"):
        return "ollama"
    return None


def provider_of(path: str, headers: dict[str, str]) -> str:
    """The registry provider a request is for: by base path, then auth header and key prefix."""
    specs = list(default_registry().providers.values())
    wire = wire_format_of(path)
    for spec in specs:  # a native path (Ollama's /api/chat) belongs to the provider declaring it
        if wire is not None and spec.native_format == wire:
            return spec.id
    for spec in specs:
        if spec.probe.relative_to == "origin" and path == spec.probe.path:
            return spec.id
    matching = [s for s in specs if path.startswith(urlsplit(s.base_url).path + "/")]
    if not matching:
        return "openai"
    longest = max(len(urlsplit(s.base_url).path) for s in matching)
    matching = [s for s in matching if len(urlsplit(s.base_url).path) == longest]
    auth = headers.get("authorization", "")
    key = auth[7:] if auth.lower().startswith("bearer ") else ""
    for spec in sorted(matching, key=lambda s: -len(s.key_prefix)):
        if spec.auth in headers or (key and spec.auth == "bearer" and key.startswith(spec.key_prefix)):
            return spec.id
        if not key and spec.auth == "none":
            return spec.id
    return matching[0].id


class FakeProvider:
    """The fake server. ``async with FakeProvider() as fake: fake.base_url("openai")``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, record: bool = True) -> None:
        self.host, self.port, self.record = host, port, record
        self.requests: list[RecordedRequest] = []
        self.queue: list[list[Any]] = []  # [scenario, remaining times]
        self.default: Scenario | None = None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._fast: dict[tuple[str, str, bool], tuple[bytes, dict[str, str]]] = {}

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: a free one, then in ``self.port``)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)  # bursts of thousands of streams
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Release stalled and hanging requests, then shut down."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, provider: str) -> str:
        """The fake's base URL for a registry provider (its real base path on this origin)."""
        spec = default_registry().providers[provider]
        return self.origin + urlsplit(spec.base_url).path

    def enqueue(self, *scenarios: Scenario) -> None:
        """Queue scenarios; each answers the next ``times`` requests of its route."""
        self.queue.extend([s, s.times] for s in scenarios)

    def set_default(self, scenario: Scenario | None) -> None:
        """The scenario for requests the queue does not answer (None: synthetic answers)."""
        self.default = scenario

    def reset(self) -> None:
        """Forget queued scenarios, the default and recorded requests."""
        self.queue.clear()
        self.default = None
        self.requests.clear()

    async def wait_finished(self, index: int = -1, timeout: float = 10.0) -> RecordedRequest:
        """The recorded request once its handler has ended (answered, disconnected...)."""
        record = self.requests[index]
        await asyncio.wait_for(record.finished.wait(), timeout)
        return record

    def _take(self, route: str) -> Scenario | None:
        for i, entry in enumerate(self.queue):
            scenario: Scenario = entry[0]
            if scenario.route in (None, route):
                entry[1] -= 1
                if entry[1] <= 0:
                    del self.queue[i]
                return scenario
        return self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            try:
                return await self._control(request)
            except (ValueError, KeyError, TypeError) as e:
                return web.json_response({"error": f"bad control request: {e!r}"}, status=400)
        raw = await request.read()
        route = "chat" if request.method == "POST" else "get"
        scenario = self._take(route)
        if scenario is None and route == "chat" and not self.record:
            return self._fast_answer(request, raw)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        record = RecordedRequest(
            request.method,
            request.path,
            dict(request.query),
            headers,
            raw,
            payload,
            route,
            provider_of(request.path, headers),
            scenario.name if scenario else "",
        )
        peer = request.transport.get_extra_info("peername") if request.transport else None
        record.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        if self.record:
            self.requests.append(record)
        try:
            return await self._respond(request, record, scenario)
        except asyncio.CancelledError:
            if not self._closing.is_set():
                record.disconnected, record.outcome = True, "disconnected"
            raise
        except ConnectionError:
            record.disconnected, record.outcome = True, "disconnected"
            raise
        finally:
            record.finished.set()

    def _fast_answer(self, request: web.Request, raw: bytes) -> web.Response:
        """The benchmark's hot path: a cached synthetic answer, nothing recorded."""
        payload = json.loads(raw) if raw else {}
        model = _model_of(request.path, payload)
        cache_key = (request.path_qs, model, bool(payload.get("stream")))
        cached = self._fast.get(cache_key)
        if cached is None:
            segments, content = _synthetic(request, model, payload, synth.DEFAULT_PIECES, None)
            self._fast[cache_key] = cached = (b"".join(segments), content)
        return web.Response(body=cached[0], headers=cached[1])

    async def _respond(
        self, request: web.Request, record: RecordedRequest, scenario: Scenario | None
    ) -> web.StreamResponse:
        scenario = scenario or Scenario()
        if scenario.hang:
            record.outcome = "hung"
            await self._closing.wait()
            return web.Response(status=503)
        status, headers = scenario.status, dict(scenario.headers)
        if scenario.error is not None:
            status, extra, body = provider_errors.error(*scenario.error, record.api_key)
            headers = {**_JSON, **extra, **headers}
            segments = [json.dumps(body).encode()]
        elif scenario.body is not None:
            segments = [scenario.body]
        elif record.route == "get":
            status, extra, body = account_replies.get_reply(
                record.path, record.provider, record.query.get("pageToken", "")
            )
            headers = {**_JSON, **extra, **headers}
            segments = [json.dumps(body).encode()]
        else:
            model = _model_of(record.path, record.json)
            segments, content = _synthetic(request, model, record.json, scenario.pieces, scenario.fail_after)
            headers = {**content, **headers}
        segments = _deliver(segments, scenario)
        if not (scenario.delay or scenario.cut() is not None or scenario.chunks):
            record.outcome = "answered"
            return web.Response(status=status, headers=headers, body=b"".join(segments))
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        for i, segment in enumerate(segments):
            if i and scenario.delay:
                await asyncio.sleep(scenario.delay)
            await response.write(segment)
        cut = scenario.cut()
        if cut is not None and cut == scenario.truncate_at:
            record.outcome = "truncated"
            if request.transport is not None:
                request.transport.close()
            return response
        if cut is not None and cut == scenario.stall_at:
            record.outcome = "stalled"
            await self._closing.wait()
        record.outcome = "ended_early" if cut is not None and cut == scenario.end_at else "answered"
        await response.write_eof()
        return response

    async def _control(self, request: web.Request) -> web.Response:
        action = (request.method, request.path)
        if action == ("POST", "/_fake/scenarios"):
            data = await request.json()
            self.enqueue(*(Scenario.from_dict(d) for d in (data if isinstance(data, list) else [data])))
            return web.json_response({"queued": len(self.queue)})
        if action == ("PUT", "/_fake/default"):
            data = await request.json()
            self.set_default(Scenario.from_dict(data) if data is not None else None)
            return web.json_response({"default": data})
        if action == ("PUT", "/_fake/record"):
            self.record = bool((await request.json()).get("enabled", True))
            return web.json_response({"record": self.record})
        if action == ("GET", "/_fake/requests"):
            return web.json_response([r.to_dict() for r in self.requests])
        if action == ("POST", "/_fake/reset"):
            self.reset()
            return web.json_response({"reset": True})
        return web.json_response({"error": f"no control action {request.method} {request.path}"}, status=404)


def _model_of(path: str, payload: Any) -> str:
    if ":" in path and "/models/" in path:
        return path.rsplit("/models/", 1)[1].split(":", 1)[0]
    model = payload.get("model") if isinstance(payload, dict) else None
    return str(model or "fake-model")


def _wants_stream(wire: str, request: web.Request, payload: Any) -> bool:
    if wire == "gemini":
        return ":streamGenerateContent" in request.path and request.query.get("alt") == "sse"
    if wire == "ollama":  # Ollama streams unless told "stream": false
        return not (isinstance(payload, dict) and payload.get("stream") is False)
    return bool(isinstance(payload, dict) and payload.get("stream"))


def _synthetic(
    request: web.Request, model: str, payload: Any, pieces: tuple[str, ...], fail_after: int | None
) -> tuple[list[bytes], dict[str, str]]:
    """A synthetic answer in the request's wire format, and its Content-Type header."""
    wire = wire_format_of(request.path) or "openai"
    if _wants_stream(wire, request, payload):
        return synth.stream_events(
            wire, model, payload, pieces, fail_after
        ), _NDJSON if wire == "ollama" else _SSE
    body: Any = synth.unary_body(wire, model, payload, pieces)
    if ":streamGenerateContent" in request.path:  # Gemini's stream without alt=sse: a JSON array
        body = [body]
    return [json.dumps(body).encode()], _JSON


def _deliver(segments: list[bytes], scenario: Scenario) -> list[bytes]:
    """The segments to write: cut at the scenario's cut point, re-split by ``chunks``."""
    cut = scenario.cut()
    if cut is not None:
        kept, size = [], 0
        for segment in segments:
            if size + len(segment) >= cut:
                kept.append(segment[: cut - size])
                break
            kept.append(segment)
            size += len(segment)
        segments = [s for s in kept if s]
    if scenario.chunks:
        data, out, i, pos = b"".join(segments), [], 0, 0
        while pos < len(data):
            size = max(1, scenario.chunks[i % len(scenario.chunks)])
            out.append(data[pos : pos + size])
            pos, i = pos + size, i + 1
        segments = out
    return segments


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeProvider(host=args.host, port=args.port, record=not args.no_record)
    if args.default == "slow":
        fake.set_default(
            Scenario.stream(tuple(f" word{i}" for i in range(args.slow_pieces)), delay=args.slow_delay)
        )
    await fake.start()
    print(json.dumps({"event": "serving", "address": f"{fake.host}:{fake.port}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m fakes.server --port 0`` (with ``PYTHONPATH=tests``)."""
    parser = argparse.ArgumentParser(prog="python -m fakes.server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="record nothing: the benchmark's fast mode")
    parser.add_argument("--default", choices=("synthetic", "slow"), default="synthetic")
    parser.add_argument("--slow-delay", type=float, default=0.05, help="seconds between events in slow mode")
    parser.add_argument("--slow-pieces", type=int, default=20, help="text events per answer in slow mode")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))
    sys.exit(0)


if __name__ == "__main__":
    main()
