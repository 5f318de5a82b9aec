"""The caller's user token, read from the ``authorization`` metadata of a call.

The LLM service does not judge tokens itself: it forwards them to the vault, which
answers who they belong to (or UNAUTHENTICATED). What happens here is only the
cheap, local part: a call without ``authorization: Bearer <token>``, or with one
that cannot be a token, is refused as TOKEN_INVALID before the vault is asked.
"""

from __future__ import annotations

from typing import Any

import grpc

from rmllm_common.errors import TokenInvalid
from rmllm_common.secret import Secret

MAX_TOKEN_LENGTH = 4096
_HOW = (
    "send the metadata `authorization: Bearer <token>` (create a token with `rmllm-vault users create NAME`)"
)


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> Secret:
    """The user token of the call, or TOKEN_INVALID when there is none usable."""
    value: str | bytes | None = None
    for key, item in context.invocation_metadata() or ():
        if key == "authorization":
            value = item
            break
    if value is None:
        raise TokenInvalid(f"missing authorization metadata; {_HOW}")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenInvalid(f"the authorization metadata is not a bearer token; {_HOW}")
    if len(token) > MAX_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise TokenInvalid("the bearer token is malformed; tokens are printable and have no spaces")
    return Secret(token)
