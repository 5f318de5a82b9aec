"""Each provider's real error bodies, for the fake to answer with.

``error(provider, kind, key)`` returns ``(status, headers, body)`` for one of
``KINDS`` exactly as that provider phrases it (OpenAI's masked key echo, xAI's
``xa***56`` echo and string ``error``, Gemini's ``google.rpc`` details with
``API_KEY_INVALID`` / ``QuotaFailure`` / ``RetryInfo``, Anthropic's typed errors,
OpenRouter's 402, ...). Bodies that echo the key are rendered with the key the
request carried, so tests can prove the adapters never pass it on.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

KINDS = (
    "bad_key",
    "forbidden",
    "rate_limited",
    "quota",
    "bad_request",
    "not_found",
    "server_error",
    "unavailable",
    "overloaded",
    "flagged",
)

Reply = tuple[int, dict[str, str], Any]


def _openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _anthropic_error(type_: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": type_, "message": message},
        "request_id": "req_011CUkR4nP6qT8vX0zB2dF4h",
    }


def _google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def _google_retry(seconds: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": seconds}


def _google_quota(quota_id: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": "10",
            }
        ],
    }


_GOOGLE_QUOTA_TEXT = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)


def _openai_family(provider: str, kind: str, key: str) -> Reply:
    masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
    table: dict[str, Reply] = {
        "bad_key": (
            401,
            {},
            _openai_error(
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            ),
        ),
        "forbidden": (
            403,
            {},
            _openai_error(
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            ),
        ),
        "rate_limited": (
            429,
            {"retry-after": "20"},
            _openai_error(
                "Rate limit reached for gpt-4o-mini in organization org-k2x9q4mz8rtd on requests per min "
                "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
                "requests",
                "rate_limit_exceeded",
            ),
        ),
        "quota": (
            429,
            {},
            _openai_error(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
        ),
        "bad_request": (
            400,
            {},
            _openai_error(
                "Invalid value for 'temperature': decimal above maximum value. "
                "Expected a value <= 2, but got 5 instead.",
                "invalid_request_error",
                "decimal_above_max_value",
                "temperature",
            ),
        ),
        "not_found": (
            404,
            {},
            _openai_error(
                "The model `gpt-9` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
        ),
        "server_error": (
            500,
            {},
            _openai_error(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
        ),
        "unavailable": (
            503,
            {"retry-after": "2"},
            _openai_error("The engine is currently overloaded, please try again later", "server_error", None),
        ),
    }
    if provider == "openrouter":
        table["bad_key"] = (401, {}, {"error": {"message": "User not found.", "code": 401}})
        table["quota"] = (
            402,
            {},
            {
                "error": {
                    "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
                    "code": 402,
                }
            },
        )
        retry_at = formatdate(time.time() + 30, usegmt=True)
        table["rate_limited"] = (
            429,
            {"Retry-After": retry_at},
            {
                "error": {
                    "message": "Rate limit exceeded: free-models-per-min.",
                    "code": 429,
                    "metadata": {"headers": {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0"}},
                }
            },
        )
        table["unavailable"] = (
            503,
            {},
            {"error": {"message": "No endpoints found that can handle the request.", "code": 503}},
        )
        # openrouter.ai/docs/errors: "403: Your chosen model requires moderation and your
        # input was flagged", with ModerationErrorMetadata (reasons, flagged_input, ...).
        table["flagged"] = (
            403,
            {},
            {
                "error": {
                    "code": 403,
                    "message": "meta-llama/llama-3.3-70b-instruct requires moderation on Groq. "
                    'Your input was flagged for "violence". No credits were charged.',
                    "metadata": {
                        "reasons": ["violence"],
                        "flagged_input": "Again, in French....",
                        "provider_name": "Groq",
                        "model_slug": "meta-llama/llama-3.3-70b-instruct",
                    },
                }
            },
        )
    elif provider == "grok":
        table["bad_key"] = (
            400,
            {},
            {
                "code": "Client specified an invalid argument",
                "error": f"Incorrect API key provided: {key[:2]}***{key[-2:]}. "
                "You can obtain an API key from https://console.x.ai.",
            },
        )
        table["quota"] = (
            403,
            {},
            {
                "code": "The caller does not have permission to execute the specified operation",
                "error": "Your newly created team doesn't have any credits yet. You can purchase "
                "credits on https://console.x.ai/team/4f1c2b7e-8d3a-4e6f-9b0c-5a2d7e1f3c84.",
            },
        )
        table["rate_limited"] = (
            429,
            {"retry-after": "3"},
            {
                "code": "Some resource has been exhausted",
                "error": "Too many requests: 61 requests in the last minute.",
            },
        )
    elif provider == "github":
        table["bad_key"] = (
            401,
            {},
            {"error": {"code": "unauthorized", "message": "Bad credentials", "details": "Bad credentials"}},
        )
        table["rate_limited"] = (
            429,
            {"retry-after": "42"},
            {
                "error": {
                    "code": "RateLimitReached",
                    "message": "Rate limit of 15 per 60s exceeded for UserByModelByMinute. "
                    "Please wait 42 seconds before retrying.",
                    "details": "Rate limit of 15 per 60s exceeded for UserByModelByMinute.",
                }
            },
        )
        del table["quota"]
    elif provider == "llama":
        table["bad_key"] = (401, {}, {"error": "unauthorized"})
        table["not_found"] = (
            404,
            {},
            _openai_error('model "llama9" not found, try pulling it first', "api_error", None),
        )
        del table["quota"]
    return table[kind]


def _anthropic(kind: str) -> Reply:
    table: dict[str, Reply] = {
        "bad_key": (401, {}, _anthropic_error("authentication_error", "invalid x-api-key")),
        "forbidden": (
            403,
            {},
            _anthropic_error(
                "permission_error", "Your API key does not have permission to use the specified resource."
            ),
        ),
        "rate_limited": (
            429,
            {"retry-after": "7"},
            _anthropic_error(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute.",
            ),
        ),
        "quota": (
            400,
            {},
            _anthropic_error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to "
                "Plans & Billing to upgrade or purchase credits.",
            ),
        ),
        "bad_request": (
            400,
            {},
            _anthropic_error("invalid_request_error", "messages: at least one message is required"),
        ),
        "not_found": (404, {}, _anthropic_error("not_found_error", "model: claude-9")),
        "server_error": (500, {}, _anthropic_error("api_error", "Internal server error")),
        "unavailable": (503, {}, _anthropic_error("api_error", "Service unavailable")),
        "overloaded": (529, {}, _anthropic_error("overloaded_error", "Overloaded")),
    }
    return table[kind]


def _google(kind: str) -> Reply:
    bad_key_info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
    table: dict[str, Reply] = {
        "bad_key": (
            400,
            {},
            _google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                bad_key_info,
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": "API key not valid. Please pass a valid API key.",
                },
            ),
        ),
        "forbidden": (
            403,
            {},
            _google_error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            ),
        ),
        "rate_limited": (
            429,
            {},
            _google_error(
                429,
                "RESOURCE_EXHAUSTED",
                _GOOGLE_QUOTA_TEXT,
                _google_quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
                _google_retry("12s"),
            ),
        ),
        "quota": (
            429,
            {},
            _google_error(
                429,
                "RESOURCE_EXHAUSTED",
                _GOOGLE_QUOTA_TEXT,
                _google_quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
                _google_retry("51s"),
            ),
        ),
        "bad_request": (
            400,
            {},
            _google_error(
                400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n"
            ),
        ),
        "not_found": (
            404,
            {},
            _google_error(
                404,
                "NOT_FOUND",
                "models/gemini-9 is not found for API version v1beta, or is not supported for "
                "generateContent. Call ListModels to see the list of available models.",
            ),
        ),
        "server_error": (
            500,
            {},
            _google_error(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            ),
        ),
        "unavailable": (
            503,
            {},
            _google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        ),
    }
    return table[kind]


def error(provider: str, kind: str, key: str) -> Reply:
    """``(status, headers, JSON body)`` of ``provider``'s ``kind`` error; KeyError if it has none."""
    if kind not in KINDS:
        raise KeyError(f"unknown error kind {kind!r}; one of {KINDS}")
    if provider == "anthropic":
        return _anthropic(kind)
    if provider == "google":
        return _google(kind)
    if kind == "overloaded":
        kind = "unavailable"
    return _openai_family(provider, kind, key)


def has_error(provider: str, kind: str) -> bool:
    """Whether ``provider`` has a canned ``kind`` error."""
    try:
        error(provider, kind, "sk-placeholder-key-0000")
    except KeyError:
        return False
    return True
