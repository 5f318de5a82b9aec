"""The upstream error table: every provider's real error answers -> one domain error each.

Each row runs the real adapter against the fake answering with that provider's
own error body; the error must have the right class, reason, retry delay and
``provider`` metadata, say how to fix itself, and never contain the key.
"""

from __future__ import annotations

import time
from email.utils import formatdate

import aiohttp
import pytest
from fakes import FakeProvider, Scenario
from fakes.harness import KEYS, collect, endpoint, params

from llm_service.adapters import adapter_for
from llm_service.adapters.errors import from_stream_error, redact, retry_after
from rmllm_common import errors
from rmllm_common.registry import default_registry

KEY = errors.ProviderKeyInvalid
RATE = errors.ProviderRateLimited
QUOTA = errors.ProviderQuotaExhausted
DOWN = errors.ProviderUnavailable
BAD = errors.InvalidRequest

# (provider, kind) -> (error class, retry_after); "date" = from an HTTP-date Retry-After (about 30 s).
TABLE: dict[tuple[str, str], tuple[type[errors.RmllmError], float | str | None]] = {
    ("openai", "bad_key"): (KEY, None),
    ("openai", "forbidden"): (KEY, None),  # OpenAI's region block: a 403, so the contract's key reason
    ("openai", "rate_limited"): (RATE, 20.0),
    ("openai", "quota"): (QUOTA, None),
    ("openai", "bad_request"): (BAD, None),
    ("openai", "not_found"): (BAD, None),
    ("openai", "server_error"): (DOWN, None),
    ("openai", "unavailable"): (DOWN, 2.0),
    ("anthropic", "bad_key"): (KEY, None),
    ("anthropic", "forbidden"): (KEY, None),
    ("anthropic", "rate_limited"): (RATE, 7.0),
    ("anthropic", "quota"): (QUOTA, None),
    ("anthropic", "bad_request"): (BAD, None),
    ("anthropic", "not_found"): (BAD, None),
    ("anthropic", "server_error"): (DOWN, None),
    ("anthropic", "unavailable"): (DOWN, None),
    ("anthropic", "overloaded"): (DOWN, None),
    ("google", "bad_key"): (KEY, None),
    ("google", "forbidden"): (KEY, None),
    ("google", "rate_limited"): (RATE, 12.0),
    ("google", "quota"): (QUOTA, None),
    ("google", "bad_request"): (BAD, None),
    ("google", "not_found"): (BAD, None),
    ("google", "server_error"): (DOWN, None),
    ("google", "unavailable"): (DOWN, None),
    ("openrouter", "bad_key"): (KEY, None),
    ("openrouter", "rate_limited"): (RATE, "date"),
    ("openrouter", "quota"): (QUOTA, None),
    ("openrouter", "unavailable"): (DOWN, None),
    ("openrouter", "flagged"): (BAD, None),  # moderation refused the input: not the key
    ("github", "bad_key"): (KEY, None),
    ("github", "rate_limited"): (RATE, 42.0),
    ("github", "server_error"): (DOWN, None),
    ("grok", "bad_key"): (KEY, None),
    ("grok", "quota"): (QUOTA, None),
    ("grok", "rate_limited"): (RATE, 3.0),
    ("grok", "not_found"): (BAD, None),
    ("llama", "bad_key"): (KEY, None),
    ("llama", "not_found"): (BAD, None),
    ("llama", "overloaded"): (DOWN, 2.0),
}


def test_the_table_covers_every_provider() -> None:
    assert {p for p, _ in TABLE} == set(default_registry().providers)


@pytest.mark.parametrize(("provider", "kind"), sorted(TABLE))
async def test_error_table(fake: FakeProvider, http: aiohttp.ClientSession, provider: str, kind: str) -> None:
    cls, wait = TABLE[provider, kind]
    ep = endpoint(fake, provider, key=KEYS[provider] or "local-proxy-token-0123456789")
    fake.enqueue(Scenario.canned(provider, kind))

    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(provider), 10))

    error = out.error
    assert type(error) is cls, error
    assert out.deltas == [] and out.finished is None
    assert error.reason == cls.reason
    assert error.metadata == {"provider": provider}
    if wait == "date":
        assert error.retry_after is not None and 20 <= error.retry_after <= 31
    else:
        assert error.retry_after == wait
    key = ep.api_key.reveal()
    assert key not in error.message and key[:10] not in error.message
    assert ep.spec.display_name in error.message
    if cls is KEY and (provider, kind) != ("openai", "forbidden"):  # a region block: no key advice
        assert f"rmllm test-key {provider}" in error.message


@pytest.mark.parametrize("provider", ["openai", "grok"])
async def test_key_echoes_are_redacted(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    """OpenAI echoes ``sk-proj-****WXYZ``, xAI ``xa***56``: neither reaches the error."""
    ep = endpoint(fake, provider)
    fake.enqueue(Scenario.canned(provider, "bad_key"))
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(provider), 10))
    assert out.error is not None
    assert "Incorrect API key provided: [redacted]" in out.error.message
    assert "***" not in out.error.message


async def test_a_body_echoing_the_whole_key_is_redacted(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    key = KEYS["openai"]
    body = {"error": {"message": f"Model not allowed for key {key} (prefix {key[:20]}...)", "type": "x"}}
    fake.enqueue(Scenario.json(body, status=400))
    ep = endpoint(fake, "openai")
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openai"), 10))
    assert isinstance(out.error, BAD)
    assert key[:8] not in out.error.message
    assert out.error.message.count("[redacted]") == 2


async def test_non_json_error_body_is_still_classified(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(
        Scenario(status=502, body=b"<html>502 Bad Gateway</html>", headers={"Content-Type": "text/html"})
    )
    ep = endpoint(fake, "openrouter")
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openrouter"), 10))
    assert isinstance(out.error, DOWN)
    assert "502 Bad Gateway" in out.error.message


@pytest.mark.parametrize(
    ("status", "cls"),
    [(408, DOWN), (409, DOWN), (422, BAD), (413, BAD), (418, errors.ProviderError), (529, DOWN)],
)
async def test_other_statuses(
    fake: FakeProvider, http: aiohttp.ClientSession, status: int, cls: type[errors.RmllmError]
) -> None:
    fake.enqueue(Scenario.json({"error": {"message": "nope"}}, status=status))
    ep = endpoint(fake, "openai")
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openai"), 10))
    assert type(out.error) is cls


_TPM = (
    "Rate limit reached for gpt-4o-mini in organization org-k2x9q4mz8rtd on tokens per min (TPM): "
    "Limit 200000, Used 199872, Requested 1337. Please try again in {}. "
    "Visit https://platform.openai.com/account/rate-limits to learn more."
)


@pytest.mark.parametrize(
    ("message", "headers", "wait"),
    [
        (_TPM.format("174ms"), {}, 0.174),
        (_TPM.format("18.642s"), {}, 18.642),
        (_TPM.format("6m0s"), {}, 360.0),
        (_TPM.format("1h2m3.5s"), {}, 3723.5),
        (  # no hint in the text: the reset of the limit that is used up
            "Rate limit reached for requests",
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1m30s",
                "x-ratelimit-remaining-tokens": "149000",
                "x-ratelimit-reset-tokens": "12ms",
            },
            90.0,
        ),
        (_TPM.format("20s"), {"retry-after": "3"}, 3.0),  # Retry-After first, as the SDK reads it
        ("Rate limit reached for requests", {"x-ratelimit-reset-requests": "1s"}, None),  # not used up
    ],
)
async def test_openai_429_without_retry_after_takes_the_wait_it_states(
    fake: FakeProvider,
    http: aiohttp.ClientSession,
    message: str,
    headers: dict[str, str],
    wait: float | None,
) -> None:
    """OpenAI's 429 often has no Retry-After: "Please try again in 174ms" and the
    x-ratelimit-reset-* headers (platform.openai.com/docs/guides/rate-limits) say how long."""
    body = {"error": {"message": message, "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}
    fake.enqueue(Scenario.json(body, status=429, headers=headers))
    ep = endpoint(fake, "openai")
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openai"), 10))
    assert isinstance(out.error, RATE)
    if wait is None:
        assert out.error.retry_after is None
    else:
        assert out.error.retry_after == pytest.approx(wait)


def test_retry_after_forms() -> None:
    assert retry_after({"Retry-After": "5"}) == 5.0
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    later = retry_after({"Retry-After": formatdate(time.time() + 60, usegmt=True)})
    assert later is not None and 50 <= later <= 61
    assert retry_after({"Retry-After": formatdate(time.time() - 60, usegmt=True)}) == 0.0
    assert retry_after({"Retry-After": "soon"}) is None
    assert retry_after({}) is None


def test_redact() -> None:
    key = "sk-proj-abcdefghijklmnop1234"
    assert redact(f"key {key} is bad", key) == "key [redacted] is bad"
    assert (
        redact("Incorrect API key provided: sk-proj-abcdefgh.", key)
        == "Incorrect API key provided: [redacted]."
    )
    assert redact("key xa***56 rejected", "") == "key [redacted] rejected"
    assert redact("nothing to hide", key) == "nothing to hide"
    assert len(redact("x" * 5000, key)) == 300


def test_stream_errors_by_type_or_code() -> None:
    spec = default_registry().providers["anthropic"]
    cases: list[tuple[object, type[errors.RmllmError]]] = [
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, DOWN),
        ({"type": "error", "error": {"type": "api_error", "message": "boom"}}, DOWN),
        ({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, RATE),
        ({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}, BAD),
        ({"error": {"code": 502, "message": "Provider returned error"}}, DOWN),
        ({"error": {"code": "insufficient_quota", "message": "no money"}}, QUOTA),
        ({"error": {"code": 403, "message": "flagged", "metadata": {"reasons": ["hate"]}}}, BAD),
        ({"error": {"message": "something odd"}}, errors.ProviderError),
    ]
    for payload, cls in cases:
        error = from_stream_error(spec, payload, "sk-ant-secret")
        assert type(error) is cls, (payload, error)
        assert error.provider == "anthropic"
        assert "mid-stream" in error.message


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("openai", b'data: {"choices":"oops"}\n\ndata: [DONE]\n\n'),
        ("openrouter", b'data: {"choices":[{"index":0,"delta":"text"}]}\n\ndata: [DONE]\n\n'),
        ("anthropic", b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":"x"}\n\n'),
        (
            "anthropic",
            b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":"many"}}\n\n',
        ),
        ("google", b'data: {"candidates":{"index":0}}\r\n\r\n'),
        ("google", b"data: [1, 2]\r\n\r\n"),
    ],
)
async def test_events_of_an_unexpected_shape_are_a_provider_error(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str, body: bytes
) -> None:
    fake.enqueue(Scenario(body=body, headers={"Content-Type": "text/event-stream"}))
    ep = endpoint(fake, provider)
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(provider), 10))
    assert type(out.error) is errors.ProviderError, out.error
    assert out.error.provider == provider


@pytest.mark.parametrize(
    ("provider", "status", "error"),
    [
        (
            "openai",
            403,
            {
                "code": "unsupported_country_region_territory",
                "message": "Country, region, or territory not supported",
                "param": None,
                "type": "request_forbidden",
            },
        ),
        (
            "google",
            400,
            {
                "code": 400,
                "message": "User location is not supported for the API use.",
                "status": "FAILED_PRECONDITION",
            },
        ),
    ],
)
async def test_a_refused_location_says_so_and_that_the_key_was_not_checked(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str, status: int, error: dict[str, object]
) -> None:
    """The provider refuses where the request comes from: FAILED_PRECONDITION either way,
    and the message says so, not "replace the key" (a working key may be refused here)."""
    fake.enqueue(Scenario.json({"error": error}, status=status))
    ep = endpoint(fake, provider)
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params(provider), 10))
    # A 403 keeps the contract's reason for 401/403; the 400 is a failed precondition.
    expected = errors.ProviderKeyInvalid if status == 403 else errors.FailedPrecondition
    assert type(out.error) is expected, out.error
    assert out.error.reason == ("PROVIDER_KEY_INVALID" if status == 403 else "FAILED_PRECONDITION")
    assert out.error.metadata == {"provider": provider}
    assert "key was not checked" in out.error.message


@pytest.mark.parametrize("code", ["billing_not_active", None])
async def test_an_openai_account_without_active_billing_is_out_of_quota(
    fake: FakeProvider, http: aiohttp.ClientSession, code: str | None
) -> None:
    """OpenAI's 429 ``billing_not_active`` (``code`` null in older answers) will not pass
    with time: PROVIDER_QUOTA_EXHAUSTED, not PROVIDER_RATE_LIMITED."""
    body = {
        "error": {
            "message": "Your account is not active, please check your billing details on our website.",
            "type": "billing_not_active",
            "param": None,
            "code": code,
        }
    }
    fake.enqueue(Scenario.json(body, status=429))
    ep = endpoint(fake, "openai")
    out = await collect(adapter_for(ep.spec).stream_chat(http, ep, params("openai"), 10))
    assert type(out.error) is errors.ProviderQuotaExhausted, out.error
    assert out.error.retry_after is None
