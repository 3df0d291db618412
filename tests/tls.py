"""Throw-away certificates for tests and the demo: a CA, server certificates for 127.0.0.1 and
client certificates for Jokko, made with ``cryptography`` and written as PEM files.

EC P-256 keys: a whole set (CA, server, client) takes a few milliseconds, so each test may make
its own. ``CertificateAuthority.issue`` also makes the bad ones a test needs: expired, for
another host, from another CA.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = ("127.0.0.1",)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key on disk, PEM."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerTLS:
    """What a test server presents, and (``client_ca``) the CA its clients must be signed by:
    with it, a client without a certificate from that CA is refused at the handshake."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def uvicorn_options(self) -> dict[str, object]:
        options: dict[str, object] = {
            "ssl_certfile": str(self.cert),
            "ssl_keyfile": str(self.key),
        }
        if self.client_ca is not None:
            options["ssl_ca_certs"] = str(self.client_ca)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        return options


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Jokko tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class CertificateAuthority:
    """A CA whose certificate is at ``cert`` and which issues server and client certificates
    into its directory."""

    def __init__(self, directory: Path, name: str = "Jokko test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / "ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        file_stem: str,
        *,
        server: bool,
        hosts: tuple[str, ...] = LOOPBACK,
        expired: bool = False,
    ) -> KeyPair:
        """A certificate for a server (``hosts`` as IP or DNS names) or a client (its
        ``file_stem`` as common name); ``expired`` ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start, end = (
            (now - timedelta(days=30), now - timedelta(days=1))
            if expired
            else (now - timedelta(minutes=5), now + timedelta(days=30))
        )
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0] if server else file_stem))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(self.directory / f"{file_stem}.pem", self.directory / f"{file_stem}-key.pem")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, pair.key)
        return pair

    def revocation_list(self, file_stem: str, *revoked: KeyPair) -> Path:
        """A CRL of this CA (PEM) naming these certificates revoked; empty without any."""
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + timedelta(days=7))
        )
        for pair in revoked:
            cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now - timedelta(minutes=1))
                .build()
            )
        crl = self.directory / f"{file_stem}.crl.pem"
        crl.write_bytes(
            builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        return crl


@dataclass(frozen=True)
class TestPki:
    """One CA, a server certificate for 127.0.0.1 and Jokko's client certificate."""

    __test__ = False  # not a pytest test class

    authority: CertificateAuthority
    server: KeyPair
    client: KeyPair

    @property
    def ca(self) -> Path:
        return self.authority.cert

    def server_tls(self, *, require_client_cert: bool = True) -> ServerTLS:
        """The fakes' side: this server certificate, and Jokko's client certificate required."""
        return ServerTLS(
            self.server.cert, self.server.key, self.ca if require_client_cert else None
        )

    def partner_settings(self) -> dict[str, object]:
        """``PartnerSettings`` fields for Jokko to reach a server of this PKI over mutual TLS."""
        return {
            "ca_file": self.ca,
            "client_cert_file": self.client.cert,
            "client_key_file": self.client.key,
        }


def make_pki(directory: Path) -> TestPki:
    authority = CertificateAuthority(directory)
    return TestPki(
        authority,
        authority.issue("server", server=True, hosts=(*LOOPBACK, "localhost")),
        authority.issue("jokko-client", server=False),
    )
