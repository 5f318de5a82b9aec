"""``python -m bench.growth`` at tiny sizes on SQLite and PostgreSQL: every figure there, the chain intact.

The figures are not asserted (speed belongs to the benchmark); what the phase
generates is: the rows asked for, an audit chain that verifies after the bulk
rows, and the heavy user's month paged in full.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import pg

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    with pg.schema_url("growth") as url:
        yield url


def test_bench_growth_at_smoke_size(database_url: str) -> None:
    args = ["--users", "300", "--configs", "900", "--usage", "4000", "--audit", "1500", "--repeat", "20"]
    args += ["--heavy-share", "0.05", "--pages", "10"]
    if database_url:
        args += ["--database-url", database_url]
    done = subprocess.run(
        [sys.executable, "-m", "bench.growth", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["backend"] == ("postgresql" if database_url else "sqlite")
    assert result["audit_verify"]["ok"] is True
    assert result["audit_verify"]["rows"] >= 1500
    pages = result["list_records_pages"]
    assert pages["rows"] == 200 and pages["pages"] == 2  # the heavy user's 5 % of 4,000, 100 a page
    for phase in ("resolve_10_users", "resolve_big", "usage_summary_heavy_month"):
        assert result[phase]["p50_ms"] > 0 and result[phase]["cpu_ms"] > 0
