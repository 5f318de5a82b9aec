"""A wrapper for secret strings (API keys, tokens, the seed) that will not print.

``Secret("sk-...")`` shows as ``Secret('…a1b2')`` in ``repr`` and ``str``, so a stray
log line, f-string or traceback cannot leak the value. The value is read only on
purpose, with ``reveal()``, at the single place that must send it (an HTTP header,
an encryption call). Equality is constant-time.
"""

from __future__ import annotations

import hmac
from typing import Final

_HINT_LENGTH: Final = 4


class Secret:
    """A masked secret string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plaintext. Call it only where the value must leave the process."""
        return self._value

    @property
    def hint(self) -> str:
        """The last 4 characters, never more; empty for a short or empty value."""
        return self._value[-_HINT_LENGTH:] if len(self._value) > 2 * _HINT_LENGTH else ""

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Secret('…{self.hint}')" if self.hint else "Secret('…')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[type, tuple[str]]:
        raise TypeError("a Secret cannot be pickled")
