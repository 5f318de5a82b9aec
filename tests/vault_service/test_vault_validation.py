"""Bad inputs: each is INVALID_ARGUMENT with one ErrorInfo and a BadRequest naming its field."""

from __future__ import annotations

import math
import string
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hypothesis import given
from hypothesis import strategies as st
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SERVICE_TOKEN, Failure, Vault, md

from rmllm_common.errors import InvalidRequest, UnknownProvider
from rmllm_common.registry import Registry, default_registry
from vault_service import validation

Fails = Callable[[Awaitable[Any]], Awaitable[Failure]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def put(provider: str = "openai", api_key: str = "sk-valid-key-1234", **fields: Any) -> tuple[str, Any]:
    return "PutProviderConfig", pb.PutProviderConfigRequest(provider=provider, api_key=api_key, **fields)


def update(paths: list[str], provider: str = "openai", **config: Any) -> tuple[str, Any]:
    return "UpdateProviderConfig", pb.UpdateProviderConfigRequest(
        config=pb.ProviderConfig(provider=provider, **config),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


def settings(**values: Any) -> pb.ProviderSettings:
    return pb.ProviderSettings(**values)


BAD_INPUTS: list[tuple[str, tuple[str, Any], str, str]] = [
    ("empty provider", put(provider=""), "UNKNOWN_PROVIDER", "provider"),
    ("unknown provider", put(provider="skynet"), "UNKNOWN_PROVIDER", "provider"),
    ("empty key", put(api_key=""), "INVALID_REQUEST", "api_key"),
    ("key over 4 KiB", put(api_key="sk-" + "a" * 4094), "INVALID_REQUEST", "api_key"),
    ("key with a space", put(api_key="sk-abc def"), "INVALID_REQUEST", "api_key"),
    ("key with a newline", put(api_key="sk-abcdef\n"), "INVALID_REQUEST", "api_key"),
    ("key with NUL", put(api_key="sk-abc\x00def"), "INVALID_REQUEST", "api_key"),
    ("key with a tab", put(api_key="sk-abc\tdef"), "INVALID_REQUEST", "api_key"),
    ("key with a zero-width space", put(api_key="sk-abc\u200bdef"), "INVALID_REQUEST", "api_key"),
    ("openai key format", put(api_key="pk-abcdefghijk"), "INVALID_REQUEST", "api_key"),
    ("anthropic key format", put("claude", "sk-abcdefghijk"), "INVALID_REQUEST", "api_key"),
    ("google key format", put("gemini", "sk-abcdefghijk"), "INVALID_REQUEST", "api_key"),
    ("openrouter key format", put("openrouter", "sk-abcdefghijk"), "INVALID_REQUEST", "api_key"),
    ("xai key format", put("xai", "sk-abcdefghijk"), "INVALID_REQUEST", "api_key"),
    ("ftp base_url", put(base_url="ftp://api.openai.com/v1"), "INVALID_REQUEST", "base_url"),
    ("base_url without host", put("llama", "", base_url="http://"), "INVALID_REQUEST", "base_url"),
    ("base_url not a URL", put("llama", "", base_url="localhost:11434"), "INVALID_REQUEST", "base_url"),
    ("base_url bad port", put("llama", "", base_url="http://h:99999/v1"), "INVALID_REQUEST", "base_url"),
    ("base_url credentials", put("llama", "", base_url="http://u:p@h/v1"), "INVALID_REQUEST", "base_url"),
    ("base_url fragment", put("llama", "", base_url="http://h/v1#x"), "INVALID_REQUEST", "base_url"),
    ("base_url spaces", put("llama", "", base_url="http://h/a b"), "INVALID_REQUEST", "base_url"),
    ("base_url too long", put("llama", "", base_url="http://h/" + "a" * 2048), "INVALID_REQUEST", "base_url"),
    ("custom base_url policy", put(base_url="https://proxy.internal/v1"), "INVALID_REQUEST", "base_url"),
    ("temperature > 2", put(settings=settings(temperature=2.01)), "INVALID_REQUEST", "settings.temperature"),
    ("temperature < 0", put(settings=settings(temperature=-0.1)), "INVALID_REQUEST", "settings.temperature"),
    (
        "temperature NaN",
        put(settings=settings(temperature=math.nan)),
        "INVALID_REQUEST",
        "settings.temperature",
    ),
    ("max_tokens 0", put(settings=settings(max_tokens=0)), "INVALID_REQUEST", "settings.max_tokens"),
    ("max_tokens < 0", put(settings=settings(max_tokens=-5)), "INVALID_REQUEST", "settings.max_tokens"),
    (
        "model too long",
        put(settings=settings(default_model="m" * 201)),
        "INVALID_REQUEST",
        "settings.default_model",
    ),
    (
        "model with newline",
        put(settings=settings(default_model="a\nb")),
        "INVALID_REQUEST",
        "settings.default_model",
    ),
    ("empty update_mask", update([]), "INVALID_REQUEST", "update_mask"),
    ("mask names the key", update(["api_key"]), "INVALID_REQUEST", "update_mask.paths[0]"),
    ("mask names output", update(["is_active", "usage_count"]), "INVALID_REQUEST", "update_mask.paths[1]"),
    (
        "update unknown provider",
        update(["is_active"], provider="nope"),
        "UNKNOWN_PROVIDER",
        "config.provider",
    ),
    (
        "update base_url policy",
        update(["base_url"], base_url="https://elsewhere/v1"),
        "INVALID_REQUEST",
        "config.base_url",
    ),
    (
        "update temperature",
        update(["settings"], settings=settings(temperature=9.0)),
        "INVALID_REQUEST",
        "config.settings.temperature",
    ),
    (
        "get unknown provider",
        ("GetProviderConfig", pb.GetProviderConfigRequest()),
        "UNKNOWN_PROVIDER",
        "provider",
    ),
    (
        "delete unknown provider",
        ("DeleteProviderConfig", pb.DeleteProviderConfigRequest(provider="x")),
        "UNKNOWN_PROVIDER",
        "provider",
    ),
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_invalid_argument_naming_its_field(
    vault: Vault, fails: Fails, bad: tuple[str, tuple[str, Any], str, str]
) -> None:
    case, (method, request), reason, field = bad
    token = vault.make_user("alice")
    failed = await fails(getattr(vault.stub, method)(request, metadata=md(token)))
    assert (failed.code, failed.reason, failed.fields) == (INVALID, reason, [field]), case
    key = getattr(request, "api_key", "")
    assert not key or key not in failed.message


async def test_service_rpc_bad_inputs(vault: Vault, fails: Fails) -> None:
    token = vault.make_user("alice")
    for request, reason, field in (
        (pb.ResolveCredentialsRequest(user_token=token, provider="?"), "UNKNOWN_PROVIDER", "provider"),
        (
            pb.ResolveCredentialsRequest(user_token=token, provider="openai", request_id="has space"),
            "INVALID_REQUEST",
            "request_id",
        ),
        (
            pb.ResolveCredentialsRequest(user_token=token, provider="openai", request_id="r" * 129),
            "INVALID_REQUEST",
            "request_id",
        ),
    ):
        failed = await fails(vault.stub.ResolveCredentials(request, metadata=md(SERVICE_TOKEN)))
        assert (failed.code, failed.reason, failed.fields) == (INVALID, reason, [field])


async def test_accepted_edge_values(vault_factory: Callable[..., Awaitable[Vault]]) -> None:
    vault = await vault_factory()
    token = vault.make_user("alice")
    accepted = [
        put(api_key="sk-" + "a" * 4093, settings=settings(temperature=0.0, max_tokens=1)),
        put("openai", "sk-x", base_url="https://api.openai.com/v1/", settings=settings(temperature=2.0)),
        put("llama", ""),
        put("ollama", "anything-goes", base_url="https://gpu-box.lan:8443/v1"),
        put("github", "ghp_anyformat"),
    ]
    for method, request in accepted:
        await getattr(vault.stub, method)(request, metadata=md(token))
    custom = await vault_factory(allow_custom_base_url=True)
    token = custom.make_user("bob")
    reply = await custom.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key="sk-abc", base_url="http://127.0.0.1:9/v1"),
        metadata=md(token),
    )
    assert reply.config.base_url == "http://127.0.0.1:9/v1"


OPENAI = default_registry().resolve("openai")


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.", max_size=100))
def test_keys_of_the_documented_format_are_accepted(tail: str) -> None:
    key = "sk-" + tail
    assert validation.api_key(key, OPENAI).reveal() == key


@given(st.text(max_size=60), st.sampled_from(" \t\r\n\x00\x1b\x7f\u2028\u200b\ufeff"), st.text(max_size=60))
def test_keys_with_whitespace_or_control_characters_are_refused(head: str, bad: str, tail: str) -> None:
    key = "sk-" + head + bad + tail
    with pytest.raises(InvalidRequest) as caught:
        validation.api_key(key, OPENAI)
    assert [v.field for v in caught.value.violations] == ["api_key"]
    assert key not in caught.value.message


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_temperature_range(value: float) -> None:
    message = pb.ProviderSettings(temperature=value)
    if math.isfinite(value) and 0.0 <= value <= 2.0:
        assert validation.settings(message, OPENAI).temperature == value
    else:
        with pytest.raises(InvalidRequest):
            validation.settings(message, OPENAI)


def test_the_provider_is_resolved_in_the_registry_the_vault_was_given() -> None:
    registry = default_registry()
    only_openai = Registry([registry.providers["openai"]])
    assert validation.provider(registry, "claude").id == "anthropic"
    assert validation.provider(only_openai, "openai-api").id == "openai"
    with pytest.raises(UnknownProvider):
        validation.provider(only_openai, "claude")
