"""``python -m bench.streammem --rss``: RSS per open stream of real LLM processes, alternated."""

from __future__ import annotations

from pathlib import Path

from bench.stack import ROOT
from bench.streammem import measure_rss, parse_config


def test_a_configuration_names_its_checkout_and_environment() -> None:
    assert parse_config("plain") == ("plain", ROOT, {})
    assert parse_config("old@/tmp/old:MALLOC_ARENA_MAX=2,X=a=b") == (
        "old",
        Path("/tmp/old"),
        {"MALLOC_ARENA_MAX": "2", "X": "a=b"},
    )


def test_rss_per_stream_is_measured_for_each_configuration_in_each_round() -> None:
    said: list[str] = []
    result = measure_rss(20, ["plain", "arena:MALLOC_ARENA_MAX=2"], 1, said.append, delay=0.3)
    assert set(result["kb_per_stream"]) == {"plain", "arena"}
    for runs in result["runs"].values():
        (run,) = runs
        assert run["failed"] == 0
        assert run["rss_open_mb"] > 0 and run["rss_before_mb"] > 0
    assert len(said) == 2
