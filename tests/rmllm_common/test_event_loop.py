"""The event loop the services run on: uvloop's (less CPU per call), where it is installed.

(That both services' processes really run on it: tests/test_services_start.py, from
their start log line.)"""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from rmllm_common import cli


def test_the_services_loop_is_uvloops_and_asyncios_where_uvloop_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    cli.run_loop(main())
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop wheel here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    cli.run_loop(main())
    assert seen[0].startswith("uvloop")
    assert seen[1].startswith("asyncio")
