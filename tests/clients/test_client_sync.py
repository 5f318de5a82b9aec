"""The blocking client against the fake services: every call, its result types, its metadata."""

from __future__ import annotations

import threading

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

from clients import (
    ChatResult,
    Client,
    ConfigNotFound,
    FinishReason,
    KeyNotConfigured,
    Message,
    ProviderConfig,
    Role,
    TestKeyReason,
    Unauthenticated,
    UpstreamStreamTruncated,
    Usage,
)
from rmllm_common import errors


def test_put_get_list_delete_round_trip(client: Client, fake: FakeServers) -> None:
    config = client.put_config("claude", "sk-ant-secret-abcd", default_model="claude-x", max_tokens=100)
    assert isinstance(config, ProviderConfig)
    assert config.provider == "anthropic"
    assert config.key_hint == "abcd"
    assert config.settings.default_model == "claude-x"
    assert config.settings.max_tokens == 100
    assert config.settings.temperature is None
    assert config.create_time is not None and config.create_time.tzinfo is not None
    assert config.last_used_time is None
    assert fake.state.keys["anthropic"] == "sk-ant-secret-abcd"
    assert client.get_config("anthropic") == config
    assert [c.provider for c in client.list_configs()] == ["anthropic"]
    assert client.delete_config("claude") == "anthropic"
    assert client.list_configs() == []
    with pytest.raises(ConfigNotFound) as info:
        client.get_config("anthropic")
    assert info.value.provider == "anthropic"


def test_every_call_sends_the_bearer_token(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    client.list_configs()
    client.chat("openai", "hi")
    client.providers()
    assert len(fake.state.calls) == 3
    assert {md["authorization"] for _, _, md in fake.state.calls} == {f"Bearer {TOKEN}"}
    assert all(md["user-agent"].startswith("rmllm-python/") for _, _, md in fake.state.calls)


def test_update_mask_names_only_the_arguments_given(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234", default_model="gpt-a", temperature=0.5, max_tokens=10)
    updated = client.update_config("openai", temperature=None, is_active=False)
    request = fake.state.calls[-1][1]
    assert list(request.update_mask.paths) == ["is_active", "settings.temperature"]
    assert updated.is_active is False
    assert updated.settings.temperature is None
    assert updated.settings.default_model == "gpt-a"
    assert updated.settings.max_tokens == 10
    updated = client.update_config("openai", default_model="gpt-b", base_url="http://127.0.0.1:9")
    assert list(fake.state.calls[-1][1].update_mask.paths) == ["base_url", "settings.default_model"]
    assert (updated.base_url, updated.settings.default_model) == ("http://127.0.0.1:9", "gpt-b")


def test_update_without_fields_is_refused_before_sending(client: Client, fake: FakeServers) -> None:
    with pytest.raises(ValueError, match="at least one"):
        client.update_config("openai")
    assert fake.state.calls == []


def test_chat_returns_a_typed_result(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    result = client.chat("openai", "hi", system="be brief", temperature=0.2, max_tokens=5, stop=["\n"])
    assert result == ChatResult(
        text="Hello world",
        finish_reason=FinishReason.STOP,
        usage=Usage(12, 34, 46, 0.000022),
        model="gpt-4o-mini",
        provider="openai",
        response_id="r-1",
    )
    request = fake.state.calls[-1][1]
    assert [(m.role, m.content) for m in request.messages] == [(1, "be brief"), (2, "hi")]
    assert request.temperature == 0.2 and request.max_tokens == 5 and list(request.stop) == ["\n"]
    assert not request.HasField("top_p")


def test_chat_takes_a_message_list(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    conversation = [Message(Role.USER, "a"), Message("assistant", "b"), Message("user", "c")]
    client.chat("openai", conversation, model="gpt-x")
    request = fake.state.calls[-1][1]
    assert [m.role for m in request.messages] == [2, 3, 2]
    assert request.model == "gpt-x"
    with pytest.raises(ValueError, match="unknown role"):
        client.chat("openai", [Message("robot", "x")])


def test_stream_yields_deltas_then_result(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    with client.stream_chat("openai", "hi") as stream:
        deltas = list(stream)
    assert deltas == ["Hel", "lo", " world"]
    assert stream.text == "Hello world"
    assert stream.result.text == "Hello world"
    assert stream.result.finish_reason is FinishReason.STOP
    assert stream.result.usage.output_tokens == 34
    assert fake.state.methods() == ["StreamChat"]


def test_stream_result_reads_the_rest(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    stream = client.stream_chat("openai", "hi")
    assert next(stream) == "Hel"
    assert stream.result.text == "Hello world"


def test_stream_error_after_deltas_is_raised_typed(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.stream_error = errors.UpstreamStreamTruncated("cut short", provider="openai")
    stream = client.stream_chat("openai", "hi")
    received: list[str] = []
    with pytest.raises(UpstreamStreamTruncated) as info:
        received.extend(stream)
    assert received == ["Hel", "lo", " world"]
    assert info.value.provider == "openai"
    assert info.value.target == fake.llm_target


def test_stream_error_before_first_delta(client: Client) -> None:
    with pytest.raises(KeyNotConfigured) as info:
        list(client.stream_chat("openai", "hi"))
    assert info.value.provider == "openai"


def test_stream_cancel_reaches_the_server(client: Client, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.stream_hang = True
    stream = client.stream_chat("openai", "hi")
    assert next(stream) == "Hel"
    threading.Timer(0.05, stream.cancel).start()  # from another thread, while next() waits
    assert list(stream) == []
    assert stream.cancelled
    assert fake.wait_cancelled()


def test_wrong_token_is_unauthenticated(fake: FakeServers) -> None:
    bad = Client("rmk_wrong", llm_target=fake.llm_target, vault_target=fake.vault_target)
    with bad, pytest.raises(Unauthenticated) as info:
        bad.list_configs()
    assert info.value.reason == "TOKEN_INVALID"
    assert info.value.service == "vault"
    assert "rmk_wrong" not in repr(bad)


def test_test_key_explicit_and_stored(client: Client, fake: FakeServers) -> None:
    result = client.test_key("openai", "sk-good-9999")
    assert (result.valid, result.reason, result.provider, result.latency_ms) == (
        True,
        TestKeyReason.VALID,
        "openai",
        42,
    )
    assert fake.state.calls[-1][1].api_key == "sk-good-9999"
    with pytest.raises(KeyNotConfigured):
        client.test_key("openai")
    fake.store("openai", "sk-nope-1234")
    stored = client.test_key("openai")
    assert (stored.valid, stored.reason) == (False, TestKeyReason.INVALID_KEY)
    assert fake.state.calls[-1][1].api_key == ""


def test_providers_and_models(client: Client) -> None:
    providers = client.providers()
    assert [p.id for p in providers] == ["anthropic", "llama", "openai"]
    assert providers[0].aliases == ("claude",)
    assert providers[1].requires_key is False
    models = client.models("claude")
    assert models.provider == "anthropic" and models.live is False
    assert models.models[0].id == "claude-3-5-haiku-latest"
    assert models.models[0].context_window == 128000
