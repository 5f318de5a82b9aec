"""Costs shown to people: fixed notation, at most 10 decimals, at least 2, no float noise."""

from __future__ import annotations

import pytest

from clients import Usage, format_usd

CASES = [
    (5.1e-06, "$0.0000051"),
    (5.0999999999999995e-06, "$0.0000051"),
    (0.0, "$0.00"),
    (0.5, "$0.50"),
    (12.345, "$12.345"),
    (1e-10, "$0.0000000001"),
    (0.000022, "$0.000022"),
    (3.0, "$3.00"),
]


@pytest.mark.parametrize(("value", "text"), CASES)
def test_format_usd(value: float, text: str) -> None:
    assert format_usd(value) == text


def test_usage_reads_as_a_summary() -> None:
    usage = Usage(12, 34, 46, 5.1e-06)
    assert usage.cost_text == "$0.0000051"
    assert str(usage) == "12 in / 34 out tokens · $0.0000051"
