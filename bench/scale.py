"""What the scale-out defaults cost: ``python -m bench.scale [--requests N] [--rounds R]``.

Chat at concurrency 1 through four configurations, alternating in each round so
drift on a shared machine hits all of them alike:

* ``direct``: the load generator calls the fake provider itself (the baseline);
* ``cache_off``: the LLM service as it was before (credential cache off, limits in
  memory), every Chat a vault round trip;
* ``defaults``: the new defaults: the credential cache on (30 s, while the watch
  stream is in sync), the per-user limits in memory and enforced (rate set high
  enough never to refuse: the check runs, the benchmark is not throttled);
* ``redis``: the same with ``RMLLM_REDIS_URL``: each Chat takes its rate-limit
  token with one script call on a private ``redis-server`` started here.

For each it prints p50/p99, the p50 added over ``direct``, and the CPU per Chat of
the LLM process, the vault and (``redis``) the Redis server, read from ``/proc``
around each run. The JSON goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.runner import LoadGen
from bench.stack import Stack
from rmllm_common.registry import default_registry

CONFIGS = ("direct", "cache_off", "defaults", "redis")
HIGH_RATE = {"RMLLM_CHAT_RATE_PER_MINUTE": "1000000000", "RMLLM_CHAT_BURST": "1000000"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_server() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def run(requests: int, seconds: float, rounds: int, say: Any) -> dict[str, Any]:
    """Start the stack, alternate the configurations, return per-configuration figures."""
    with tempfile.TemporaryDirectory(prefix="rmllm-bench-scale-") as tmp:
        stack = Stack(Path(tmp))
        redis_proc, redis_port = _redis_server()
        gen: LoadGen | None = None
        try:
            fake = stack.start_fake("fake")
            vault = stack.start_vault()
            token = stack.create_user()
            api_key = "sk-bench" + secrets.token_hex(16)
            stack.put_key("openai", api_key, f"http://{fake.address}/v1")
            say("starting three LLM services: cache off, the new defaults, the new defaults on Redis")
            llms = {
                "cache_off": stack.start_llm("llm-cache-off", cache_seconds=0),
                "defaults": stack.start_llm("llm-defaults", cache_seconds=30, extra_env=HIGH_RATE),
                "redis": stack.start_llm(
                    "llm-redis",
                    cache_seconds=30,
                    extra_env={
                        **HIGH_RATE,
                        "RMLLM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                        "RMLLM_REDIS_PREFIX": f"bench-{secrets.token_hex(4)}:",
                    },
                ),
            }
            gen = LoadGen()
            model = default_registry().resolve("openai").default_model
            jobs: dict[str, dict[str, Any]] = {
                "direct": {
                    "kind": "direct",
                    "url": f"http://{fake.address}/v1/chat/completions",
                    "api_key": api_key,
                    "model": model,
                },
                **{
                    name: {"kind": "chat", "token": token, "provider": "openai", "address": llm.address}
                    for name, llm in llms.items()
                },
            }
            pids: dict[str, dict[str, list[int]]] = {
                "direct": {},
                **{name: {"llm": [llm.pid], "vault": [vault.pid]} for name, llm in llms.items()},
            }
            pids["redis"]["redis"] = [redis_proc.pid]
            warm = {"concurrency": 4, "channels": 1, "requests": 200, "seconds": 10.0}
            for name in CONFIGS:
                gen.run({**jobs[name], **warm})
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
            for round_no in range(rounds):
                for name in CONFIGS:
                    before = {k: procstat.cpu_seconds(p) for k, p in pids[name].items()}
                    result = gen.run(
                        {
                            **jobs[name],
                            "concurrency": 1,
                            "channels": 1,
                            "requests": requests,
                            "seconds": seconds,
                        }
                    )
                    after = {k: procstat.cpu_seconds(p) for k, p in pids[name].items()}
                    ok = max(1, int(result["ok"]))
                    row = {
                        "p50_ms": float(result["p50_ms"]),
                        "p99_ms": float(result["p99_ms"]),
                        "ok": float(result["ok"]),
                        "errors": float(result["errors"]),
                        **{f"cpu_{k}_ms": (after[k] - before[k]) * 1e3 / ok for k in pids[name]},
                    }
                    rows[name].append(row)
                    cpu = " ".join(f"{k[4:-3]} {v:.3f}" for k, v in row.items() if k.startswith("cpu_"))
                    say(f"round {round_no} {name:<9} p50 {row['p50_ms']:.3f} ms  cpu ms/Chat: {cpu}")
        finally:
            if gen is not None:
                gen.close()
            stack.stop()
            redis_proc.terminate()
            redis_proc.wait(10)
    return summarise(rows)


def summarise(rows: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians over the rounds, and each configuration's p50 added over ``direct``."""
    out: dict[str, Any] = {}
    for name, runs in rows.items():
        keys = sorted({k for r in runs for k in r})
        out[name] = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    direct = out["direct"]["p50_ms"]
    for name in CONFIGS[1:]:
        cell = out[name]
        cell["added_p50_ms"] = cell["p50_ms"] - direct
        cell["cpu_server_ms"] = sum(
            v for k, v in cell.items() if k.startswith("cpu_") and k != "cpu_server_ms"
        )
    out["redis_cpu_over_defaults_ms"] = {
        "llm": out["redis"].get("cpu_llm_ms", 0.0) - out["defaults"].get("cpu_llm_ms", 0.0),
        "redis_server": out["redis"].get("cpu_redis_ms", 0.0),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="Chats per run (default 2000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="at most this long per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the four (default 3)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench.scale {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    print(json.dumps(run(args.requests, args.seconds, args.rounds, say), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
