"""An undecodable request to the vault is INVALID_ARGUMENT / MALFORMED_REQUEST, not UNKNOWN."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from testkit.vault import Failure, Vault, md


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab"])
@pytest.mark.parametrize("method", ["PutProviderConfig", "ListProviderConfigs", "ResolveCredentials"])
async def test_an_undecodable_request_is_invalid_argument(
    vault: Vault, fails: Callable[[Awaitable[Any]], Awaitable[Failure]], payload: bytes, method: str
) -> None:
    token = vault.make_user("mallory")
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = vault.channel.unary_unary(
        f"/realmultillm.vault.v1.VaultService/{method}"
    )
    failed = await fails(call(payload, metadata=md(token), timeout=10))
    assert failed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failed.reason == "MALFORMED_REQUEST"
    assert method in failed.message
    assert "Error" not in failed.message
