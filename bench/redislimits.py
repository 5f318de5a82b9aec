"""CPU per shared-limit check, in process: ``python -m bench.redislimits [--checks N] [--baseline DIR]``.

Starts a private ``redis-server`` on a free port and, in a child process per run,
times ``--checks`` limit decisions with ``time.process_time`` (the client's CPU,
not Redis's): ``chat`` is one rate-limit take (``RedisRateLimiter.take``),
``stream`` one StreamChat admission and its release (rate token and slot, then
the slot given back). Each runs at concurrency 1 and 16. With ``--baseline DIR``
(another checkout, e.g. ``git archive`` of an older commit) the same runs of that
tree alternate with this one's (A B A B), so a shared machine's drift hits both.
Prints one JSON object: microseconds of CPU per check, the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.scale import _redis_server
from bench.stack import ROOT


async def _measure(url: str, checks: int, mode: str, concurrency: int) -> float:
    from llm_service.redis_limits import RedisRateLimiter, RedisStreamSlots, SharedStore

    store = SharedStore(url, prefix=f"bench-{time.time_ns()}:", failure_mode="open")
    limiter = RedisRateLimiter(store, "chat", "chat", 1e9, 1_000_000)
    slots: Any = RedisStreamSlots(store, 1_000_000, 60)

    async def one(user: str) -> None:
        if mode == "chat":
            await limiter.take(user)
        elif hasattr(slots, "admit"):
            await (await slots.admit(user, limiter)).release()
        else:  # a checkout from before admit: the two scripts it ran
            await limiter.take(user)
            await (await slots.acquire(user)).release()

    async def worker(index: int) -> None:
        for _ in range(checks // concurrency):
            await one(f"u{index}")

    for _ in range(200):
        await one("warm")
    started = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    used = time.process_time() - started
    await slots.close()
    await store.close()
    return used / (checks // concurrency * concurrency) * 1e6


def _child(argv: list[str]) -> None:
    url, checks, mode, concurrency = argv[0], int(argv[1]), argv[2], int(argv[3])
    print(json.dumps(asyncio.run(_measure(url, checks, mode, concurrency))))


def _run(tree: Path, url: str, checks: int, mode: str, concurrency: int) -> float:
    # This file's _child, importing llm_service from ``tree`` (a baseline may predate this module).
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); import runpy; "
        f"runpy.run_path({str(Path(__file__))!r}, run_name='child')['_child'](sys.argv[1:])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url, str(checks), mode, str(concurrency)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redislimits", description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5000, help="limit checks per run (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations (default 3)")
    parser.add_argument("--baseline", type=Path, help="another checkout to alternate with")
    args = parser.parse_args(argv)
    trees = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    proc, port = _redis_server()
    url = f"redis://127.0.0.1:{port}/0"
    rows: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for mode in ("chat", "stream"):
                for concurrency in (1, 16):
                    for name, tree in trees.items():
                        value = _run(tree, url, args.checks, mode, concurrency)
                        key = f"{name} {mode} c={concurrency}"
                        rows.setdefault(key, []).append(value)
                        print(f"[bench.redislimits] {key}: {value:.1f} us", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    print(json.dumps({key: round(statistics.median(v), 1) for key, v in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
