"""probe_key (TestKey's check) and list_models, for every provider, against the fake."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from fakes import FakeProvider, Scenario
from fakes.account_replies import GITHUB_CATALOG_DOC
from fakes.harness import KEYS, PROVIDERS, endpoint
from fakes.provider_errors import has_error

from llm_service.adapters import adapter_for
from llm_service.adapters.base import Endpoint, ListedModel, ProbeOutcome
from rmllm_common import errors
from rmllm_common.registry import default_registry, load_registry
from rmllm_common.secret import Secret

PROBE_PATHS = {
    "openai": "/v1/models",
    "anthropic": "/v1/models",
    "google": "/v1beta/models",
    "openrouter": "/api/v1/key",
    "github": "/catalog/models",
    "grok": "/v1/api-key",
    "llama": "/api/tags",
}
OUTCOMES = {
    "bad_key": ProbeOutcome.INVALID_KEY,
    "forbidden": ProbeOutcome.INVALID_KEY,
    "quota": ProbeOutcome.QUOTA_EXHAUSTED,
    "rate_limited": ProbeOutcome.RATE_LIMITED,
    "server_error": ProbeOutcome.UNREACHABLE,
    "unavailable": ProbeOutcome.UNREACHABLE,
}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_probe_valid_uses_the_registry_probe(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str
) -> None:
    ep = endpoint(fake, provider)
    result = await adapter_for(ep.spec).probe_key(http, ep, 5)

    assert result.outcome is ProbeOutcome.VALID
    assert ep.spec.display_name in result.message
    record = fake.requests[-1]
    assert (record.method, record.path) == ("GET", PROBE_PATHS[provider])
    assert record.api_key == KEYS[provider]
    if ep.spec.auth == "x-api-key":
        assert record.headers["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize(
    ("provider", "kind"),
    [(p, k) for p in PROVIDERS for k in OUTCOMES if has_error(p, k)],
)
async def test_probe_outcomes(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str, kind: str
) -> None:
    ep = endpoint(fake, provider, key=KEYS[provider] or "proxy-token-abcdefghijklmnop")
    fake.enqueue(Scenario.canned(provider, kind, route="get"))

    result = await adapter_for(ep.spec).probe_key(http, ep, 5)

    assert result.outcome is OUTCOMES[kind]
    assert ep.api_key.reveal() not in result.message
    assert ep.spec.display_name in result.message


@pytest.mark.parametrize(
    ("provider", "status", "body"),
    [
        (
            "openai",
            403,
            {
                "error": {
                    "code": "unsupported_country_region_territory",
                    "message": "Country, region, or territory not supported",
                    "param": None,
                    "type": "request_forbidden",
                }
            },
        ),
        (
            "google",
            400,
            {
                "error": {
                    "code": 400,
                    "message": "User location is not supported for the API use.",
                    "status": "FAILED_PRECONDITION",
                }
            },
        ),
    ],
)
async def test_probe_from_an_unsupported_region_says_the_key_was_not_checked(
    fake: FakeProvider, http: aiohttp.ClientSession, provider: str, status: int, body: dict[str, object]
) -> None:
    """OpenAI's 403 ``unsupported_country_region_territory`` and Gemini's 400
    ``FAILED_PRECONDITION`` "User location is not supported" refuse where the request
    comes from; the key may well be good, and TestKey's message says it was not checked."""
    fake.enqueue(Scenario.json(body, status=status, route="get"))
    ep = endpoint(fake, provider)
    result = await adapter_for(ep.spec).probe_key(http, ep, 5)
    # OpenAI's is a 403: the contract's "rejected the key"; the message tells why.
    assert result.outcome is (ProbeOutcome.INVALID_KEY if status == 403 else ProbeOutcome.UNKNOWN)
    assert "not supported" in result.message
    assert "key was not checked" in result.message


async def test_probe_unreachable_when_nothing_listens(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = default_registry().providers["llama"]
    ep = endpoint_at(f"http://127.0.0.1:{port}/v1", "llama")
    result = await adapter_for(spec).probe_key(http, ep, 5)
    assert result.outcome is ProbeOutcome.UNREACHABLE
    assert "cannot reach" in result.message


async def test_probe_that_never_answers_is_unreachable(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Scenario(hang=True))
    ep = endpoint(fake, "openai")
    result = await adapter_for(ep.spec).probe_key(http, ep, 0.3)
    assert result.outcome is ProbeOutcome.UNREACHABLE


async def test_probe_unknown_for_an_unclassifiable_answer(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Scenario.json({"error": {"message": "I'm a teapot"}}, status=418))
    ep = endpoint(fake, "openai")
    result = await adapter_for(ep.spec).probe_key(http, ep, 5)
    assert result.outcome is ProbeOutcome.UNKNOWN


async def test_probe_sees_a_blocked_key_in_a_200(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake.enqueue(
        Scenario.json({"redacted_api_key": "xai-...56", "api_key_blocked": True, "team_blocked": False})
    )
    ep = endpoint(fake, "grok")
    result = await adapter_for(ep.spec).probe_key(http, ep, 5)
    assert result.outcome is ProbeOutcome.INVALID_KEY
    assert "api key blocked" in result.message


@pytest.mark.parametrize("flag", ["is_management_key", "is_provisioning_key"])
async def test_probe_sees_an_openrouter_management_key_in_a_200(
    fake: FakeProvider, http: aiohttp.ClientSession, flag: str
) -> None:
    """OpenRouter's GET /key answers 200 for a management (formerly provisioning) key,
    which "cannot be used to make API calls to OpenRouter's completion endpoints"."""
    data = {
        "label": "sk-or-v1-3f9...c21",
        "limit": None,
        "usage": 0,
        "usage_daily": 0,
        "usage_weekly": 0,
        "usage_monthly": 0,
        "byok_usage": 0,
        "is_free_tier": False,
        "is_management_key": False,
        "is_provisioning_key": False,
        "limit_remaining": None,
        "limit_reset": None,
        "include_byok_in_limit": False,
        "rate_limit": {
            "requests": -1,
            "interval": "10s",
            "note": "This field is deprecated and safe to ignore.",
        },
    }
    data[flag] = True
    fake.enqueue(Scenario.json({"data": data}, route="get"))
    ep = endpoint(fake, "openrouter")
    result = await adapter_for(ep.spec).probe_key(http, ep, 5)
    assert result.outcome is ProbeOutcome.INVALID_KEY
    assert "management key" in result.message


async def test_probe_sees_no_credit_left_in_a_200(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Scenario.json({"data": {"label": "sk-or-v1-0e6...a1c", "limit": 5, "limit_remaining": 0}}))
    ep = endpoint(fake, "openrouter")
    result = await adapter_for(ep.spec).probe_key(http, ep, 5)
    assert result.outcome is ProbeOutcome.QUOTA_EXHAUSTED


def endpoint_at(base_url: str, provider: str) -> Endpoint:
    return Endpoint(spec=default_registry().providers[provider], base_url=base_url, api_key=Secret(""))


@pytest.mark.parametrize("provider", ["openai", "grok", "llama", "anthropic", "openrouter"])
async def test_list_models_data_shape(fake: FakeProvider, http: aiohttp.ClientSession, provider: str) -> None:
    ep = endpoint(fake, provider)
    models = await adapter_for(ep.spec).list_models(http, ep, 5)

    assert [m.id for m in models] == [m.id for m in ep.spec.models]
    record = fake.requests[-1]
    assert (record.method, record.path) == (
        "GET",
        "/api/v1/models" if provider == "openrouter" else "/v1/models",
    )
    assert record.api_key == KEYS[provider]
    if provider in ("anthropic", "openrouter"):  # these list display names
        assert [m.display_name for m in models] == [m.display_name for m in ep.spec.models]


async def test_list_models_openrouter_context_window(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    ep = endpoint(fake, "openrouter")
    models = await adapter_for(ep.spec).list_models(http, ep, 5)
    assert models[0] == ListedModel("openai/gpt-4o-mini", "OpenAI: GPT-4o mini", 128000)


async def test_list_models_gemini_follows_pages(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    ep = endpoint(fake, "google")
    models = await adapter_for(ep.spec).list_models(http, ep, 5)

    assert models == [ListedModel(m.id, m.display_name, m.context_window) for m in ep.spec.models]
    assert [r.query for r in fake.requests] == [{}, {"pageToken": "page-1"}]
    assert all(r.path == "/v1beta/models" for r in fake.requests)


async def test_list_models_without_a_models_path_asks_nobody(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    ep = endpoint(fake, "openai")
    ep = replace(ep, spec=replace(ep.spec, models_path=""))
    assert await adapter_for(ep.spec).list_models(http, ep, 5) == []
    assert fake.requests == []


async def test_list_models_github_reads_the_catalog_at_the_origin(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    """GitHub Models lists at ``GET https://models.github.ai/catalog/models`` (the
    inference base URL's origin, not under ``/inference``), answering a top-level JSON
    array; an entry whose ``supported_output_modalities`` lack "text" (an embedding
    model) cannot chat and is left out. ``limits.max_input_tokens`` is the context window."""
    fake.enqueue(Scenario.json(GITHUB_CATALOG_DOC, route="get"))
    ep = endpoint(fake, "github")
    models = await adapter_for(ep.spec).list_models(http, ep, 5)

    assert models == [
        ListedModel("openai/gpt-4.1", "OpenAI GPT-4.1", 1048576),
        ListedModel("microsoft/phi-4-mini-instruct", "Phi-4-mini-instruct", 128000),
    ]
    record = fake.requests[-1]
    assert (record.method, record.path, record.query) == ("GET", "/catalog/models", {})
    assert record.api_key == KEYS["github"]
    assert len(fake.requests) == 1  # one array, no pages


async def test_list_models_github_default_catalog_drops_the_embedding_model(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    ep = endpoint(fake, "github")
    models = await adapter_for(ep.spec).list_models(http, ep, 5)
    assert [m.id for m in models] == [m.id for m in ep.spec.models]
    assert [m.context_window for m in models] == [m.context_window for m in ep.spec.models]


async def test_list_models_github_bad_token_is_key_invalid(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Scenario.canned("github", "bad_key", route="get"))
    ep = endpoint(fake, "github")
    with pytest.raises(errors.ProviderKeyInvalid) as caught:
        await adapter_for(ep.spec).list_models(http, ep, 5)
    assert caught.value.provider == "github"
    assert KEYS["github"] not in caught.value.message


async def test_list_models_raises_the_mapped_error(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake.enqueue(Scenario.canned("anthropic", "bad_key", route="get"))
    ep = endpoint(fake, "anthropic")
    with pytest.raises(errors.ProviderKeyInvalid) as caught:
        await adapter_for(ep.spec).list_models(http, ep, 5)
    assert caught.value.provider == "anthropic"


async def test_list_models_non_json_is_a_provider_error(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Scenario(body=b"<html>maintenance</html>", headers={"Content-Type": "text/html"}))
    ep = endpoint(fake, "openai")
    with pytest.raises(errors.ProviderError):
        await adapter_for(ep.spec).list_models(http, ep, 5)


def _anthropic_model(model_id: str, name: str) -> dict[str, str]:
    return {"type": "model", "id": model_id, "display_name": name, "created_at": "2025-05-22T00:00:00Z"}


async def test_list_models_anthropic_asks_for_whole_pages_and_follows_has_more(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    """Anthropic's GET /v1/models answers 20 models a page unless ``limit`` (up to 1000)
    says otherwise, and says ``has_more`` with ``last_id`` for the ``after_id`` of the next page."""
    first = [
        _anthropic_model("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5"),
        _anthropic_model("claude-opus-4-1-20250805", "Claude Opus 4.1"),
    ]
    second = [_anthropic_model("claude-3-haiku-20240307", "Claude Haiku 3")]
    fake.enqueue(
        Scenario.json(
            {"data": first, "has_more": True, "first_id": first[0]["id"], "last_id": first[-1]["id"]},
            route="get",
        ),
        Scenario.json(
            {"data": second, "has_more": False, "first_id": second[0]["id"], "last_id": second[0]["id"]},
            route="get",
        ),
    )
    ep = endpoint(fake, "anthropic")
    models = await adapter_for(ep.spec).list_models(http, ep, 5)

    assert [m.id for m in models] == [m["id"] for m in first + second]
    assert models[0].display_name == "Claude Sonnet 4.5"
    assert [r.query for r in fake.requests] == [
        {"limit": "1000"},
        {"limit": "1000", "after_id": "claude-opus-4-1-20250805"},
    ]
    assert all(r.path == "/v1/models" for r in fake.requests)


async def test_list_models_anthropic_empty_page(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake.enqueue(
        Scenario.json({"data": [], "has_more": False, "first_id": None, "last_id": None}, route="get")
    )
    ep = endpoint(fake, "anthropic")
    assert await adapter_for(ep.spec).list_models(http, ep, 5) == []
    assert len(fake.requests) == 1


# Google's GET /v1beta/models lists every model the key can see: embedding, Imagen,
# Veo and AQA models too, which generateContent (and so Chat) refuses.
_GEMINI_LISTING = {
    "models": [
        {
            "name": "models/gemini-2.5-flash",
            "baseModelId": "gemini-2.5-flash",
            "version": "001",
            "displayName": "Gemini 2.5 Flash",
            "description": "Stable version of Gemini 2.5 Flash, our mid-size multimodal model that "
            "supports up to 1 million tokens, released in June of 2025.",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": [
                "generateContent",
                "countTokens",
                "createCachedContent",
                "batchGenerateContent",
            ],
            "temperature": 1,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2,
            "thinking": True,
        },
        {
            "name": "models/gemini-embedding-001",
            "version": "001",
            "displayName": "Gemini Embedding 001",
            "description": "Obtain a distributed representation of a text.",
            "inputTokenLimit": 2048,
            "outputTokenLimit": 1,
            "supportedGenerationMethods": [
                "embedContent",
                "countTextTokens",
                "countTokens",
                "asyncBatchEmbedContent",
            ],
        },
        {
            "name": "models/imagen-4.0-generate-001",
            "version": "001",
            "displayName": "Imagen 4",
            "description": "Vertex served Imagen 4.0 model",
            "inputTokenLimit": 480,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": ["predict"],
        },
        {
            "name": "models/veo-3.0-generate-001",
            "version": "3.0",
            "displayName": "Veo 3",
            "description": "Veo 3",
            "inputTokenLimit": 480,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": ["predictLongRunning"],
        },
        {
            "name": "models/aqa",
            "version": "001",
            "displayName": "Model that performs Attributed Question Answering.",
            "inputTokenLimit": 7168,
            "outputTokenLimit": 1024,
            "supportedGenerationMethods": ["generateAnswer"],
        },
        # No supportedGenerationMethods at all (an optional field): kept, nothing says it cannot chat.
        {"name": "models/gemini-2.5-pro", "displayName": "Gemini 2.5 Pro", "inputTokenLimit": 1048576},
    ]
}


async def test_list_models_gemini_lists_only_generate_content_models(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    fake.enqueue(Scenario.json(_GEMINI_LISTING, route="get"))
    ep = endpoint(fake, "google")
    models = await adapter_for(ep.spec).list_models(http, ep, 5)
    assert models == [
        ListedModel("gemini-2.5-flash", "Gemini 2.5 Flash", 1048576),
        ListedModel("gemini-2.5-pro", "Gemini 2.5 Pro", 1048576),
    ]


async def test_probe_of_an_openai_account_without_active_billing_is_quota_exhausted(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    """OpenAI answers 429 ``billing_not_active`` for an account without active billing:
    no wait fixes that, so it is no rate limit."""
    body = {
        "error": {
            "message": "Your account is not active, please check your billing details on our website.",
            "type": "billing_not_active",
            "param": None,
            "code": "billing_not_active",
        }
    }
    fake.enqueue(Scenario.json(body, status=429, route="get"))
    ep = endpoint(fake, "openai")
    result = await adapter_for(ep.spec).probe_key(http, ep, 5)
    assert result.outcome is ProbeOutcome.QUOTA_EXHAUSTED


def test_models_url_is_relative_to_the_base_or_its_origin() -> None:
    rows = default_registry().providers
    assert rows["github"].models_url("https://models.github.ai/inference") == (
        "https://models.github.ai/catalog/models"
    )
    assert rows["openai"].models_url("https://api.openai.com/v1/") == "https://api.openai.com/v1/models"
    assert replace(rows["openai"], models_path="").models_url("https://api.openai.com/v1") == ""


def test_a_listing_relative_to_anything_else_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        """
[providers.x]
display_name = "X"
wire_format = "openai"
base_url = "https://x.example/v1"
auth = "bearer"
default_model = "m"
probe = { method = "GET", path = "/models" }
models_path = "/models"
models_relative_to = "host"
"""
    )
    with pytest.raises(ValueError, match="models_relative_to must be one of"):
        load_registry(path)
