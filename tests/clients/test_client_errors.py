"""Rich gRPC errors become typed client exceptions; the retry policy and deadlines behave."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from testkit.fake_grpc import TOKEN, FakeServers

import clients
from clients import Client, RmllmClientError
from clients.channels import SERVICE_CONFIG
from rmllm_common import errors


def _subclasses(cls: Any) -> list[Any]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def _client_class(reason: str, code: grpc.StatusCode) -> type[RmllmClientError]:
    """The client class declaring ``reason`` for ``code`` (found among all of them)."""
    found: list[type[RmllmClientError]] = [
        c for c in _subclasses(RmllmClientError) if c.__dict__.get("reason") == reason and c.code == code
    ]
    assert len(found) == 1, (reason, found)
    return found[0]


def _server_error(cls: type[errors.RmllmError]) -> errors.RmllmError:
    """One error of each class, with the details a caller reads."""
    return cls(f"{cls.__name__} happened", provider="openai", retry_after=2.5)


# (server error, the client class it must become): every server class, from the code.
CASES: list[tuple[errors.RmllmError, type[RmllmClientError]]] = [
    (_server_error(cls), _client_class(cls.reason, cls.code))
    for cls in sorted(set(_subclasses(errors.RmllmError)), key=lambda c: c.__name__)
] + [
    # Reasons the client does not know fall back to the class of the code.
    (errors.Unavailable("x", reason="SOMETHING_NEW"), clients.Unavailable),
    (errors.FailedPrecondition("x", reason="CONFIG_INACTIVE"), clients.FailedPrecondition),
    (errors.ResourceExhausted("x", reason="TOO_BIG"), clients.ResourceExhausted),
    # A reason whose usual code disagrees with the status code: the code wins.
    (errors.Internal("x", reason="KEY_NOT_CONFIGURED"), clients.Internal),
]


@pytest.mark.parametrize(
    ("server_error", "expected"), CASES, ids=[f"{type(e).__name__}-{e.reason}" for e, _ in CASES]
)
def test_reason_selects_the_class(
    client: Client, fake: FakeServers, server_error: errors.RmllmError, expected: type[RmllmClientError]
) -> None:
    fake.state.fail("TestKey", server_error)  # TestKey: never retried
    with pytest.raises(RmllmClientError) as info:
        client.test_key("openai", "sk-good-1")
    err = info.value
    assert type(err) is expected
    assert err.code == server_error.code
    assert err.reason == server_error.reason
    assert err.message == server_error.message
    assert err.metadata == server_error.metadata
    assert err.retry_after == server_error.retry_after
    assert (err.service, err.target) == ("LLM service", fake.llm_target)


def test_field_violations_come_from_bad_request(client: Client) -> None:
    with pytest.raises(clients.UnknownProvider) as info:
        client.put_config("nope", "sk-1234567890")
    assert info.value.field_violations == (clients.FieldViolation("provider", "unknown provider 'nope'"),)
    assert info.value.service == "vault"
    with pytest.raises(clients.InvalidRequest) as empty:
        client.put_config("openai", "")
    assert [v.field for v in empty.value.field_violations] == ["api_key"]


def test_retry_after_keeps_fractions(client: Client, fake: FakeServers) -> None:
    fake.state.fail("TestKey", errors.RateLimited("slow down", retry_after=1.25))
    with pytest.raises(clients.RateLimited) as info:
        client.test_key("openai", "sk-good-1")
    assert info.value.retry_after == 1.25


def test_unreachable_server_is_unavailable_with_its_address() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    with (
        Client(TOKEN, llm_target=dead, vault_target=dead, timeout=5) as c,
        pytest.raises(clients.Unavailable) as info,
    ):
        c.chat("openai", "hi")
    assert type(info.value) is clients.Unavailable
    assert info.value.reason == "UNAVAILABLE"
    assert info.value.target == dead


def test_idempotent_reads_are_retried_on_unavailable(client: Client, fake: FakeServers) -> None:
    fake.state.fail("ListProviderConfigs", errors.VaultUnavailable("blip"), times=2)
    fake.state.fail("ListProviders", errors.Unavailable("blip"))
    fake.state.fail("ListModels", errors.Unavailable("blip"))
    fake.state.fail("GetProviderConfig", errors.Unavailable("blip"))
    assert client.list_configs() == []
    assert client.providers()
    assert client.models("openai").provider == "openai"
    with pytest.raises(clients.ConfigNotFound):
        client.get_config("openai")
    assert fake.state.methods() == [
        "ListProviderConfigs",
        "ListProviderConfigs",
        "ListProviderConfigs",
        "ListProviders",
        "ListProviders",
        "ListModels",
        "ListModels",
        "GetProviderConfig",
        "GetProviderConfig",
    ]


@pytest.mark.parametrize(
    "method",
    ["Chat", "StreamChat", "TestKey", "PutProviderConfig", "UpdateProviderConfig", "DeleteProviderConfig"],
)
def test_non_idempotent_calls_are_not_retried(client: Client, fake: FakeServers, method: str) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.fail(method, errors.ProviderUnavailable("blip", provider="openai"))
    calls: dict[str, Callable[[], object]] = {
        "Chat": lambda: client.chat("openai", "hi"),
        "StreamChat": lambda: client.stream_chat("openai", "hi").result,
        "TestKey": lambda: client.test_key("openai", "sk-good-1"),
        "PutProviderConfig": lambda: client.put_config("openai", "sk-good-2"),
        "UpdateProviderConfig": lambda: client.update_config("openai", is_active=True),
        "DeleteProviderConfig": lambda: client.delete_config("openai"),
    }
    with pytest.raises(clients.ProviderUnavailable):
        calls[method]()
    assert fake.state.methods() == [method]


def test_service_config_names_only_reads() -> None:
    assert "Chat" not in SERVICE_CONFIG and "Put" not in SERVICE_CONFIG and "TestKey" not in SERVICE_CONFIG
    assert '"retryableStatusCodes": ["UNAVAILABLE"]' in SERVICE_CONFIG


def test_stream_deadline_is_deadline_exceeded(fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.stream_hang = True
    with Client(TOKEN, llm_target=fake.llm_target, vault_target=fake.vault_target, chat_timeout=2.0) as c:
        stream = c.stream_chat("openai", "hi")
        assert next(stream) == "Hel"
        with pytest.raises(clients.DeadlineExceeded) as info:
            list(stream)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stream.text == "Hel"


def test_every_call_has_a_deadline(fake: FakeServers, client: Client) -> None:
    with pytest.raises(ValueError, match="positive"):
        Client(TOKEN, timeout=0)
    fake.store("openai", "sk-good-1234")
    client.models("openai")  # the fixture's default: 10 s
    client.providers(timeout=2)
    client.chat("openai", "hi")  # chats: the longer chat_timeout (300 s by default)
    assert client.stream_chat("openai", "hi").result.text == "Hello world"
    seen = fake.state.time_remaining
    assert all(value is not None for value in seen.values())
    # The wire format rounds a deadline up (300 s can arrive as 301 s).
    assert 5 < (seen["ListModels"] or 0) < 11
    assert 0 < (seen["ListProviders"] or 0) < 2.5
    assert 100 < (seen["Chat"] or 0) < 302
    assert 100 < (seen["StreamChat"] or 0) < 302
