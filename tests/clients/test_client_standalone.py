"""The client package stands alone: importing it loads none of the servers' code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import clients, clients.aio, clients.cli, clients.sync
loaded = sorted({m.split('.')[0] for m in sys.modules} & {'rmllm_common', 'vault_service', 'llm_service'})
print(','.join(loaded))
"""


def test_clients_import_no_server_package() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == "\n"
