"""``python -m bench --telemetry``: the LLM service's CPU per Chat with metrics and tracing on and off.

Two LLM services run side by side against the same vault and fake provider: one as
shipped (no ``--metrics-listen``, no ``OTEL_*``), one with Prometheus metrics on and
OTLP traces and metrics exported to a local receiver (``tests/testkit/otlp.py``,
every span sampled). Chat runs alternate between the two (A/B/A/B, so drift on a
shared machine hits both alike) and the LLM process's CPU time per request is read
from ``/proc`` around each run. The figures are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.plan import Plan
from bench.runner import Session, Target
from bench.stack import ROOT, raise_fd_limit

CONCURRENCY = 16
ROUNDS = 6


def run_telemetry(plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    """Alternating Chat runs against the LLM service with telemetry off and on."""
    sys.path.insert(0, str(ROOT / "tests"))
    from testkit.otlp import Receiver

    raise_fd_limit()
    receiver = Receiver()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rmllm-bench-") as tmp:
        session = Session(plan, Path(tmp), say)
        try:
            session.start()
            env = {
                "RMLLM_METRICS_LISTEN": "127.0.0.1:0",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            }
            on = session.stack.start_llm("llm-telemetry", extra_env=env)
            off_target = session.targets["gateway"]
            on_target = Target(
                "telemetry_on",
                {**off_target.job, "address": on.address},
                {"llm": [on.pid], "vault": off_target.services["vault"]},
            )
            for target in (off_target, on_target):
                session.measure(target, "chat", CONCURRENCY, requests=plan.warmup_requests, seconds=10.0)
            for round_no in range(ROUNDS):
                for target in (off_target, on_target):
                    row = session.measure(target, "chat", CONCURRENCY)
                    row["round"] = round_no
                    rows.append(row)
                    say(
                        f"round {round_no} {target.name:<13} llm cpu {row['cpu_llm_ms']:.3f} ms/req "
                        f"{row['rps']:7.0f}/s errors {row['errors']}"
                    )
        finally:
            session.stop()
            receiver.stop()
    off = [r["cpu_llm_ms"] for r in rows if r["config"] == "gateway"]
    on_ms = [r["cpu_llm_ms"] for r in rows if r["config"] == "telemetry_on"]
    summary = {
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "llm_cpu_ms_per_chat_off": statistics.median(off),
        "llm_cpu_ms_per_chat_on": statistics.median(on_ms),
        "increase_pct": 100 * (statistics.median(on_ms) / statistics.median(off) - 1),
        "spans_received": len(receiver.spans),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {"runs": rows, "summary": summary}
