"""Costs are priced once, in the registry, and rounded to 1e-10 USD: no binary float
noise (``5.0999999999999995e-06``) reaches a caller, whatever the counts and prices."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from rmllm_common.registry import COST_QUANTUM, ModelSpec, default_registry

MODELS = [m for p in default_registry().providers.values() for m in p.models]


@given(
    model=st.sampled_from(MODELS),
    input_tokens=st.integers(0, 2_000_000),
    output_tokens=st.integers(0, 200_000),
)
def test_every_cost_is_a_whole_number_of_quanta_within_one_of_the_exact_price(
    model: ModelSpec, input_tokens: int, output_tokens: int
) -> None:
    cost = model.cost(input_tokens, output_tokens)
    exact = (
        Decimal(input_tokens) * Decimal(repr(model.input_price))
        + Decimal(output_tokens) * Decimal(repr(model.output_price))
    ) / Decimal(1_000_000)
    assert abs(Decimal(repr(cost)) - exact) <= Decimal("0.5e-10") + Decimal("1e-18")
    assert round(cost, 10) == cost  # already on the 1e-10 grid: printing it shows no noise
    assert len(repr(cost).replace("e-", "").replace(".", "").lstrip("0")) <= 17


def test_the_cost_that_showed_noise() -> None:
    spec = ModelSpec("m", "M", 1000, input_price=0.15, output_price=0.6)
    assert repr(spec.cost(10, 7)) == "5.7e-06"
    assert COST_QUANTUM == 1e-10
