"""``python -m bench.streammem --rss``: RSS per open stream of real LLM processes, alternated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.stack import ROOT
from bench.streammem import main, parse_config


def test_a_configuration_names_its_checkout_and_environment() -> None:
    assert parse_config("plain") == ("plain", ROOT, {})
    assert parse_config("old@/tmp/old:MALLOC_ARENA_MAX=2,X=a=b") == (
        "old",
        Path("/tmp/old"),
        {"MALLOC_ARENA_MAX": "2", "X": "a=b"},
    )


def test_rss_per_stream_is_measured_for_each_configuration_in_each_round(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(
        [
            "--rss",
            "--streams",
            "20",
            "--delay",
            "0.3",
            "--config",
            "plain",
            "--config",
            "arena:MALLOC_ARENA_MAX=2",
        ]
    )
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert set(result["kb_per_stream"]) == {"plain", "arena"}
    for runs in result["runs"].values():
        (run,) = runs
        assert run["failed"] == 0
        assert run["rss_open_mb"] > 0 and run["rss_before_mb"] > 0
    assert out.err.count("KB/stream") == 2
