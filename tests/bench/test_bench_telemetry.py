"""``python -m bench --telemetry``'s in-process part: one Chat's whole telemetry work runs in
a fresh process per sampling setting (no figures are checked: they depend on the machine)."""

from __future__ import annotations

from bench.telemetry import otel_chat_costs, paired_increase, primitive_costs


def test_otel_chat_costs_run_for_every_setting() -> None:
    costs = otel_chat_costs(chats=100)
    assert set(costs) == {"off", "all", "1pct"}
    assert all(value > 0 for value in costs.values())


def test_paired_increase_compares_each_round_with_its_own_off_run() -> None:
    rows = [
        {"round": 0, "config": "off", "cpu_llm_ms": 1.0},
        {"round": 0, "config": "on", "cpu_llm_ms": 1.1},
        {"round": 1, "config": "off", "cpu_llm_ms": 2.0},  # a slow round: both sides slower
        {"round": 1, "config": "on", "cpu_llm_ms": 2.1},
        {"round": 2, "config": "off", "cpu_llm_ms": 1.0},
        {"round": 2, "config": "on", "cpu_llm_ms": 1.02},
    ]
    increase = paired_increase(rows)
    assert increase["off"] == 0
    assert abs(increase["on"] - 5.0) < 1e-9  # the median of +10 %, +5 %, +2 %


def test_primitive_costs_run_in_a_process_of_their_own() -> None:
    costs = primitive_costs(repeat=50)
    assert {"observed_call_off", "observed_call_prometheus", "otel_span_not_sampled"} <= set(costs)
    assert all(value > 0 for value in costs.values())
