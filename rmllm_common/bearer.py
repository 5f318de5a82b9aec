"""The caller's bearer token: one parser, one set of messages and one user-token shape for both services.

Both services read ``authorization: Bearer <token>`` with ``bearer_token``, so a
missing, non-bearer, empty or malformed token gets the same TOKEN_INVALID message
from either. A user token is ``rmk_`` followed by 43 base64url characters (256
random bits, as the vault makes them); ``user_token`` also refuses any other shape,
so a caller with a junk string is turned away before anyone looks it up.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Final

from rmllm_common.errors import TokenInvalid
from rmllm_common.secret import Secret

USER_TOKEN_PREFIX: Final = "rmk_"  # noqa: S105 - a prefix, not a secret
MAX_TOKEN_LENGTH: Final = 4096
_USER_TOKEN_SHAPE = re.compile(r"^rmk_[A-Za-z0-9_-]{43}$")
HOW: Final = (
    "send the metadata `authorization: Bearer <token>` (create a token with `rmllm-vault users create NAME`)"
)

Metadata = Iterable[tuple[str, str | bytes]] | None


def new_user_token() -> Secret:
    """A fresh user token (``rmk_`` and 256 random bits, base64url)."""
    return Secret(USER_TOKEN_PREFIX + secrets.token_urlsafe(32))


def is_user_token(token: str) -> bool:
    """Whether ``token`` has the shape of a user token."""
    return bool(_USER_TOKEN_SHAPE.match(token))


def bearer_token(metadata: Metadata) -> Secret:
    """The token of ``authorization: Bearer <token>``, or TOKEN_INVALID saying what is wrong."""
    value: str | bytes | None = None
    for key, item in metadata or ():
        if key.lower() == "authorization":
            value = item
            break
    if value is None:
        raise TokenInvalid(f"missing authorization metadata; {HOW}")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenInvalid(f"the authorization metadata is not a bearer token; {HOW}")
    if len(token) > MAX_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise TokenInvalid("the bearer token is malformed; tokens are printable and have no spaces")
    return Secret(token)


def user_token(metadata: Metadata) -> Secret:
    """The caller's user token, refused (TOKEN_INVALID) unless it has a user token's shape."""
    token = bearer_token(metadata)
    if not is_user_token(token.reveal()):
        raise TokenInvalid(
            f"the bearer token is not a user token (`{USER_TOKEN_PREFIX}` and 43 more characters); {HOW}"
        )
    return token
