"""ListProviders (the registry, built once) and ListModels (live, else the registry)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import grpc
import pytest
from fakes import FakeProvider, Scenario
from fakes.account_replies import GITHUB_CATALOG_DOC
from fakes.harness import KEYS
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_fake_vault import StoredKey
from testkit.llm_harness import ALICE_OPENAI_KEY, LLMHarness, auth, llm_harness, rich_error, user_token

from llm_service.adapters.base import ListedModel
from rmllm_common import errors
from rmllm_common.registry import Registry, default_registry


async def test_list_providers_is_the_registry(llm: LLMHarness) -> None:
    reply = await llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=auth())
    ids = [p.id for p in reply.providers]
    assert ids == sorted(ids) == ["anthropic", "github", "google", "grok", "llama", "openai", "openrouter"]
    google = next(p for p in reply.providers if p.id == "google")
    assert list(google.aliases) == ["google-ai", "gemini"]
    assert google.wire_format == "gemini"
    assert google.default_base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert google.default_model == "gemini-2.5-flash"
    assert google.requires_key
    assert "streaming" in google.features
    flash = next(m for m in google.models if m.id == "gemini-2.5-flash")
    assert (flash.context_window, flash.input_price_per_mtok, flash.output_price_per_mtok) == (
        1048576,
        0.30,
        2.50,
    )
    llama = next(p for p in reply.providers if p.id == "llama")
    assert not llama.requires_key
    assert llm.vault.methods() == ["AuthenticateToken"]


async def test_list_providers_needs_a_known_token(llm: LLMHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.ListProviders(llm_pb2.ListProvidersRequest(), metadata=auth(user_token("unknown")))
    assert rich_error(caught.value).reason == "TOKEN_INVALID"


async def test_list_models_live_with_the_stored_key(llm: LLMHarness) -> None:
    llm.adapter.models = [
        ListedModel("gpt-4o"),
        ListedModel("gpt-brand-new", display_name="Brand new", context_window=4096),
        ListedModel("gpt-4o"),
        ListedModel("aaa-first"),
    ]
    reply = await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="openai"), metadata=auth())
    assert reply.live
    assert reply.provider == "openai"
    assert [m.id for m in reply.models] == ["aaa-first", "gpt-4o", "gpt-brand-new"]
    known = reply.models[1]
    assert (known.display_name, known.context_window, known.input_price_per_mtok) == ("GPT-4o", 128000, 2.50)
    new = reply.models[2]
    assert (new.display_name, new.context_window, new.input_price_per_mtok) == ("Brand new", 4096, 0.0)
    assert llm.adapter.model_calls[0].api_key.reveal() == ALICE_OPENAI_KEY


async def test_list_models_falls_back_to_the_registry_when_live_fails(llm: LLMHarness) -> None:
    llm.adapter.models = errors.ProviderUnavailable("down", provider="openai")
    reply = await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="openai"), metadata=auth())
    assert not reply.live
    assert [m.id for m in reply.models] == sorted(m.id for m in default_registry().resolve("openai").models)


async def test_list_models_without_a_key_is_the_registry(llm: LLMHarness) -> None:
    reply = await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="gemini"), metadata=auth())
    assert (reply.provider, reply.live) == ("google", False)
    assert "gemini-2.5-pro" in [m.id for m in reply.models]
    assert llm.adapter.model_calls == []


async def test_list_models_for_a_provider_without_listing() -> None:
    """A registry row without ``models_path`` answers the registry's list and asks nobody,
    even with a stored key. (Every built-in provider now lists: GitHub Models from its
    catalog, below; so the row here is OpenAI's with its listing taken away.)"""
    rows = default_registry().providers
    registry = Registry([replace(s, models_path="") if s.id == "openai" else s for s in rows.values()])
    async with llm_harness(registry=registry) as llm:
        reply = await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="openai"), metadata=auth())
    assert not reply.live
    assert [m.id for m in reply.models] == sorted(m.id for m in rows["openai"].models)
    assert llm.vault.methods() == ["AuthenticateToken"]
    assert llm.adapter.model_calls == []


@asynccontextmanager
async def github_gateway() -> AsyncIterator[tuple[LLMHarness, FakeProvider]]:
    """Real adapters against the fake provider; alice stores a GitHub token pointed at it."""
    async with FakeProvider() as fake:
        env = {
            "RMLLM_ALLOWED_ENDPOINT_NETWORKS": f"127.0.0.1:{fake.port}",
            "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
        }
        async with llm_harness(env, real_adapters=True) as llm:
            stored = StoredKey(KEYS["github"], base_url=fake.base_url("github"))
            llm.vault.keys[("u-alice", "github")] = stored
            yield llm, fake


async def test_list_models_github_lives_from_the_catalog() -> None:
    """GitHub Models' catalog (``GET {origin}/catalog/models``, a JSON array): the chat
    models, merged with the registry's details; the embedding model is left out."""
    async with github_gateway() as (llm, fake):
        fake.enqueue(Scenario.json(GITHUB_CATALOG_DOC, route="get"))
        reply = await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="github"), metadata=auth())
    assert reply.live
    assert reply.provider == "github"
    assert [m.id for m in reply.models] == ["microsoft/phi-4-mini-instruct", "openai/gpt-4.1"]
    new, known = reply.models
    assert (new.display_name, new.context_window) == ("Phi-4-mini-instruct", 128000)
    assert list(new.capabilities) == []
    registry_row = default_registry().providers["github"].model("openai/gpt-4.1")
    assert registry_row is not None and registry_row.capabilities
    assert (known.display_name, known.context_window) == ("OpenAI GPT-4.1", 1048576)
    assert list(known.capabilities) == sorted(registry_row.capabilities)
    [record] = fake.requests
    assert (record.method, record.path, record.api_key) == ("GET", "/catalog/models", KEYS["github"])


async def test_list_models_github_rejected_token_falls_back_to_the_registry() -> None:
    """A 401 from the catalog is PROVIDER_KEY_INVALID (TestKey says so); ListModels, as
    for every provider, then answers the registry's list with ``live=false``."""
    async with github_gateway() as (llm, fake):
        fake.enqueue(Scenario.canned("github", "bad_key", route="get"))
        reply = await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="github"), metadata=auth())
        fake.enqueue(Scenario.canned("github", "bad_key", route="get"))
        tested = await llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="github"), metadata=auth())
    assert not reply.live
    assert [m.id for m in reply.models] == sorted(m.id for m in default_registry().providers["github"].models)
    assert not tested.valid
    assert tested.reason == llm_pb2.TEST_KEY_REASON_INVALID_KEY
    assert [r.path for r in fake.requests] == ["/catalog/models", "/catalog/models"]


async def test_list_models_errors(llm: LLMHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="nope"), metadata=auth())
    assert rich_error(caught.value).reason == "UNKNOWN_PROVIDER"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await llm.stub.ListModels(
            llm_pb2.ListModelsRequest(provider="openai"), metadata=auth(user_token("unknown"))
        )
    assert rich_error(caught.value).reason == "TOKEN_INVALID"


async def test_live_listings_share_the_testkey_budget_then_fall_back() -> None:
    env = {"RMLLM_TESTKEY_RATE_PER_MINUTE": "1", "RMLLM_TESTKEY_BURST": "2"}
    async with llm_harness(env) as llm:
        llm.adapter.models = [ListedModel("gpt-4o")]
        request = llm_pb2.ListModelsRequest(provider="openai")
        first = await llm.stub.ListModels(request, metadata=auth())
        await llm.stub.TestKey(llm_pb2.TestKeyRequest(provider="openai"), metadata=auth())
        third = await llm.stub.ListModels(request, metadata=auth())
    assert first.live and not third.live  # the budget of 2 went to a listing and a probe
    assert len(llm.adapter.model_calls) == 1
    assert [m.id for m in third.models] == sorted(m.id for m in default_registry().resolve("openai").models)


async def test_list_models_knows_ollamas_latest_tag(llm: LLMHarness) -> None:
    """Ollama lists a pulled model with its tag (``/api/tags`` and ``/v1/models`` both say
    ``llama3.2:latest``); the registry's ``llama3.2`` is the same model, so its display name
    and context window still apply. The listed id is kept as Ollama gave it."""
    llm.adapter.models = [ListedModel("llama3.2:latest"), ListedModel("qwen2.5:7b")]
    reply = await llm.stub.ListModels(llm_pb2.ListModelsRequest(provider="llama"), metadata=auth())
    assert reply.live
    by_id = {m.id: m for m in reply.models}
    assert (by_id["llama3.2:latest"].display_name, by_id["llama3.2:latest"].context_window) == (
        "Llama 3.2 3B",
        131072,
    )
    assert by_id["qwen2.5:7b"].context_window == 32768
