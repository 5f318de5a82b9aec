"""The benchmark command end to end with the smoke plan's tiny counts.

``python -m bench --plan smoke --out DIR`` starts the fake provider, the vault, the
LLM services and the load generator as real processes, runs every phase (the
alternating configurations, soak, open streams, 1 and 2 workers) and writes the
JSON, the markdown table and the PNG plot. The figures are not asserted (speed
belongs to the benchmark itself); their presence, shape and the absence of errors are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.plan import SMOKE
from bench.report import FIGURES

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench-out")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--plan", "smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out, done.stderr


def test_bench_writes_json_markdown_and_png(smoke_run: tuple[Path, str]) -> None:
    out, _ = smoke_run
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]
    assert (out / "results.png").read_bytes()[:8] == PNG_MAGIC
    markdown = (out / "results.md").read_text()
    for heading in (
        "## Targets",
        "## Latency, throughput and CPU",
        "## Soak",
        "## Many open streams",
        "## Workers (SO_REUSEPORT)",
    ):
        assert heading in markdown


def test_bench_measured_every_cell_in_alternation_without_errors(smoke_run: tuple[Path, str]) -> None:
    results = json.loads((smoke_run[0] / "results.json").read_text())
    runs = results["runs"]
    expected = len(SMOKE.concurrency) * 2 * 3 * SMOKE.rounds
    assert len(runs) == expected
    # A B C A B C: each (kind, concurrency) block runs direct, gateway, gateway_cached in turn.
    assert [r["config"] for r in runs[:6]] == ["direct", "gateway", "gateway_cached"] * 2
    for row in runs:
        assert row["errors"] == 0, row
        assert row["ok"] > 0
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
    for cell in results["summary"]["cells"]:
        assert {"config", "kind", "concurrency", *FIGURES} <= set(cell)
        if cell["config"] != "direct":
            assert cell["cpu_server_ms"] > 0
            assert "added_p50_ms" in cell
    streams = [r for r in runs if r["kind"] == "stream"]
    assert all(r["deltas"] > 0 and r["ttfd_p50_ms"] > 0 for r in streams)


def test_bench_phases_and_verdicts(smoke_run: tuple[Path, str]) -> None:
    results = json.loads((smoke_run[0] / "results.json").read_text())
    streams = results["streams"]
    assert streams["completed_ok"] == streams["target"] == SMOKE.streams and streams["errors"] == 0
    assert 0 < streams["peak_open"] <= SMOKE.streams
    assert results["soak"]["requests"] == SMOKE.soak_requests and results["soak"]["errors"] == 0
    assert {(row["workers"], row["cached"]) for row in results["scaling"]} == {
        (1, False),
        (2, False),
        (1, True),
        (2, True),
    }
    assert all(row["errors"] == 0 for row in results["scaling"])
    assert set(results["idle_rss_mb"]) == {"llm", "llm_cached", "vault"}
    verdicts = results["targets"]
    assert len(verdicts) == 13
    assert all(isinstance(v["met"], bool) and v["value"] is not None for v in verdicts)
    markdown = (smoke_run[0] / "results.md").read_text()
    assert markdown.count("| met |") + markdown.count("| **MISSED** |") == len(verdicts)
