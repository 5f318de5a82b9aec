"""``python -m bench.distinct`` at a tiny size, against itself as the baseline: the figures are there.

Speed is not asserted (it belongs to the benchmark); what is: every caller was served
(no errors), both sides measured, and the ratio computed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_distinct_at_smoke_size() -> None:
    args = ["--users", "6", "--seconds", "1", "--rounds", "1", "--baseline-src", str(ROOT)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.distinct", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["users"] == 6
    for side in ("current", "baseline"):
        assert figures[side]["errors"] == 0
        assert figures[side]["chats_per_second"] > 0
        assert figures[side]["cpu_vault_ms"] > 0  # every Chat went to the vault: the cache is off
    assert figures["throughput_ratio"] > 0
