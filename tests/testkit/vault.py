"""Helpers of the vault tests: test secrets, an in-process vault's handle, status decoding.

The fixtures that use these live in ``tests/vault_service/conftest.py``; this module
holds what test files also import (constants, types, ``failure``, ``md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from rmllm_common.secret import Secret
from rmllm_common.server import ServerHandle
from vault_service import accounts
from vault_service.database import Database
from vault_service.settings import VaultSettings

SEED = "q9Xl2mV7tR4pK8sW1zY6bN3cF5hJ0gD-aE_uLoIiQwM"  # a random test seed, 258 bits
OLD_SEED = "Zr8Kp2Wq5Xm9Tn4Lv7Bc1Hy6Dj3Gs0Fa-Ne_MuQoPiR"
SERVICE_TOKEN = "rms_cGxETFB3jsFrXrsJm9Xj1Z-F_6nxXMky6skswYAmVlE"  # random, as generated


def md(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


def settings_for(data_dir: Path, db_url: str = "", **overrides: Any) -> VaultSettings:
    """Vault settings with the test seed and service credential."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "service_token": Secret(SERVICE_TOKEN),
        "seed": Secret(SEED),
        "listen": "127.0.0.1:0",
        "database_url": db_url,
        **overrides,
    }
    return VaultSettings(**values)


@dataclass
class Vault:
    """A running in-process vault and what tests need to talk to it."""

    handle: ServerHandle
    channel: grpc.aio.Channel
    stub: Any
    db: Database
    settings: VaultSettings

    def make_user(self, name: str) -> str:
        """Create a user; return its token."""
        _, _, token = self.db.call(accounts.create_user, self.db, name)
        return token.reveal()


@dataclass(frozen=True)
class Failure:
    """What a failed call reported: code, the one ErrorInfo, BadRequest fields."""

    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    fields: list[str]
    message: str


def failure(error: grpc.aio.AioRpcError) -> Failure:
    """Decode the rich status of a failed call (exactly one ErrorInfo is required)."""
    details = {k: v for k, v in (error.trailing_metadata() or ()) if k == "grpc-status-details-bin"}
    status = status_pb2.Status.FromString(details["grpc-status-details-bin"])
    infos, fields = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    assert len(infos) == 1, status
    return Failure(error.code(), infos[0].reason, dict(infos[0].metadata), fields, status.message)
