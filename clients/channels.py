"""Channel set-up shared by the sync and asyncio clients: targets, TLS, retries, deadlines.

``ClientOptions`` holds everything a client needs to reach the two services: the
LLM service target (default ``127.0.0.1:50051``) and the vault target (default
``127.0.0.1:50052``), each one address, several separated by commas (IP
addresses or ``localhost``: ``"10.0.0.5:50051,10.0.0.6:50051"``), or a gRPC name
such as ``dns:///llm.internal:50051`` that resolves to several, the calls being
spread over every address that answers (the ``round_robin`` policy); the user
token; optional ``Tls`` (root certificates, and a client certificate and key for
mTLS; insecure when ``None``, meant for loopback); and the default deadlines
(``timeout`` for ordinary calls, ``chat_timeout`` for Chat and StreamChat).
``SERVICE_CONFIG`` is the gRPC service config installed on
every channel: it retries ``UNAVAILABLE`` only for idempotent reads (Get/List
configs, ListProviders, ListModels); Chat, StreamChat, Put, Update and Delete are
never retried, and neither is TestKey: each attempt probes the provider and spends
one of the caller's rate-limited test-key tokens, and the LLM service already
retries the provider itself.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from opentelemetry import propagate

DEFAULT_LLM_TARGET: Final = "127.0.0.1:50051"
DEFAULT_VAULT_TARGET: Final = "127.0.0.1:50052"
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_CHAT_TIMEOUT: Final = 300.0
USER_AGENT: Final = "rmllm-python/0.1.0"

LLM_SERVICE: Final = "realmultillm.llm.v1.LLMService"
VAULT_SERVICE: Final = "realmultillm.vault.v1.VaultService"

# (service, method) pairs that are safe to retry on UNAVAILABLE: reads only.
RETRIED_METHODS: Final = (
    (VAULT_SERVICE, "GetProviderConfig"),
    (VAULT_SERVICE, "ListProviderConfigs"),
    (LLM_SERVICE, "ListProviders"),
    (LLM_SERVICE, "ListModels"),
)

SERVICE_CONFIG: Final = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for service, method in RETRIED_METHODS],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        # Stop retrying when most calls fail: retries must not pile onto an outage.
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        # Several replicas behind one target: spread the calls, skip the ones that are down.
        "loadBalancingConfig": [{"round_robin": {}}],
    }
)
_SCHEMES: Final = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "xds:")


def channel_target(target: str | Sequence[str]) -> str:
    """The one gRPC target for one address, several, or a gRPC name.

    Several addresses (a list, or one string separated by commas) must be IP
    addresses or ``localhost`` with a port: they become an ``ipv4:``/``ipv6:``
    target. For several hosts by name, give a ``dns:///`` name that resolves to all
    of them.
    """
    parts = [t.strip() for t in ([target] if isinstance(target, str) else target) for t in t.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("give at least one target (HOST:PORT)")
    if len(parts) == 1:
        return parts[0]
    families = set()
    addresses = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if part.startswith(_SCHEMES) or not sep or not port.isdigit():
            raise ValueError(f"several targets must each be IP:PORT, not {part!r}")
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"several targets must be IP addresses ({host!r} is a name); "
                "for several hosts by name use one dns:///NAME:PORT target"
            ) from None
        families.add(ip.version)
        addresses.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1:
        raise ValueError("several targets must all be IPv4 or all IPv6")
    return ("ipv6:" if families == {6} else "ipv4:") + ",".join(addresses)


@dataclass(frozen=True)
class Tls:
    """TLS settings: PEM bytes. ``root_certificates`` None: the system's roots.

    Give ``certificate_chain`` and ``private_key`` for mTLS. ``server_name`` overrides
    the name checked against the server certificate (for an IP target whose
    certificate names a host).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mTLS needs both certificate_chain and private_key")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


@dataclass(frozen=True)
class ClientOptions:
    """Where the services are, who the caller is, and the default deadlines (seconds)."""

    token: str = field(repr=False)
    llm_target: str = DEFAULT_LLM_TARGET
    vault_target: str = DEFAULT_VAULT_TARGET
    tls: Tls | None = None
    timeout: float = DEFAULT_TIMEOUT
    chat_timeout: float = DEFAULT_CHAT_TIMEOUT
    channel_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.chat_timeout <= 0:
            raise ValueError("timeouts must be positive numbers of seconds")

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the bearer token, and the caller's W3C trace context if it has one."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # a no-op unless the caller runs inside an OpenTelemetry span
        return (("authorization", f"Bearer {self.token}"), *carrier.items())

    def grpc_options(self) -> list[tuple[str, Any]]:
        """Channel options: retries on, the retry service config, a user agent, extras."""
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.primary_user_agent", USER_AGENT),
            # Reconnect soon after a restarted server comes back (gRPC's default
            # backoff grows to two minutes).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        options.extend(self.channel_options)
        return options


def sync_channel(options: ClientOptions, target: str | Sequence[str]) -> grpc.Channel:
    """A blocking channel to ``target`` (one address, several, or a gRPC name)."""
    target = channel_target(target)
    if options.tls is None:
        return grpc.insecure_channel(target, options=options.grpc_options())
    return grpc.secure_channel(target, options.tls.credentials(), options=options.grpc_options())


def aio_channel(options: ClientOptions, target: str | Sequence[str]) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (one address, several, or a gRPC name)."""
    target = channel_target(target)
    if options.tls is None:
        return grpc.aio.insecure_channel(target, options=options.grpc_options())
    return grpc.aio.secure_channel(target, options.tls.credentials(), options=options.grpc_options())
