"""The one policy for secrets an operator supplies: 32+ random bytes, written as hex or base64.

The vault's seed and the service credential both go through ``check``. A value is
accepted only if its text (after a known prefix such as ``rms_``) is hex, or base64
/ base64url with or without padding, that decodes to at least 32 bytes, and if the
text looks drawn at random: no placeholder words, both letter cases in base64, no
run of consecutive characters such as ``abcdef`` (6 in base64, 8 in hex), no
sequence of characters repeated (6 in base64, 8 in hex), no character making up a
quarter of the text. For 32 random bytes the odds that these rules refuse the value
are below one in a million, and then the message says to generate another.
Passphrases, however long, are refused: HKDF does no stretching, so a guessable
seed would expose every key once the database leaked.
Messages never echo the value; each ends with the command that makes a good one.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import string
from collections import Counter
from typing import Final

MIN_BYTES: Final = 32
GENERATE_HINT: Final = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"

_HEX: Final = frozenset(string.hexdigits)
_BASE64_STD: Final = frozenset(string.ascii_letters + string.digits + "+/")
_BASE64_URL: Final = frozenset(string.ascii_letters + string.digits + "-_")
# Substrings that mark a placeholder or an example value. Seven characters or more,
# so that random base64 text holds one with negligible odds (below 1e-9).
PLACEHOLDER_MARKS: Final = (
    "changeme",
    "change-me",
    "change_me",
    "example",
    "default",
    "placeholder",
    "replace",
    "password",
    "correct-horse",
    "correcthorse",
    "hunter2",
)


class WeakSecret(ValueError):
    """A value the policy refuses, with a message saying why and how to make a good one."""


def decode(text: str) -> bytes | None:
    """The bytes ``text`` encodes as hex (even length) or base64/base64url; None if neither."""
    chars = set(text)
    if chars <= _HEX and len(text) % 2 == 0:
        return bytes.fromhex(text)
    body = text.rstrip("=")
    if len(text) - len(body) > 2 or len(body) % 4 == 1:
        return None
    body_chars = set(body)
    if body_chars <= _BASE64_URL:
        body = body.replace("-", "+").replace("_", "/")
    elif not body_chars <= _BASE64_STD:
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        return None


def _longest_step_run(text: str) -> int:
    """The longest run of characters each one code point above (or below) the one before."""
    longest = run = 1
    step = 0
    for before, after in itertools.pairwise(text):
        delta = ord(after) - ord(before)
        if delta in (1, -1) and (run == 1 or delta == step):
            run += 1
        elif delta in (1, -1):
            run = 2
        else:
            run = 1
        step = delta
        longest = max(longest, run)
    return longest


def _has_repeat(text: str, length: int) -> bool:
    seen: set[str] = set()
    for start in range(len(text) - length + 1):
        piece = text[start : start + length]
        if piece in seen:
            return True
        seen.add(piece)
    return False


def check(value: str, name: str, *, prefix: str = "", hint: str = GENERATE_HINT) -> None:
    """Raise ``WeakSecret`` unless ``value`` is 32+ random-looking bytes as hex or base64.

    ``prefix``, when ``value`` starts with it, is not part of the random text (the
    generated service credential is ``rms_`` and 43 base64url characters).
    """
    if not value:
        raise WeakSecret(f"{name} is empty; {hint}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise WeakSecret(f"{name} contains whitespace or control characters; {hint}")
    lowered = value.lower()
    if any(mark in lowered for mark in PLACEHOLDER_MARKS):
        raise WeakSecret(f"{name} is a well-known example or placeholder value; {hint}")
    text = value[len(prefix) :] if prefix and value.startswith(prefix) else value
    raw = decode(text)
    if raw is None:
        raise WeakSecret(
            f"{name} must be at least {MIN_BYTES} random bytes written as hex or base64 "
            f"(a passphrase is not accepted); {hint}"
        )
    if len(raw) < MIN_BYTES:
        raise WeakSecret(
            f"{name} is too short: it decodes to {len(raw)} bytes, at least {MIN_BYTES} are needed "
            f"(64 hex digits or 43 base64 characters); {hint}"
        )
    is_hex = set(text) <= _HEX
    body = text.rstrip("=")
    counts = Counter(body)
    sequence = 8 if is_hex else 6
    not_random = (
        (not is_hex and not (any(c.islower() for c in body) and any(c.isupper() for c in body)))
        or _longest_step_run(body.lower() if is_hex else body) >= sequence
        or _has_repeat(body.lower() if is_hex else body, sequence)
        or max(counts.values()) * 4 > len(body)
        or len(counts) < (8 if is_hex else 12)
    )
    if not_random:
        raise WeakSecret(
            f"{name} does not look random (a sequence, a repeat, or too few kinds of characters); {hint}"
        )
