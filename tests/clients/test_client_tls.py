"""TLS and mTLS: certificates made in the test with ``cryptography``, served by the fakes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from testkit.fake_grpc import TOKEN, FakeServers
from testkit.pki import Pki, make_pki

import clients
from clients import Client, Tls
from clients.cli import main


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


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
