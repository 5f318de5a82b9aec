"""TLS and mTLS: certificates made in the test with ``cryptography``, served by the fakes."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from testkit.fake_grpc import TOKEN, FakeServers

import clients
from clients import Client, Tls
from clients.cli import main


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _issue(
    name: str,
    issuer: Pem | None,
    *,
    ca: bool,
    usage: x509.ObjectIdentifier | None,
    alt_names: tuple[x509.GeneralName, ...] = (),
) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_cert = x509.load_pem_x509_certificate(issuer.cert)
        issuer_name = issuer_cert.subject
        loaded = serialization.load_pem_private_key(issuer.key, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signing_key = loaded
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    named_server: Pem  # names only rmllm.internal, not the loopback address


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = _issue("rmllm test CA", None, ca=True, usage=None)
    return Pki(
        ca=ca,
        server=_issue(
            "localhost",
            ca,
            ca=False,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alt_names=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ),
        client=_issue("rmllm test client", ca, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        named_server=_issue(
            "rmllm.internal",
            ca,
            ca=False,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alt_names=(x509.DNSName("rmllm.internal"),),
        ),
    )


def _serve(credentials: grpc.ServerCredentials) -> Iterator[FakeServers]:
    servers = FakeServers(credentials).start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def tls_fake(pki: Pki) -> Iterator[FakeServers]:
    yield from _serve(grpc.ssl_server_credentials([(pki.server.key, pki.server.cert)]))


@pytest.fixture
def mtls_fake(pki: Pki) -> Iterator[FakeServers]:
    yield from _serve(
        grpc.ssl_server_credentials(
            [(pki.server.key, pki.server.cert)], root_certificates=pki.ca.cert, require_client_auth=True
        )
    )


def test_tls_with_root_certificates(tls_fake: FakeServers, pki: Pki) -> None:
    tls_fake.store("openai", "sk-good-1234")
    tls = Tls(root_certificates=pki.ca.cert)
    with Client(TOKEN, llm_target=tls_fake.llm_target, vault_target=tls_fake.vault_target, tls=tls) as c:
        assert c.chat("openai", "hi").text == "Hello world"
        assert [cfg.provider for cfg in c.list_configs()] == ["openai"]
    # A plaintext client cannot talk to a TLS server.
    with (
        Client(TOKEN, llm_target=tls_fake.llm_target, vault_target=tls_fake.vault_target, timeout=5) as plain,
        pytest.raises(clients.Unavailable),
    ):
        plain.chat("openai", "hi")


def test_mtls_needs_the_client_certificate(mtls_fake: FakeServers, pki: Pki) -> None:
    mutual = Tls(root_certificates=pki.ca.cert, certificate_chain=pki.client.cert, private_key=pki.client.key)
    llm, vault = mtls_fake.llm_target, mtls_fake.vault_target
    with Client(TOKEN, tls=mutual, llm_target=llm, vault_target=vault) as c:
        assert [p.id for p in c.providers()] == ["anthropic", "llama", "openai"]
    with (
        Client(
            TOKEN, tls=Tls(root_certificates=pki.ca.cert), timeout=5, llm_target=llm, vault_target=vault
        ) as anonymous,
        pytest.raises(clients.Unavailable),
    ):
        anonymous.providers()
    assert "PRIVATE KEY" not in repr(mutual)
    with pytest.raises(ValueError, match="both"):
        Tls(certificate_chain=pki.client.cert)


@pytest.fixture
def named_fake(pki: Pki) -> Iterator[FakeServers]:
    yield from _serve(grpc.ssl_server_credentials([(pki.named_server.key, pki.named_server.cert)]))


def test_tls_server_name_override(named_fake: FakeServers, pki: Pki) -> None:
    llm, vault = named_fake.llm_target, named_fake.vault_target
    named = Tls(root_certificates=pki.ca.cert, server_name="rmllm.internal")
    with Client(TOKEN, tls=named, llm_target=llm, vault_target=vault) as c:
        assert c.models("openai").provider == "openai"
    # Without the override the certificate does not name 127.0.0.1: refused.
    unnamed = Tls(root_certificates=pki.ca.cert)
    refused = Client(TOKEN, tls=unnamed, timeout=5, llm_target=llm, vault_target=vault)
    with refused, pytest.raises(clients.Unavailable):
        refused.models("openai")


def test_cli_uses_tls_settings_from_the_environment(
    mtls_fake: FakeServers,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {"ca.pem": pki.ca.cert, "client.pem": pki.client.cert, "client.key": pki.client.key}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setenv("RMLLM_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("RMLLM_TOKEN", TOKEN)
    monkeypatch.setenv("RMLLM_TARGET", mtls_fake.llm_target)
    monkeypatch.setenv("RMLLM_TLS_CA", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("RMLLM_TLS_CERT", str(tmp_path / "client.pem"))
    monkeypatch.setenv("RMLLM_TLS_KEY", str(tmp_path / "client.key"))
    assert main(["providers"]) == 0
    assert "anthropic" in capsys.readouterr().out
    monkeypatch.delenv("RMLLM_TLS_KEY")
    assert main(["providers"]) == 3
    assert capsys.readouterr().err == (
        "rmllm: mTLS needs both RMLLM_TLS_CERT and RMLLM_TLS_KEY (or tls_cert and tls_key)\n"
    )
    monkeypatch.setenv("RMLLM_TLS_KEY", str(tmp_path / "missing.key"))
    assert main(["providers"]) == 3
    assert "cannot read the client key" in capsys.readouterr().err
