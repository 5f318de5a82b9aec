"""What ``rmllm usage`` prints: the caller's usage as a table with totals and cost, and a per-day bar chart.

``--since`` takes an age (``90m``, ``24h``, ``7d``) or a UTC date or time; the
table groups by model (default), provider or day, and always ends with a TOTAL
row. The chart has one bar per UTC day of the range, scaled to the busiest day,
by cost (by calls when nothing cost anything), drawn with Unicode eighth blocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from clients.usage import UsageGroup, UsageSummary, UsageTotals

BAR_WIDTH = 40
_AGE = re.compile(r"^(\d{1,6})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
_EIGHTHS = " ▏▎▍▌▋▊▉"


def since(text: str, now: datetime) -> datetime:
    """``--since`` as a UTC time; ValueError with what is accepted."""
    value = text.strip()
    age = _AGE.match(value)
    if age:
        return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since must be an age (24h, 7d) or a UTC date (2026-12-01), not {value[:40]!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _cost(value: float) -> str:
    if value >= 100:
        return f"${value:,.2f}"
    return f"${value:.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"


def _numbers(t: UsageTotals) -> list[str]:
    return [
        str(t.calls),
        str(t.failed_calls),
        str(t.input_tokens),
        str(t.output_tokens),
        str(t.cache_read_input_tokens),
        str(t.reasoning_tokens),
        _cost(t.cost_usd),
    ]


_NUMBER_HEADERS = ["CALLS", "FAILED", "INPUT", "OUTPUT", "CACHED", "REASONING", "COST"]


def usage_table(summary: UsageSummary, by: str) -> str:
    """The summary grouped ``by`` model, provider or day, with a TOTAL row."""
    groups: Sequence[UsageGroup]
    if by == "model":
        headers, groups = ["PROVIDER", "MODEL"], summary.by_model
        keys = [[g.provider, g.model or "-"] for g in groups]
    elif by == "provider":
        headers, groups = ["PROVIDER"], summary.by_provider
        keys = [[g.provider] for g in groups]
    else:
        headers, groups = ["DAY"], summary.by_day
        keys = [[g.day] for g in groups]
    rows = [key + _numbers(g.totals) for key, g in zip(keys, groups, strict=True)]
    rows.append(["TOTAL"] + [""] * (len(headers) - 1) + _numbers(summary.totals))
    names = headers + _NUMBER_HEADERS
    widths = [max(len(cell) for cell in column) for column in zip(names, *rows, strict=True)]
    key_count = len(headers)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < key_count else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(line(r) for r in [names, *rows])


def _bar(fraction: float) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[rest] if rest else "")).ljust(BAR_WIDTH)


def day_chart(summary: UsageSummary, first: datetime, last: datetime) -> str:
    """One bar per UTC day from ``first`` to ``last``, by cost (by calls when all cost nothing)."""
    by_day = {g.day: g.totals for g in summary.by_day}
    days: list[str] = []
    day = first.astimezone(UTC).date()
    while day <= last.astimezone(UTC).date():
        days.append(day.isoformat())
        day += timedelta(days=1)
    empty = UsageTotals(0, 0, 0, 0, 0, 0, 0, 0.0)
    totals = [by_day.get(d, empty) for d in days]
    by_cost = any(t.cost_usd > 0 for t in totals)
    values = [t.cost_usd if by_cost else float(t.calls) for t in totals]
    top = max(values, default=0.0) or 1.0
    lines = [f"per day, by {'cost' if by_cost else 'calls'}:"]
    for name, value, t in zip(days, values, totals, strict=True):
        lines.append(f"{name}  {_bar(value / top)}  {_cost(t.cost_usd):>9}  {t.calls} calls")
    return "\n".join(lines)
