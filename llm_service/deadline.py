"""The caller's deadline, carried down to every vault call and provider attempt.

A ``Deadline`` is taken once per call from ``context.time_remaining()`` (None when
the caller set none) as an absolute time on one monotonic clock; everything below
asks it how much time is left. The clock is injectable so that retry waits can be
tested with a fake clock and no real sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute end time on ``clock`` (``at`` None: no deadline)."""

    at: float | None
    clock: Clock = time.monotonic

    @classmethod
    def after(cls, remaining: float | None, clock: Clock = time.monotonic) -> Deadline:
        """The deadline ``remaining`` seconds from now (None: none)."""
        return cls(None if remaining is None else clock() + remaining, clock)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a deadline."""
        if self.at is None:
            return None
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.at is not None and self.clock() >= self.at

    def allows(self, seconds: float) -> bool:
        """Whether ``seconds`` from now is still before the deadline."""
        return self.at is None or self.clock() + seconds < self.at
