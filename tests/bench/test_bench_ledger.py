"""``python -m bench.ledger`` at smoke size: the ledger is exact after a soak, and the CPU figure is there.

The figures are not asserted (speed belongs to the benchmark); exactness is: one
record per Chat served and the same token sums as the answers carried.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ledger_soak_is_exact() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.ledger", "--calls", "300", "--concurrency", "8", "--repeat", "2000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]
    result = json.loads(done.stdout)
    soak = result["soak"]
    assert soak["ledger_exact"] is True
    assert soak["ledger"]["records"] - soak["ledger"]["failed"] == soak["served"]["ok"] > 0
    assert soak["ledger"]["input_tokens"] == soak["served"]["input_tokens"] > 0
    assert result["accounting"]["cpu_us_per_call"] > 0
