"""The encryption seed: where it comes from, and the policy that refuses weak ones.

A seed is a string. Its UTF-8 bytes, unchanged, are the input keying material of
HKDF-SHA256 (``vault_service.crypto``); nothing decodes it. Its strength is
estimated as ``length * log2(alphabet)``, where the alphabet is the smallest
standard one holding every character: hex digits (4 bits a character), base64 or
base64url (6 bits), other printable ASCII (log2 95 ≈ 6.57 bits), anything else 8
bits a UTF-8 byte. At least 256 bits are required, so the shortest accepted seeds
are 64 hex digits, 43 base64url characters (``secrets.token_urlsafe(32)``) or 39
printable characters. Well-known example values, placeholders, periodic strings
and strings of too few distinct characters are refused whatever their length.
There is no built-in default: with no seed configured, the vault generates one
into its data directory on first start and says it must be backed up.
"""

from __future__ import annotations

import math
import secrets
import string
from collections import Counter
from typing import Final

MIN_BITS: Final = 256
GENERATE_HINT: Final = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"

_HEX = frozenset(string.hexdigits)
_BASE64 = frozenset(string.ascii_letters + string.digits + "-_+/=")
_PRINTABLE = frozenset(chr(c) for c in range(0x21, 0x7F))

# Values copied from examples, tutorials and the original design's default.
WELL_KNOWN: Final = frozenset(
    {
        "default-seed",
        "default_seed",
        "default-encryption-seed",
        "realmultillm-default-seed",
        "your-secret-seed",
        "your-encryption-seed",
        "change-me",
        "changeme",
        "secret",
        "password",
        "example",
        "test",
        "development",
    }
)
# Substrings that mark a placeholder; a random seed contains one with negligible odds.
_PLACEHOLDER_MARKS: Final = (
    "changeme",
    "change-me",
    "change_me",
    "example",
    "default",
    "placeholder",
    "your-",
    "your_",
    "replace",
    "password",
    "secret",
    "correct-horse",
    "correcthorse",
)


class WeakSeed(ValueError):
    """A seed the vault refuses, with a message saying why and how to make one."""


def generate() -> str:
    """A new random seed: 32 random bytes as 43 base64url characters (258 bits).

    Drawn again in the (about one in a million) case that ``check`` would refuse it,
    so the vault never generates a seed it then declines to use.
    """
    while True:
        candidate = secrets.token_urlsafe(32)
        try:
            check(candidate)
        except WeakSeed:
            continue
        return candidate


def estimated_bits(seed: str) -> float:
    """The seed's strength in bits, by the alphabet rule of this module's docstring."""
    chars = set(seed)
    if chars <= _HEX:
        per_char = 4.0
    elif chars <= _BASE64:
        per_char = 6.0
    elif chars <= _PRINTABLE:
        per_char = math.log2(len(_PRINTABLE))
    else:
        return 8.0 * len(seed.encode())
    return per_char * len(seed)


def _is_periodic(seed: str) -> bool:
    for period in range(1, len(seed) // 2 + 1):
        if len(seed) % period == 0 and seed[:period] * (len(seed) // period) == seed:
            return True
    return False


def check(seed: str, name: str = "RMLLM_VAULT_SEED") -> None:
    """Raise ``WeakSeed`` unless ``seed`` is strong enough; the message never echoes it."""
    lowered = seed.lower()
    if not seed:
        raise WeakSeed(f"{name} is empty; {GENERATE_HINT}")
    if lowered in WELL_KNOWN or any(mark in lowered for mark in _PLACEHOLDER_MARKS):
        raise WeakSeed(f"{name} is a well-known example or placeholder value; {GENERATE_HINT}")
    if any(c.isspace() or not c.isprintable() for c in seed):
        raise WeakSeed(f"{name} contains whitespace or control characters; {GENERATE_HINT}")
    bits = estimated_bits(seed)
    if bits < MIN_BITS:
        raise WeakSeed(
            f"{name} is too weak: about {int(bits)} bits of entropy, at least {MIN_BITS} are needed "
            f"(43 base64url characters or 64 hex digits); {GENERATE_HINT}"
        )
    counts = Counter(seed)
    distinct_needed = 8 if set(seed) <= _HEX else 12
    if len(counts) < distinct_needed or max(counts.values()) * 4 > len(seed) or _is_periodic(seed):
        raise WeakSeed(f"{name} is not random (repeated or too few distinct characters); {GENERATE_HINT}")
