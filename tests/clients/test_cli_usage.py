"""What ``rmllm usage`` prints: the table's TOTAL row, right-aligned numbers, the per-day bars."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clients import cli_usage
from clients.usage import UsageGroup, UsageSummary, UsageTotals


def totals(calls: int, cost: float, failed: int = 0) -> UsageTotals:
    return UsageTotals(calls, failed, calls * 10, calls * 2, 0, 0, 0, cost)


SUMMARY = UsageSummary(
    totals=totals(6, 0.5, failed=1),
    by_day=[
        UsageGroup("2026-11-29", "", "", totals(2, 0.125)),
        UsageGroup("2026-12-01", "", "", totals(4, 0.375)),
    ],
    by_provider=[UsageGroup("", "openai", "", totals(6, 0.5, failed=1))],
    by_model=[
        UsageGroup("", "openai", "gpt-4o", totals(1, 0.25)),
        UsageGroup("", "openai", "gpt-4o-mini", totals(5, 0.25, failed=1)),
    ],
)


def test_table_by_model_ends_with_the_totals() -> None:
    lines = cli_usage.usage_table(SUMMARY, "model").splitlines()
    assert lines[0].split() == [
        "PROVIDER",
        "MODEL",
        "CALLS",
        "FAILED",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "REASONING",
        "COST",
    ]
    assert lines[1].split() == ["openai", "gpt-4o", "1", "0", "10", "2", "0", "0", "$0.2500"]
    assert lines[-1].split() == ["TOTAL", "6", "1", "60", "12", "0", "0", "$0.5000"]
    assert len({len(line) for line in lines}) == 1  # right-aligned numbers: every row as wide
    assert cli_usage.usage_table(SUMMARY, "day").splitlines()[1].startswith("2026-11-29")


def test_chart_has_a_bar_per_day_scaled_to_the_busiest() -> None:
    chart = cli_usage.day_chart(
        SUMMARY, datetime(2026, 11, 29, 10, tzinfo=UTC), datetime(2026, 12, 1, 9, tzinfo=UTC)
    )
    lines = chart.splitlines()
    assert lines[0] == "per day, by cost:"
    days = lines[1:]
    assert [line[:10] for line in days] == ["2026-11-29", "2026-11-30", "2026-12-01"]
    bars = [line[12 : 12 + cli_usage.BAR_WIDTH] for line in days]
    assert bars[2] == "█" * cli_usage.BAR_WIDTH  # the busiest day is the full width
    assert bars[0].rstrip() == "█" * (cli_usage.BAR_WIDTH // 3) + "▍"  # a third of it, to the eighth
    assert bars[1].strip() == "" and days[1].endswith("0 calls")


def test_since_takes_ages_and_dates() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert cli_usage.since("7d", now) == datetime(2026, 11, 24, 12, tzinfo=UTC)
    assert cli_usage.since("90m", now) == datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert cli_usage.since("2026-11-30", now) == datetime(2026, 11, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since must be"):
        cli_usage.since("last week", now)
