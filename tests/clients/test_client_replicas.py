"""Several replicas behind one client: a list of addresses or a dns:/// name, round robin.

Two fake LLM services (each with its own vault fake and state) play two replicas;
the Python clients (sync and asyncio), given both addresses, spread their calls
over both (the Node client's test is in ``test_node_client.py``).
"""

from __future__ import annotations

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

from clients import AsyncClient, Client
from clients.channels import channel_target


def chats(fake: FakeServers) -> int:
    return fake.state.methods().count("Chat")


def test_a_list_of_addresses_becomes_one_round_robin_target() -> None:
    assert channel_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert channel_target("127.0.0.1:1, localhost:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(["[::1]:1", "::1:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert channel_target("dns:///llm.internal:50051") == "dns:///llm.internal:50051"
    for bad, message in (
        ("llm-a:1,llm-b:1", "dns:///"),
        ("127.0.0.1:1,[::1]:2", "all be IPv4 or all IPv6"),
        ("127.0.0.1:1,127.0.0.1", "IP:PORT"),
        (" , ", "at least one"),
    ):
        with pytest.raises(ValueError, match=message):
            channel_target(bad)


def test_the_sync_client_spreads_calls_over_every_replica(replicas: list[FakeServers]) -> None:
    target = ",".join(fake.llm_target for fake in replicas)
    with Client(TOKEN, llm_target=target, vault_target=replicas[0].vault_target, timeout=10) as client:
        for _ in range(20):
            assert client.chat("openai", "Hi").text
    assert chats(replicas[0]) > 0 and chats(replicas[1]) > 0
    assert chats(replicas[0]) + chats(replicas[1]) == 20
    # One replica down: the calls go on through the other.
    replicas[1].stop()
    with Client(TOKEN, llm_target=target, vault_target=replicas[0].vault_target, timeout=10) as client:
        for _ in range(5):
            assert client.chat("openai", "Hi").text


async def test_the_async_client_spreads_calls_over_every_replica(replicas: list[FakeServers]) -> None:
    target = f"dns:///localhost:{replicas[0].llm_port}"  # a name works too (one address here)
    async with AsyncClient(TOKEN, llm_target=target, vault_target=replicas[0].vault_target) as client:
        assert (await client.chat("openai", "Hi")).text
    both = [fake.llm_target for fake in replicas]
    async with AsyncClient(TOKEN, llm_target=",".join(both), vault_target=replicas[0].vault_target) as client:
        for _ in range(20):
            assert (await client.chat("openai", "Hi")).text
    assert chats(replicas[0]) > 1 and chats(replicas[1]) > 0
