"""``python -m bench.scale`` at smoke size: every configuration answers, the figures are there.

The figures are not asserted (speed belongs to the benchmark); their presence and
the absence of errors are, including the Redis configuration's redis-server CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_scale_measures_every_configuration() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--requests", "20", "--seconds", "5", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    for name in ("direct", "cache_off", "defaults", "redis"):
        assert result[name]["errors"] == 0 and result[name]["ok"] == 20, (name, result[name])
    for name in ("cache_off", "defaults", "redis"):  # CPU is read in clock ticks: 20 calls may show 0
        assert result[name]["cpu_llm_ms"] >= 0 and "added_p50_ms" in result[name]
    assert result["redis"]["cpu_redis_ms"] >= 0
    assert set(result["redis_cpu_over_defaults_ms"]) == {"llm", "redis_server"}
