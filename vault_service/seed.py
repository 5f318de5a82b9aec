"""The encryption seed: the policy that refuses weak ones, and the generator.

The seed (``RMLLM_VAULT_SEED``, a seed file, or the file the first start generates)
must be at least 32 random bytes written as hex or base64: the shared policy of
``rmllm_common.randomsecret``, which refuses passphrases and values that do not
look random, and says how to generate one. The text is only *checked* as an
encoding: its UTF-8 bytes, unchanged, stay the input keying material of
HKDF-SHA256 (``vault_service.crypto``), so every seed accepted before keeps its
key id. There is no built-in default: with no seed configured, the vault generates
one into its data directory on first start and says it must be backed up.

Previous seeds (``RMLLM_VAULT_OLD_SEEDS``) decrypt only, so that keys can be
re-encrypted under the current one with ``rmllm-vault rewrap``. They are held to
the rule the vault had before (``check_legacy``: about 256 bits by an alphabet
estimate), so a seed that an earlier version accepted can still be rotated out.
"""

from __future__ import annotations

import math
import secrets
import string
from collections import Counter
from typing import Final

from rmllm_common import randomsecret

MIN_BITS: Final = 256
GENERATE_HINT: Final = randomsecret.GENERATE_HINT
ROTATE_HINT: Final = (
    "if keys are already stored under this seed, move it to RMLLM_VAULT_OLD_SEEDS, set a new "
    "RMLLM_VAULT_SEED and run: rmllm-vault rewrap"
)
WeakSeed = randomsecret.WeakSecret

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


def generate() -> str:
    """A new random seed: 32 random bytes as 43 base64url characters (258 bits).

    Drawn again in the (below one in a million) case that ``check`` would refuse it,
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
    """Raise ``WeakSeed`` unless ``seed`` is 32+ random bytes as hex or base64 (never echoed)."""
    try:
        randomsecret.check(seed, name)
    except randomsecret.WeakSecret as exc:
        raise WeakSeed(f"{exc}; {ROTATE_HINT}" if seed else str(exc)) from None


def check_legacy(seed: str, name: str) -> None:
    """The rule of earlier versions, for decrypt-only old seeds: about 256 bits by alphabet."""
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
