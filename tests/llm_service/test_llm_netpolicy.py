"""The outbound network policy (RMLLM_ALLOWED_ENDPOINT_NETWORKS): which addresses a
provider connection may reach, checked on the resolved address as the socket connects."""

from __future__ import annotations

import ipaddress

import grpc
import pytest
from fakes import FakeProvider
from realmultillm.llm.v1 import llm_pb2
from testkit.llm_fake_vault import StoredKey
from testkit.llm_harness import SERVICE_TOKEN, auth, llm_harness, rich_error

from llm_service.http import UpstreamLimits
from llm_service.netpolicy import EndpointPolicy, is_public
from llm_service.settings import LLMSettings, SettingsError

TOKEN = SERVICE_TOKEN
DEFAULT = EndpointPolicy.default()


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("127.0.0.1", 8080),  # loopback
        ("127.0.0.1", 11435),  # loopback, next to llama's port
        ("::1", 80),
        ("169.254.169.254", 80),  # cloud metadata (link-local)
        ("fe80::1", 80),
        ("fe80::1%eth0", 80),
        ("10.1.2.3", 443),
        ("172.16.0.1", 443),
        ("192.168.1.1", 443),
        ("100.64.0.1", 443),  # shared address space (carrier-grade NAT)
        ("fd00::1", 443),  # unique local
        ("0.0.0.0", 80),  # noqa: S104 - an address to refuse, not to bind
        ("::", 80),
        ("224.0.0.1", 80),  # multicast
        ("240.0.0.1", 80),  # reserved
        ("255.255.255.255", 80),
        ("::ffff:127.0.0.1", 8080),  # IPv4-mapped loopback
        ("::ffff:169.254.169.254", 80),
        ("64:ff9b::a9fe:a9fe", 80),  # NAT64 of 169.254.169.254
        ("not-an-address", 80),
    ],
)
def test_the_default_refuses_non_public_addresses(host: str, port: int) -> None:
    assert not DEFAULT.allows(host, port)


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("127.0.0.1", 11434),  # llama's default endpoint, allowed by the default setting
        ("::1", 11434),
        ("::ffff:127.0.0.1", 11434),
        ("93.184.216.34", 443),  # public
        ("2606:4700:4700::1111", 443),
        ("8.8.8.8", 53),
    ],
)
def test_the_default_allows_public_addresses_and_llamas_endpoint(host: str, port: int) -> None:
    assert DEFAULT.allows(host, port)


def test_operator_entries() -> None:
    policy = EndpointPolicy.parse(" 10.0.0.0/8 , 192.168.1.20:8000,[fd00::/8]:9000, [::1] ")
    assert policy.allows("10.9.8.7", 1)
    assert policy.allows("192.168.1.20", 8000)
    assert not policy.allows("192.168.1.20", 8001)
    assert not policy.allows("192.168.1.21", 8000)
    assert policy.allows("fd00::5", 9000)
    assert not policy.allows("fd00::5", 9001)
    assert policy.allows("::1", 1234)
    assert not policy.allows("127.0.0.1", 1234)
    assert str(policy) == "10.0.0.0/8,192.168.1.20:8000,[fd00::/8]:9000,::1/128"
    none = EndpointPolicy.parse("none")
    assert not none.allows("127.0.0.1", 11434)
    assert none.allows("93.184.216.34", 443)
    assert none.allowed == ()


def test_is_public_unwraps_ipv4_inside_ipv6() -> None:
    assert is_public(ipaddress.ip_address("::ffff:93.184.216.34"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))


@pytest.mark.parametrize(
    "value", ["localhost", "example.com:80", "10.0.0.0/33", "1.2.3.4:0", "1.2.3.4:70000", "[::1", "a,,b", ","]
)
def test_bad_settings_are_refused_with_a_message(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": TOKEN, "RMLLM_ALLOWED_ENDPOINT_NETWORKS": value})
    assert "RMLLM_ALLOWED_ENDPOINT_NETWORKS" in str(caught.value)


def test_settings_default_and_upstream_limits() -> None:
    settings = LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": TOKEN})
    assert str(settings.endpoint_policy) == "127.0.0.1:11434,[::1]:11434"
    assert settings.upstream == UpstreamLimits()
    assert settings.upstream.read_idle_timeout_seconds == 120.0
    assert settings.upstream.max_call_seconds == 900.0
    assert settings.chat_max_answer_chars == 2_000_000
    read = LLMSettings.from_env(
        {
            "RMLLM_SERVICE_TOKEN": TOKEN,
            "RMLLM_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "3",
            "RMLLM_UPSTREAM_READ_IDLE_SECONDS": "30",
            "RMLLM_UPSTREAM_MAX_CALL_SECONDS": "60",
            "RMLLM_UPSTREAM_MAX_RESPONSE_BYTES": "1048576",
            "RMLLM_UPSTREAM_MAX_EVENTS": "1000",
            "RMLLM_UPSTREAM_MAX_EVENT_BYTES": "65536",
            "RMLLM_UPSTREAM_MAX_ERROR_BYTES": "1024",
            "RMLLM_UPSTREAM_MAX_JSON_BYTES": "4096",
            "RMLLM_CHAT_MAX_ANSWER_CHARS": "100",
        }
    )
    assert read.upstream == UpstreamLimits(3.0, 30.0, 60.0, 1048576, 1000, 65536, 1024, 4096)
    assert read.chat_max_answer_chars == 100
    with pytest.raises(SettingsError, match="RMLLM_UPSTREAM_READ_IDLE_SECONDS"):
        LLMSettings.from_env({"RMLLM_SERVICE_TOKEN": TOKEN, "RMLLM_UPSTREAM_READ_IDLE_SECONDS": "0"})


async def _probe(env: dict[str, str], base_url: str) -> llm_pb2.TestKeyResponse:
    async with llm_harness(env, real_adapters=True) as llm:
        reply: llm_pb2.TestKeyResponse = await llm.stub.TestKey(
            llm_pb2.TestKeyRequest(provider="llama", base_url=base_url), metadata=auth(), timeout=30
        )
        return reply


async def test_llama_cannot_reach_loopback_by_default() -> None:
    """The SSRF of issue 13: llama's custom base URL needs no operator opt-in, so the
    network policy is what keeps users off the service's own loopback."""
    async with FakeProvider() as fake:
        for base_url in (fake.base_url("llama"), f"http://localhost:{fake.port}"):
            reply = await _probe({}, base_url)
            assert reply.reason == llm_pb2.TEST_KEY_REASON_UNREACHABLE, reply
            assert "outbound network policy" in reply.message
        assert fake.requests == []  # refused before a byte was sent


async def test_the_operator_can_allow_a_network() -> None:
    async with FakeProvider() as fake:
        reply = await _probe(
            {"RMLLM_ALLOWED_ENDPOINT_NETWORKS": f"127.0.0.1:{fake.port}"}, fake.base_url("llama")
        )
        assert reply.reason == llm_pb2.TEST_KEY_REASON_VALID, reply
        # a name is checked on the address it resolves to: localhost is 127.0.0.1 (or ::1, refused)
        reply = await _probe(
            {"RMLLM_ALLOWED_ENDPOINT_NETWORKS": f"127.0.0.1:{fake.port}"}, f"http://localhost:{fake.port}"
        )
        assert reply.reason == llm_pb2.TEST_KEY_REASON_VALID, reply
        assert len(fake.requests) == 2


async def test_a_stored_endpoint_on_loopback_is_refused_for_chat() -> None:
    async with FakeProvider() as fake, llm_harness(real_adapters=True) as llm:
        llm.vault.keys[("u-alice", "llama")] = StoredKey("", base_url=fake.base_url("llama"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await llm.stub.Chat(
                llm_pb2.ChatRequest(
                    provider="llama", messages=[llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content="hi")]
                ),
                metadata=auth(),
                timeout=30,
            )
        assert fake.requests == []
    rich = rich_error(caught.value)
    assert rich.code is grpc.StatusCode.UNAVAILABLE
    assert rich.reason == "PROVIDER_UNAVAILABLE"
    assert rich.metadata["provider"] == "llama"
