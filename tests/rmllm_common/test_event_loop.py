"""The event loop a service runs on: the LLM service asks for uvloop's (less CPU per call)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

import llm_service.cli
from rmllm_common import cli


def test_fast_loop_runs_on_uvloop_and_the_default_on_asyncio() -> None:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    cli.run_loop(main(), fast_loop=True)
    cli.run_loop(main(), fast_loop=False)
    assert seen[0].startswith("uvloop")
    assert seen[1].startswith("asyncio")


def test_the_llm_service_serves_on_the_fast_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def run_serve(*args: Any, fast_loop: bool = False, **kwargs: Any) -> int:
        asked.append(fast_loop)
        return 0

    monkeypatch.setattr(llm_service.cli, "run_serve", run_serve)
    settings = SimpleNamespace(listen="127.0.0.1:0", grace_seconds=1.0, telemetry=None)
    assert llm_service.cli.serve(settings) == 0  # type: ignore[arg-type]
    assert asked == [True]
