"""Upstream failures to ``rmllm_common.errors``, in one place for every adapter.

Entry points: ``from_response`` (an HTTP status, its headers and body) and
``from_stream_error`` (an error object that arrived as a stream event, after a
200), both driven by the same table; ``transport_errors`` (a context manager that
turns aiohttp connection failures and timeouts into ``ProviderUnavailable`` (with
ErrorInfo metadata ``cause=dns`` and ``host`` for a name that does not resolve) /
``UpstreamStreamTruncated`` / ``DeadlineExceeded`` with ``raise ... from e``); and
``unexpected_shapes`` (events whose JSON does not have the format's shape become
``ProviderError``).
Classification reads status codes, error codes and wording, never provider names:
bad-key 400s (Gemini ``API_KEY_INVALID``, xAI "Incorrect API key") are key errors,
a refusal of the caller's location says so and that the key was not checked (OpenAI's
403 ``unsupported_country_region_territory`` keeps the contract's 403 reason,
PROVIDER_KEY_INVALID; Gemini's 400 "User location is not supported" is
``FailedPrecondition``),
a 403 carrying moderation metadata (``reasons`` / ``flagged_input``: OpenRouter's
"your input was flagged") is a refused request, not a refused key,
quota wording (``insufficient_quota``, OpenAI's 429 ``billing_not_active`` "Your account
is not active", HTTP 402, "credit balance", a per-day quota)
is quota exhaustion, other 429s are rate limits with the delay from Retry-After,
Gemini's ``RetryInfo``, or (OpenAI, whose 429s often lack Retry-After) the
"Please try again in 174ms" of the message or the ``x-ratelimit-reset-*`` header
of a used-up limit. A 3xx is a provider error (redirects are never followed).
Every provider message is sanitised and redacted (``redact``) before it reaches an
error: control characters and runs of whitespace become one space, the text is cut
to 300 characters, and the key, anything starting like it, any run of 8 or more
characters that appears in the key (an echo without its prefix), and masked echoes
such as ``xa***56`` are removed. Failures before an HTTP answer arrives (refused,
timed out, policy-refused, not HTTP) all read the same, so the errors cannot be
used to tell an open port from a closed or filtered one. ``parse_json`` parses
provider JSON and turns nesting too deep to parse into a ``ValueError``.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from rmllm_common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidRequest,
    ProviderError,
    ProviderKeyInvalid,
    ProviderQuotaExhausted,
    ProviderRateLimited,
    ProviderUnavailable,
    RmllmError,
    UpstreamStreamTruncated,
)
from rmllm_common.registry import ProviderSpec

log = logging.getLogger(__name__)

_MAX_MESSAGE = 300
_MAX_SCANNED = 4096  # characters of provider text looked at before redaction
_ECHO = 8  # a run this long that appears in the key is an echo of it
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\s]+")
_MASKED = re.compile(r"[^\s*]*\*{3,}[\w\-*]*")
_BAD_KEY = re.compile(
    r"api[ _-]?key[ _-]?(not valid|invalid|expired)|(incorrect|invalid|missing) (api[ _-]?)?key"
    r"|invalid x-api-key|bad credentials",
    re.IGNORECASE,
)
_QUOTA = re.compile(
    r"insufficient[_ ]quota|credit balance|insufficient credits|(no|any) credits|billing_hard_limit"
    r"|billing_not_active|account is not active|limit: 0\b",
    re.IGNORECASE,
)
# Refusals of where the request comes from, not of the key: OpenAI's 403
# unsupported_country_region_territory ("Country, region, or territory not supported"),
# Gemini's 400 FAILED_PRECONDITION "User location is not supported for the API use.".
_REGION = re.compile(
    r"unsupported_country|country, region,? or territory not supported|location is not supported",
    re.IGNORECASE,
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# OpenAI's durations ("174ms", "18.642s", "6m0s", "1h2m3.5s"): in x-ratelimit-reset-*
# and in a 429's "Please try again in ..." text.
_GO_DURATION = r"(?:\d+(?:\.\d+)?ms|(?:\d+h)?(?:\d+m(?!s))?\d+(?:\.\d+)?s|(?:\d+h)?\d+m(?!s)|\d+h)"
_DURATION_PARTS = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRY_AGAIN = re.compile(r"try again in (" + _GO_DURATION + r")\b", re.IGNORECASE)
# Error "types" some formats send instead of (or besides) an HTTP status, mid-stream
# above all: Anthropic's error.type, OpenAI's error.type/code, Gemini's error.status.
_TYPE_STATUS = {
    "authentication_error": 401,
    "invalid_api_key": 401,
    "unauthenticated": 401,
    "permission_error": 403,
    "permission_denied": 403,
    "invalid_request_error": 400,
    "invalid_argument": 400,
    "not_found_error": 404,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "resource_exhausted": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "internal": 500,
    "unavailable": 503,
    "overloaded_error": 529,
    "overloaded": 529,
    "deadline_exceeded": 504,
    "timeout_error": 504,
}


def parse_json(data: str | bytes) -> Any:
    """Provider JSON; a ``ValueError`` for malformed JSON or nesting too deep to parse."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _echo_spans(text: str, secret: str) -> list[tuple[int, int]]:
    """Spans of ``text`` covered by ``_ECHO``-character runs that also appear in ``secret``."""
    grams = {secret[i : i + _ECHO] for i in range(len(secret) - _ECHO + 1)}
    spans: list[tuple[int, int]] = []
    for i in range(len(text) - _ECHO + 1):
        if text[i : i + _ECHO] in grams:
            if spans and spans[-1][1] >= i:
                spans[-1] = (spans[-1][0], i + _ECHO)
            else:
                spans.append((i, i + _ECHO))
    return spans


def redact(text: str, secret: str) -> str:
    """``text`` sanitised, bounded, and without the key or any echo of it (see the docstring)."""
    text = _CONTROL.sub(" ", text[:_MAX_SCANNED]).strip()
    if secret:
        text = text.replace(secret, "[redacted]")
        if len(secret) >= _ECHO:
            text = re.sub(re.escape(secret[:6]) + r"[\w\-*]*", "[redacted]", text)
            spans = _echo_spans(text, secret)
            for start, end in reversed(spans):
                text = text[:start] + "[redacted]" + text[end:]
    text = _MASKED.sub("[redacted]", text)
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return text


def unreachable(name: str) -> str:
    """The one text of every failure before an HTTP answer: it never tells port states apart."""
    return (
        f"cannot reach {name} at the configured endpoint: the connection failed, timed out, "
        "was refused by this server's outbound network policy, or did not answer HTTP"
    )


def _error_object(payload: Any) -> dict[str, Any]:
    """The ``error`` object of a body in any of the formats (a list for Gemini's arrays)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if not isinstance(payload, dict):
        return {}
    error = payload.get("error", payload)
    if isinstance(error, str):  # xAI, Ollama: {"error": "text"}
        return {"message": error, "code": payload.get("code")}
    return error if isinstance(error, dict) else {}


def _describe(error: Mapping[str, Any], body: bytes) -> str:
    message = error.get("message")
    for _ in range(3):  # some proxies nest the real error once more (never follow it far)
        if not isinstance(message, dict):
            break
        message = message.get("message")
    if isinstance(message, str) and message:
        return message
    return body[:200].decode("utf-8", "replace").strip() or "no details given"


def _codes(error: Mapping[str, Any]) -> list[str]:
    """Error code, type and status words, lower-cased (``insufficient_quota``, ``RESOURCE_EXHAUSTED``)."""
    out = []
    for name in ("type", "code", "status"):
        value = error.get(name)
        if isinstance(value, str) and value:
            out.append(value.lower())
    return out


def _details(error: Mapping[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_info(error: Mapping[str, Any]) -> float | None:
    for detail in _details(error):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = datetime.datetime.now(when.tzinfo or datetime.UTC)
    return max(0.0, (when - now).total_seconds())


def _seconds(duration: str) -> float | None:
    """Seconds of an OpenAI duration ("174ms", "6m0s"); None when it is not one."""
    duration = duration.strip()
    if not re.fullmatch(_GO_DURATION, duration):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PARTS.findall(duration))


def _stated_wait(headers: Mapping[str, str], text: str) -> float | None:
    """A 429's wait when it sends no Retry-After: the "try again in 174ms" of its text,
    else the longest ``x-ratelimit-reset-*`` of a limit whose remaining count is 0."""
    match = _TRY_AGAIN.search(text)
    if match:
        return _seconds(match.group(1))
    waits = [
        _seconds(headers.get(f"x-ratelimit-reset-{limit}") or "")
        for limit in ("requests", "tokens")
        if (headers.get(f"x-ratelimit-remaining-{limit}") or "").strip() == "0"
    ]
    known = [w for w in waits if w is not None]
    return max(known) if known else None


def _is_bad_key(error: Mapping[str, Any], message: str) -> bool:
    reasons = {str(d.get("reason", "")) for d in _details(error)}
    if reasons & {"API_KEY_INVALID", "API_KEY_EXPIRED"}:
        return True
    return bool(_BAD_KEY.search(message)) or "invalid_api_key" in _codes(error)


def _is_quota(error: Mapping[str, Any], message: str) -> bool:
    codes = _codes(error)
    if "insufficient_quota" in codes or "billing_not_active" in codes or _QUOTA.search(message):
        return True
    for detail in _details(error):
        for violation in detail.get("violations") or []:
            if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                return True
    return False


def _moderation_reasons(error: Mapping[str, Any]) -> str | None:
    """The reasons of a moderation refusal (``metadata.reasons`` / ``flagged_input``,
    OpenRouter's 403), joined; None when the error is not one."""
    metadata = error.get("metadata")
    if not isinstance(metadata, dict) or not ("reasons" in metadata or "flagged_input" in metadata):
        return None
    reasons = metadata.get("reasons")
    return ", ".join(str(r) for r in reasons[:10]) if isinstance(reasons, list) else ""


def classify(  # noqa: PLR0911 - one classification table, read top to bottom
    spec: ProviderSpec,
    status: int,
    error: Mapping[str, Any],
    *,
    body: bytes,
    secret: str,
    headers: Mapping[str, str] | None = None,
    mid_stream: bool = False,
) -> RmllmError:
    """The domain error for an upstream status and its parsed ``error`` object."""
    name, pid = spec.display_name, spec.id
    message = redact(_describe(error, body), secret).strip().rstrip(".")
    where = "mid-stream" if mid_stream else f"HTTP {status}"
    wait = retry_after(headers or {})
    # A 403 with moderation metadata refused the input: not the key, not the credit.
    flagged = _moderation_reasons(error) if status == 403 else None
    if flagged is not None:
        status = 400
        message += (f" (flagged: {redact(flagged, secret)})" if flagged else "") + (
            ". Change the input or choose another model"
        )
    if status in (400, 403) and flagged is None and _REGION.search(" ".join([*_codes(error), message])):
        refusal = (
            f"{name} does not serve the country or region this server's requests come from "
            f"({where}): {message}. The key was not checked; run the LLM service from a location "
            "the provider supports"
        )
        # A 403 keeps the contract's reason for 401/403 (PROVIDER_KEY_INVALID: the provider
        # will not take this key from here); the message says why.
        if status == 403:
            return ProviderKeyInvalid(refusal + ".", provider=pid)
        return FailedPrecondition(refusal + ".", provider=pid)
    quota_status = status in (402, 429) or (
        status in (400, 403) and flagged is None and _QUOTA.search(message)
    )
    if quota_status and (status == 402 or _is_quota(error, message)):
        return ProviderQuotaExhausted(
            f"{name} says the account has no quota or credit left ({where}): {message}. "
            "Add credit or raise the limit with the provider; retrying will not help.",
            provider=pid,
        )
    if status in (401, 403) or (status == 400 and flagged is None and _is_bad_key(error, message)):
        return ProviderKeyInvalid(
            f"{name} rejected the key ({where}): {message}. Check it with `rmllm test-key {pid}` "
            f"and store a working one with `rmllm keys set {pid}`.",
            provider=pid,
        )
    if status == 429:
        if wait is None:
            wait = _retry_info(error)
        if wait is None:
            wait = _stated_wait(headers or {}, _describe(error, body)[:_MAX_SCANNED])
        return ProviderRateLimited(
            f"{name} is rate limiting this key ({where}): {message}.",
            provider=pid,
            retry_after=wait,
        )
    if status in (408, 409, 425) or status >= 500:
        return ProviderUnavailable(
            f"{name} is unavailable or overloaded ({where}): {message}.",
            provider=pid,
            retry_after=wait,
        )
    if status in (400, 404, 413, 422):
        return InvalidRequest(f"{name} refused the request ({where}): {message}.", provider=pid)
    return ProviderError(f"{name} answered with an error ({where}): {message}.", provider=pid)


def from_response(
    spec: ProviderSpec, status: int, headers: Mapping[str, str], body: bytes, secret: str
) -> RmllmError:
    """The domain error for a non-2xx HTTP answer."""
    if 300 <= status < 400:
        return ProviderError(
            f"{spec.display_name} answered with a redirect (HTTP {status}), which this server never "
            "follows (a key must not travel to another address); check the endpoint's base URL",
            provider=spec.id,
        )
    try:
        payload: Any = parse_json(body) if body else None
    except ValueError:
        payload = None
    return classify(spec, status, _error_object(payload), body=body, secret=secret, headers=headers)


def from_stream_error(spec: ProviderSpec, payload: Any, secret: str) -> RmllmError:
    """The domain error for an error object that arrived as a stream event."""
    error = _error_object(payload)
    status = error.get("code")
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = next((_TYPE_STATUS[c] for c in _codes(error) if c in _TYPE_STATUS), 0)
    try:
        body = json.dumps(payload).encode()
    except (RecursionError, TypeError, ValueError):
        body = b""
    if status:
        return classify(spec, status, error, body=body, secret=secret, mid_stream=True)
    message = redact(_describe(error, body), secret).strip().rstrip(".")
    return ProviderError(f"{spec.display_name} reported an error mid-stream: {message}.", provider=spec.id)


@contextmanager
def transport_errors(spec: ProviderSpec, timeout: float | None, *, streaming: bool = False) -> Iterator[None]:
    """Translate aiohttp/asyncio failures in the block; ``streaming``: the 200 already arrived.

    ``timeout`` is the exchange's total bound in seconds (the caller's remaining time
    or the server's call bound, whichever is shorter).
    """
    name = spec.display_name
    try:
        yield
    except aiohttp.ClientPayloadError as e:
        raise UpstreamStreamTruncated(
            f"{name} cut the response short: {type(e).__name__}", provider=spec.id
        ) from e
    except aiohttp.ServerTimeoutError as e:  # no connection in time, or silence past the read-idle bound
        if streaming and not isinstance(e, aiohttp.ConnectionTimeoutError):
            raise UpstreamStreamTruncated(
                f"{name} went silent mid-stream for longer than this server's read-idle limit",
                provider=spec.id,
            ) from e
        raise ProviderUnavailable(unreachable(name), provider=spec.id) from e
    except TimeoutError as e:
        raise DeadlineExceeded(
            f"{name} did not finish within {timeout:g}s (the caller's deadline or this server's "
            "maximum call duration, whichever is shorter)"
            if timeout is not None
            else f"{name} timed out",
            provider=spec.id,
        ) from e
    except aiohttp.ClientConnectorDNSError as e:
        # A name that does not resolve: most often a mistyped base URL, not a passing fault.
        raise ProviderUnavailable(
            f"the name {e.host!r} of the {spec.display_name} endpoint does not resolve "
            f"({e.os_error.strerror or e.os_error}): check the base URL stored with the key "
            "and the LLM service's DNS",
            provider=spec.id,
            metadata={"cause": "dns", "host": e.host},
        ) from e
    except aiohttp.ClientConnectionError as e:
        if streaming:
            raise UpstreamStreamTruncated(
                f"{name} closed the connection mid-stream ({type(e).__name__})", provider=spec.id
            ) from e
        raise ProviderUnavailable(unreachable(name), provider=spec.id) from e
    except aiohttp.ClientResponseError as e:  # not HTTP at all (a bad status line...)
        if not streaming:
            raise ProviderUnavailable(unreachable(name), provider=spec.id) from e
        raise ProviderError(f"HTTP exchange with {name} failed: {type(e).__name__}", provider=spec.id) from e
    except aiohttp.ClientError as e:
        raise ProviderError(f"HTTP exchange with {name} failed: {type(e).__name__}", provider=spec.id) from e


class unexpected_shapes:  # used as a function: ``with unexpected_shapes(spec)``
    """Stream events whose JSON has the wrong shape (a string where an object belongs...).

    A class, not a generator context manager: it is held for the whole stream, and a
    slotted object costs less memory per open stream than a suspended generator.
    """

    __slots__ = ("_spec",)

    def __init__(self, spec: ProviderSpec) -> None:
        self._spec = spec

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, e: BaseException | None, tb: object) -> None:
        if not isinstance(e, (AttributeError, TypeError, KeyError, ValueError, RecursionError)):
            return
        spec = self._spec
        # Either the provider changed its format or the adapter has a bug: either way an
        # operator must see it. The traceback names the code; the exception's own text is
        # left out, since it may quote the provider's data.
        log.error(
            "%s stream event of an unexpected shape: %s in the adapter; answered PROVIDER_ERROR\n%s",
            spec.display_name,
            type(e).__name__,
            "".join(traceback.format_tb(e.__traceback__)).rstrip(),
            extra={"provider": spec.id, "event": "adapter_unexpected_shape", "exception": type(e).__name__},
        )
        raise ProviderError(
            f"{spec.display_name} sent a stream event of an unexpected shape ({type(e).__name__})",
            provider=spec.id,
        ) from e
