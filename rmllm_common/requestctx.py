"""The request id of the call being served, for logs, audit rows and error details.

``begin`` runs once per call (in the server's error interceptor): it takes the
caller's ``x-request-id`` when it is a sane value and otherwise makes one. The id
lives in a context variable, so every log line of the call can carry it without
passing it by hand. The LLM service forwards it to the vault as ``x-request-id``.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_current: ContextVar[str] = ContextVar("rmllm_request_id", default="-")


def new_id() -> str:
    """A fresh random request id."""
    return secrets.token_hex(8)


def begin(incoming: str | bytes | None = None) -> str:
    """Start a call's context: adopt a valid incoming id or make one; return it."""
    if isinstance(incoming, bytes):
        incoming = incoming.decode("ascii", "replace")
    request_id = incoming if incoming and _VALID.match(incoming) else new_id()
    _current.set(request_id)
    return request_id


def request_id() -> str:
    """The current call's request id ("-" outside a call)."""
    return _current.get()
