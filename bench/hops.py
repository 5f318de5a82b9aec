"""What each hop of the Chat path costs in CPU, measured piece by piece in one process.

``python -m bench.hops --fake HOST:PORT`` times, with ``time.process_time`` over
many repetitions, the pieces that can be run on their own:

* LLM service: the protobuf work of a Chat (parse the request, build and serialise
  the answer), request validation, JSON and SSE handling (the request body, the
  fake's event stream decoded and parsed as the OpenAI adapter does), and the whole
  provider call through the real adapter and ``aiohttp`` session against the fake
  provider running in its own process (so its CPU is not counted here);
* vault: the database lookup of a resolve (the one SELECT), the AES-GCM decryption,
  and a whole ``configs.resolve`` (lookup, decryption, usage count, audit row and
  the commit) on a fresh SQLite database with the same settings as the service.

The hops that only exist between processes (gRPC in and out, the vault round trip)
are derived in ``bench.report`` from these and the per-process CPU of the load runs.
Prints one JSON object: microseconds of CPU per operation (and wall time for the
resolve, whose commit waits for the disk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from realmultillm.llm.v1 import llm_pb2

from llm_service.adapters.base import Endpoint, Finished, FinishReason, TextDelta, Usage
from llm_service.adapters.exchange import load_event
from llm_service.adapters.openai import OpenAIAdapter, build_body
from llm_service.http import new_http_session
from llm_service.netpolicy import EndpointPolicy
from llm_service.servicer import chat_response
from llm_service.sse import SSEDecoder
from llm_service.validation import validate_chat
from rmllm_common.registry import default_registry
from rmllm_common.secret import Secret


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """CPU microseconds per call of ``fn`` (after a short warm-up)."""
    for _ in range(max(10, repeat // 20)):
        fn()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) * 1e6 / repeat


def llm_pieces(fake: str, repeat: int) -> dict[str, float]:
    """The LLM service's in-process pieces."""
    registry = default_registry()
    spec = registry.resolve("openai")
    request = llm_pb2.ChatRequest(
        provider="openai",
        messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="Say hello in one short sentence.")],
    )
    wire = request.SerializeToString()
    endpoint = Endpoint(spec, f"http://{fake}/v1", Secret("sk-bench" + secrets.token_hex(16)))
    chat = validate_chat(request, registry)
    params = chat.params()
    finished = Finished(finish_reason=FinishReason.STOP, usage=Usage(8, 6, 14), model=params.model)

    def protobuf() -> None:
        llm_pb2.ChatRequest.FromString(wire)
        chat_response(spec, params, "Hello from the fake provider.", finished).SerializeToString()

    out = {
        "llm_protobuf": per_call_us(protobuf, repeat),
        "llm_validation": per_call_us(lambda: validate_chat(request, registry).params(), repeat),
    }
    answer = asyncio.run(_fetch_answer(endpoint, params))

    def json_sse() -> None:
        json.dumps(build_body(endpoint, params), ensure_ascii=False).encode()
        for event in SSEDecoder().feed(answer):
            if event.data and event.data != "[DONE]":
                chunk = load_event(endpoint, event.data)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta")
                    if delta and delta.get("content"):
                        TextDelta(delta["content"])

    out["llm_json_sse"] = per_call_us(json_sse, repeat)
    out["llm_adapter_call"] = asyncio.run(_adapter_us(endpoint, params, max(200, repeat // 5)))
    return out


async def _fetch_answer(endpoint: Endpoint, params: Any) -> bytes:
    async with aiohttp.ClientSession() as http:
        body = json.dumps(build_body(endpoint, params)).encode()
        async with http.post(
            endpoint.base_url + "/chat/completions", data=body, headers=endpoint.headers()
        ) as r:
            return await r.read()


async def _adapter_us(endpoint: Endpoint, params: Any, repeat: int) -> float:
    """CPU per complete provider call through the adapter (sequential, warm connection)."""
    # The fake provider is on loopback, which the default outbound policy refuses.
    http = new_http_session(64, policy=EndpointPolicy.parse("127.0.0.0/8"))
    adapter = OpenAIAdapter()
    try:

        async def once() -> None:
            async for _event in adapter.stream_chat(http, endpoint, params, 30.0):
                pass

        for _ in range(20):
            await once()
        start = time.process_time()
        for _ in range(repeat):
            await once()
        return (time.process_time() - start) * 1e6 / repeat
    finally:
        await http.close()


def vault_pieces(repeat: int) -> dict[str, float]:
    """The vault's in-process pieces, on a fresh SQLite database."""
    from vault_service import accounts, configs, migrations
    from vault_service.crypto import Keyring
    from vault_service.database import Database

    with tempfile.TemporaryDirectory(prefix="rmllm-hops-") as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'vault.sqlite3'}")
        try:
            migrations.migrate(db)
            keyring = Keyring(Secret(secrets.token_urlsafe(48)))
            principal, _token_id, token = accounts.create_user(db, "hops")
            user_id = principal.user_id
            blob = keyring.encrypt(Secret("sk-bench" + secrets.token_hex(16)), user_id, "openai")
            draft = configs.Draft(blob, keyring.current.key_id, "abcd", "", configs.Settings())
            db.call(configs.put, db, user_id, "openai", draft, "hops")
            raw = token.reveal()
            digest = accounts.token_hash(raw)
            select = configs._RESOLVE  # the resolve's one SELECT, as the vault runs it

            def lookup() -> None:
                db.call(lambda: db.execute(select, ("openai", digest, time.time_ns() // 1000)).fetchone())

            resolve_repeat = max(100, repeat // 10)
            wall = time.perf_counter()
            resolve_us = per_call_us(
                lambda: db.call(configs.resolve, db, keyring, raw, "openai", "hops"), resolve_repeat
            )
            wall_ms = (time.perf_counter() - wall) * 1e3 / (resolve_repeat * 1.05)
            return {
                "vault_token_hash": per_call_us(lambda: accounts.token_hash(raw), repeat),
                "vault_db_lookup": per_call_us(lookup, repeat),
                "vault_decrypt": per_call_us(lambda: keyring.decrypt(blob, user_id, "openai"), repeat),
                "vault_resolve_total": resolve_us,
                "vault_resolve_wall_ms": wall_ms,
            }
        finally:
            db.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.hops --fake HOST:PORT [--repeat N]``: one JSON object on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.hops")
    parser.add_argument("--fake", required=True, help="the fake provider's HOST:PORT")
    parser.add_argument("--repeat", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("RMLLM_LOG_LEVEL", "warning")
    out = {**llm_pieces(args.fake, args.repeat), **vault_pieces(args.repeat)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
