"""Retries of transient provider failures, before the first event reaches the caller.

``stream_with_retries`` opens an adapter stream and waits for its first event; if
that first attempt fails transiently, tenacity's ``AsyncRetrying`` runs the rest
(the common, successful case pays nothing for it): only ``ProviderUnavailable`` (408, 409, 5xx, 529,
connection failures) and ``ProviderRateLimited`` (429 with a retry delay) are
retried, never ``ProviderQuotaExhausted`` or anything else. Waits grow
exponentially with jitter (``base * 2**(n-1)``, capped, times a random factor in
[0.5, 1]); a provider's ``retry_after`` is honoured exactly when it is at most
``retry_after_cap``, and a longer one ends the retries (the caller gets it in
RetryInfo). No wait may end past the caller's deadline: when it would, the last
error is raised at once. Once the first event is out, the stream is forwarded as is
and any later error ends it: a caller never sees text twice. The stream being
retried, and the one forwarded, are always closed (``aclose``) when the caller goes
away, so the upstream HTTP response is released at once. ``sleep`` and ``random``
are injectable so tests can read the waits without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from llm_service import accounting, metrics, telemetry
from llm_service.adapters.base import ChatEvent
from llm_service.deadline import Deadline
from rmllm_common import errors

log = logging.getLogger(__name__)

RETRYABLE = (errors.ProviderUnavailable, errors.ProviderRateLimited)
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait between attempts (``attempts`` counts the first)."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 10.0
    sleep: Sleep = field(default=asyncio.sleep)
    random: Callable[[], float] = field(default=random.random)

    def wait_for(self, attempt_number: int, error: BaseException | None) -> float:
        """The wait after failed attempt ``attempt_number`` (1-based) with ``error``."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return max(0.0, float(retry_after))
        backoff: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt_number - 1))
        return backoff * (0.5 + 0.5 * self.random())

    def should_stop(self, state: RetryCallState, deadline: Deadline) -> bool:
        """No attempts left, a retry_after over the cap, or a wait that passes the deadline."""
        if state.attempt_number >= self.attempts:
            return True
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and retry_after > self.retry_after_cap:
            return True
        return not deadline.allows(state.upcoming_sleep)


OpenStream = Callable[[float | None], AsyncIterator[ChatEvent]]


async def _open(
    open_stream: OpenStream, deadline: Deadline, provider: str
) -> tuple[AsyncIterator[ChatEvent], ChatEvent]:
    """One attempt: open the stream and wait for its first event (closing it on failure)."""
    remaining = deadline.remaining()
    if remaining is not None and remaining <= 0:
        raise errors.DeadlineExceeded("the caller's deadline passed", provider=provider)
    stream = open_stream(remaining)
    try:
        first = await anext(stream, None)
        if first is None:
            raise errors.UpstreamStreamTruncated(
                "the provider's stream ended without an answer", provider=provider
            )
    except BaseException:
        await _close(stream)
        raise
    return stream, first


async def _open_with_retries(
    open_stream: OpenStream, policy: RetryPolicy, deadline: Deadline, provider: str, failed: BaseException
) -> tuple[AsyncIterator[ChatEvent], ChatEvent]:
    """Attempts 2..N under tenacity, after the first attempt failed with ``failed``."""

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        accounting.note_retry()
        metrics.provider_retry(provider)
        log.debug(
            "retrying provider call",
            extra={
                "provider": provider,
                "attempt": state.attempt_number,
                "wait": state.upcoming_sleep,
                "error": repr(error),
            },
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(RETRYABLE),
        wait=lambda state: policy.wait_for(
            state.attempt_number, state.outcome.exception() if state.outcome else None
        ),
        stop=lambda state: policy.should_stop(state, deadline),
        sleep=policy.sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    replay: BaseException | None = failed
    async for attempt in retrying:
        with attempt:
            if replay is not None:  # tenacity's attempt 1 is the one already made
                error, replay = replay, None
                raise error
            return await _open(open_stream, deadline, provider)
    raise AssertionError("tenacity ended without a result or an error")  # pragma: no cover


async def stream_with_retries(
    open_stream: OpenStream, policy: RetryPolicy, deadline: Deadline, provider: str
) -> AsyncGenerator[ChatEvent, None]:
    """The events of one successful attempt of ``open_stream(timeout)``, retried before the first.

    The first attempt runs without tenacity (the common case costs nothing extra);
    a retryable failure hands over to tenacity for the attempts that remain.
    """
    try:
        try:
            stream, first = await _open(open_stream, deadline, provider)
        except RETRYABLE as error:
            if policy.attempts <= 1:
                raise
            stream, first = await _open_with_retries(open_stream, policy, deadline, provider, error)
        try:
            telemetry.note_first_event()
            yield first
            async for event in stream:
                yield event
        finally:
            await _close(stream)
    except errors.RmllmError as exc:
        exc.metadata.setdefault("provider", provider)  # the contract: errors name their provider
        raise


async def _close(stream: AsyncIterator[ChatEvent]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
