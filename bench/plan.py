"""How much to measure: the full plan, ``--quick``, and the smoke test's tiny one.

Every load run is bounded twice, by a request count and by seconds, so no plan can
run away on a slow or busy machine. ``rounds`` is how many times the A/B/A/B
alternation of configurations repeats at each concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass

CONCURRENCY = (1, 16, 64, 256)


@dataclass(frozen=True)
class Plan:
    """The sizes of one benchmark session."""

    name: str
    concurrency: tuple[int, ...] = CONCURRENCY
    rounds: int = 2
    run_requests: int = 20_000  # cap per run (each run also stops after run_seconds)
    run_seconds: float = 3.0
    warmup_requests: int = 300
    soak_requests: int = 100_000
    soak_seconds: float = 200.0
    soak_concurrency: int = 64
    streams: int = 5_000
    stream_pieces: int = 20  # the slow fake's text events per answer ...
    stream_delay: float = 1.5  # ... this many seconds apart: each stream stays open 30 s
    streams_seconds: float = 150.0
    scaling_concurrency: int = 64
    scaling_rounds: int = 2
    scaling_seconds: float = 4.0
    hops_repeat: int = 5000


FULL = Plan("full")
QUICK = Plan(
    "quick",
    rounds=1,
    run_seconds=2.0,
    soak_requests=20_000,
    soak_seconds=60.0,
    streams=2_000,
    stream_pieces=10,
    streams_seconds=90.0,
    scaling_rounds=1,
    scaling_seconds=3.0,
    hops_repeat=2000,
)
SMOKE = Plan(
    "smoke",
    concurrency=(1, 4),
    rounds=1,
    run_requests=30,
    run_seconds=2.0,
    warmup_requests=10,
    soak_requests=200,
    soak_seconds=30.0,  # never the bound here: the smoke test expects every request made
    soak_concurrency=4,
    streams=20,
    stream_pieces=3,
    stream_delay=0.2,
    streams_seconds=20.0,
    scaling_concurrency=4,
    scaling_rounds=1,
    scaling_seconds=1.0,
    hops_repeat=100,
)
PLANS = {plan.name: plan for plan in (FULL, QUICK, SMOKE)}
