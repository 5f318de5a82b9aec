"""Model policy: which ``provider/model`` pairs a user or a token may use.

A policy is two lists of patterns, ``allow`` and ``deny``. A pattern is
``provider/model`` where ``*`` matches any run of characters (``anthropic/*``,
``openai/gpt-4o-mini``, ``*/llama3*``); matching is exact otherwise and
case-sensitive. A model is allowed when no ``deny`` pattern matches and ``allow``
is empty or one of its patterns matches. The vault validates and stores the
patterns (``parse``); the LLM service decides with ``allows`` before it calls a
provider, and filters ListProviders and ListModels with it. Both services use
this one module so they cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 200
_PATTERN = re.compile(r"^[A-Za-z0-9*._-]+/[A-Za-z0-9*._:/@+-]+$")


class PolicyError(ValueError):
    """A pattern list that cannot be stored, with what is wrong."""


def parse(text: str) -> tuple[str, ...]:
    """The patterns of a comma-separated list (blank entries ignored), validated."""
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    if len(patterns) > MAX_PATTERNS:
        raise PolicyError(f"at most {MAX_PATTERNS} patterns, not {len(patterns)}")
    for pattern in patterns:
        if len(pattern) > MAX_PATTERN_LENGTH or not _PATTERN.match(pattern):
            raise PolicyError(
                f"{pattern[:40]!r} is not a model pattern: write provider/model, with * matching "
                "any characters (openai/gpt-4o-mini, anthropic/*)"
            )
    return patterns


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(piece) for piece in pattern.split("*")), re.DOTALL)


def matches(pattern: str, provider: str, model: str) -> bool:
    """Whether ``provider/model`` matches one pattern."""
    return _compiled(pattern).fullmatch(f"{provider}/{model}") is not None


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """Allowed and denied model patterns; the empty policy allows everything."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def allows(self, provider: str, model: str) -> bool:
        """Whether this policy lets ``model`` of ``provider`` be used."""
        if any(matches(p, provider, model) for p in self.deny):
            return False
        return not self.allow or any(matches(p, provider, model) for p in self.allow)

    def allows_some(self, provider: str) -> bool:
        """Whether some model of ``provider`` might be allowed (for listing providers).

        A provider is hidden only when a deny pattern covers all of it
        (``provider/*``), or when ``allow`` is set and none of its patterns could
        match this provider.
        """

        def provider_part(pattern: str) -> bool:
            return _compiled(pattern.split("/", 1)[0]).fullmatch(provider) is not None

        if any(p.endswith("/*") and provider_part(p) for p in self.deny):
            return False
        return not self.allow or any(provider_part(p) for p in self.allow)
