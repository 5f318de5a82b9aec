"""The operator's usage commands: ``usage report``, and the budget and policy arguments they check.

``rmllm-vault usage report --since … --until … --by user|provider|model|day
--format table|csv|json`` prints every user's usage from the daily rollups.
``--since`` and ``--until`` take a UTC date (``2026-12-01``), a UTC time
(``2026-12-01T08:00:00Z``) or an age (``90m``, ``24h``, ``7d``). Budgets given to
``users budget`` / ``tokens budget`` are checked here (``dollars``) so a bad one
is one line on stderr, not a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from vault_service.ledger import Group
from vault_service.limits import MAX_BUDGET_USD

_AGE = re.compile(r"^(\d{1,6})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class ArgumentError(ValueError):
    """A command-line value that cannot be used, with what is accepted."""


def when(text: str, now: datetime, flag: str) -> datetime:
    """A ``--since``/``--until`` value as a UTC time."""
    value = text.strip()
    age = _AGE.match(value)
    if age:
        return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ArgumentError(
            f"{flag} must be a UTC date (2026-12-01), a time (2026-12-01T08:00:00Z) or an age (24h, 7d), "
            f"not {value[:40]!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def dollars(text: str | None, flag: str) -> float | None:
    """A budget in US dollars from the command line (None when the flag was not given)."""
    if text is None:
        return None
    try:
        value = float(text.strip().lstrip("$"))
    except ValueError:
        raise ArgumentError(f"{flag} must be a number of US dollars, not {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(f"{flag} must be a number of US dollars from 0 to {MAX_BUDGET_USD:,.0f}")
    if value > MAX_BUDGET_USD:
        raise ArgumentError(f"{flag} must be at most {MAX_BUDGET_USD:,.0f} US dollars, not {text[:40]}")
    return value


_HEADERS = ("calls", "failed", "input", "output", "cache_read", "cache_write", "reasoning", "cost_usd")
_KEYS = {"user": ("user",), "provider": ("provider",), "model": ("provider", "model"), "day": ("day",)}


def _row(group: Group, by: str) -> list[str | int | float]:
    t = group.totals
    keys: list[str | int | float] = [getattr(group, key) or "-" for key in _KEYS[by]]
    return [
        *keys,
        t.calls,
        t.failed_calls,
        t.input_tokens,
        t.output_tokens,
        t.cache_read_input_tokens,
        t.cache_creation_input_tokens,
        t.reasoning_tokens,
        t.cost_usd,
    ]


def render(groups: Sequence[Group], by: str, fmt: str) -> str:
    """The report as a table, CSV or JSON."""
    headers = [*_KEYS[by], *_HEADERS]
    rows = [_row(g, by) for g in groups]
    if fmt == "json":
        return json.dumps([dict(zip(headers, row, strict=True)) for row in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([*row[:-1], f"{row[-1]:.6f}"] for row in rows)
        return out.getvalue().rstrip("\n")
    total = [sum(float(r[i]) for r in rows) for i in range(len(_KEYS[by]), len(headers))]
    shown = [[str(c) if not isinstance(c, float) else f"{c:.6f}" for c in row] for row in rows]
    keys_blank = ["TOTAL", *([""] * (len(_KEYS[by]) - 1))]
    shown.append(keys_blank + [f"{v:.0f}" for v in total[:-1]] + [f"{total[-1]:.6f}"])
    widths = [max(len(h), *(len(r[i]) for r in shown)) for i, h in enumerate(headers)]
    numeric = len(_KEYS[by])

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i < numeric else c.rjust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return "\n".join([line([h.upper() for h in headers]), *(line(r) for r in shown)])
