"""``python -m bench --telemetry``'s in-process part: one Chat's whole telemetry work runs in
a fresh process per sampling setting (no figures are checked: they depend on the machine)."""

from __future__ import annotations

from bench.telemetry import otel_chat_costs


def test_otel_chat_costs_run_for_every_setting() -> None:
    costs = otel_chat_costs(chats=100)
    assert set(costs) == {"off", "all", "1pct"}
    assert all(value > 0 for value in costs.values())
