"""Certificates for TLS tests, made with ``cryptography``: a CA, servers and a client.

``make_pki()`` issues a fresh CA, a server certificate for ``localhost`` and
127.0.0.1, a client certificate, and a server certificate naming only
``rmllm.internal`` (for host-name checks). Every key is a new P-256 key; the
certificates are valid from five minutes ago for one day.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """The certificate and key as ``<name>.crt`` and ``<name>.key`` in ``directory``."""
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        key.chmod(0o600)
        return cert, key


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    named_server: Pem  # names only rmllm.internal, not the loopback address


def issue(
    name: str,
    issuer: Pem | None,
    *,
    ca: bool,
    usage: x509.ObjectIdentifier | None,
    alt_names: tuple[x509.GeneralName, ...] = (),
) -> Pem:
    """A certificate for ``name`` signed by ``issuer`` (self-signed without one)."""
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


def make_pki() -> Pki:
    ca = issue("rmllm test CA", None, ca=True, usage=None)
    return Pki(
        ca=ca,
        server=issue(
            "localhost",
            ca,
            ca=False,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alt_names=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ),
        client=issue("rmllm test client", ca, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        named_server=issue(
            "rmllm.internal",
            ca,
            ca=False,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alt_names=(x509.DNSName("rmllm.internal"),),
        ),
    )
