"""Where the LLM service may open connections: the outbound network policy, per socket.

A provider endpoint may be user-supplied (``llama``'s base URL, or any provider's
with ``RMLLM_ALLOW_CUSTOM_BASE_URL=1``), so without a policy any user could make
the service connect to its own loopback, the cloud metadata address or the
operator's private network. ``EndpointPolicy`` is that policy: a connection may go
to a public (globally routable) unicast address, or to an address and port the
operator allows in ``RMLLM_ALLOWED_ENDPOINT_NETWORKS``; loopback, link-local
(169.254/16, fe80::/10), private (RFC 1918, fc00::/7), shared (100.64/10),
multicast, unspecified and reserved addresses are refused otherwise. An IPv4
address inside IPv6 (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``) is judged as the
IPv4 address it carries.

The check runs on the address a socket is about to connect to, after DNS
resolution (``socket_factory`` for aiohttp's connector, see ``llm_service.http``),
so a name that resolves differently later (DNS rebinding) cannot get round it.

The setting is a comma-separated list of entries ``NETWORK`` or ``NETWORK:PORT``,
where NETWORK is an address or a CIDR block and an IPv6 one is written in brackets
when a port follows: ``10.0.0.0/8``, ``192.168.1.20:8000``, ``[::1]:11434``,
``fd00::/8``. The default, ``127.0.0.1:11434,[::1]:11434``, allows exactly
``llama``'s default endpoint (Ollama on ``localhost:11434``); ``none`` allows no
non-public address at all.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ALLOWED_ENDPOINT_NETWORKS = "127.0.0.1:11434,[::1]:11434"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class EndpointRefused(ConnectionRefusedError):
    """The policy refused a connection (an ``OSError``, so aiohttp treats it as a failed connect)."""


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped or NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address: not loopback, link-local, private, reserved..."""
    address = _unwrap(address)
    if (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    ):
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address not in _SHARED
    return not address.is_site_local


@dataclass(frozen=True, slots=True)
class AllowedNetwork:
    """One operator entry: a network, and the one port it is allowed on (None: any)."""

    network: IPNetwork
    port: int | None = None

    def allows(self, address: IPAddress, port: int) -> bool:
        """Whether a connection to ``address``:``port`` is inside this entry."""
        return (
            address.version == self.network.version
            and address in self.network
            and (self.port is None or self.port == port)
        )

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        single = self.network.prefixlen == self.network.max_prefixlen
        text = str(self.network.network_address) if single else str(self.network)
        return f"[{text}]:{self.port}" if self.network.version == 6 else f"{text}:{self.port}"


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{entry!r}: the port must be from 1 to 65535")
    return int(text)


def _entry(entry: str) -> AllowedNetwork:
    network_text, port = entry, None
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0 or (entry[close + 1 :] and not entry[close + 1 :].startswith(":")):
            raise ValueError(f"{entry!r}: write an IPv6 network as [ADDRESS] or [ADDRESS/BITS]:PORT")
        network_text = entry[1:close]
        if entry[close + 1 :]:
            port = _port(entry[close + 2 :], entry)
    elif entry.count(":") == 1:
        network_text, port_text = entry.split(":")
        port = _port(port_text, entry)
    try:
        network = ipaddress.ip_network(network_text, strict=False)
    except ValueError:
        raise ValueError(
            f"{entry!r} is not an IP address or CIDR network (host names are not accepted: "
            "a name can resolve anywhere)"
        ) from None
    return AllowedNetwork(network, port)


class EndpointPolicy:
    """Which addresses outbound provider connections may reach (see the module docstring)."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: tuple[AllowedNetwork, ...] = ()) -> None:
        self.allowed = allowed

    @classmethod
    def parse(cls, text: str) -> EndpointPolicy:
        """The policy for a ``RMLLM_ALLOWED_ENDPOINT_NETWORKS`` value; ValueError says what is wrong."""
        text = text.strip()
        if text.lower() == "none":
            return cls(())
        entries = [part.strip() for part in text.split(",")]
        if not all(entries):
            raise ValueError("an empty entry (two commas in a row, or a comma at an end)")
        return cls(tuple(_entry(part) for part in entries))

    @classmethod
    def default(cls) -> EndpointPolicy:
        """Public addresses plus llama's default endpoint on loopback."""
        return cls.parse(DEFAULT_ALLOWED_ENDPOINT_NETWORKS)

    def allows(self, host: str, port: int) -> bool:
        """Whether a connection to the IP address ``host`` on ``port`` may be opened."""
        try:
            address: IPAddress = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone
        except ValueError:
            return False
        plain = _unwrap(address)
        if any(entry.allows(plain, port) or entry.allows(address, port) for entry in self.allowed):
            return True
        return is_public(address)

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's ``socket_factory``: a socket for ``addr_info``, if the policy allows its address.

        Raises ``EndpointRefused`` (an ``OSError``) otherwise; the caller sees the same
        failure as for any other connection that could not be made.
        """
        family, type_, proto, _, sockaddr = addr_info
        host, port = str(sockaddr[0]), int(sockaddr[1])
        if not self.allows(host, port):
            log.warning(
                "outbound connection refused by RMLLM_ALLOWED_ENDPOINT_NETWORKS",
                extra={"address": host, "port": port},
            )
            raise EndpointRefused(f"the outbound network policy refuses {host} port {port}")
        return socket.socket(family=family, type=type_, proto=proto)

    def __str__(self) -> str:
        return ",".join(str(entry) for entry in self.allowed) or "none"
