"""A throw-away certificate authority and a server certificate for a TLS test registry.

P-256 keys: generating them takes well under a millisecond, where RSA-2048 takes ~50 ms.
The certificates follow what strict verifiers ask for, so that Go (skopeo, the registry),
OpenSSL (Python's ssl, hence ociforge) and OpenSSL's X509_STRICT mode accept them alike:
a CA with critical basicConstraints and keyUsage plus a subject key identifier; a leaf that is
not a CA, is for serverAuth, names its IP addresses in subjectAltName (Go ignores the common
name) and points at its issuer's key. Validity starts a day in the past: clocks may drift.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files in one directory: the CA a client trusts, the server's certificate and key.

    ``cert_dir`` holds only ``ca.crt``: the layout of ``skopeo --cert-dir`` and of
    ``/etc/containers/certs.d/<host>/``.
    """

    ca_file: Path
    certificate: Path
    key: Path
    cert_dir: Path
    ip_addresses: tuple[str, ...]

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls_files(
    directory: Path,
    *,
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    dns_names: Sequence[str] = (),
) -> TlsFiles:
    """Write a fresh CA and a server certificate for ``ip_addresses``/``dns_names``."""
    if not ip_addresses and not dns_names:
        raise ValueError("a server certificate needs at least one IP address or DNS name")
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now)
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses),
        *(x509.DNSName(name) for name in dns_names),
    ]
    server_cert = _server_certificate(server_key, ca_key, ca_cert, names, now)

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    files = TlsFiles(
        ca_file=directory / "ca.pem",
        certificate=directory / "server.crt",
        key=directory / "server.key",
        cert_dir=directory / "cert-dir",
        ip_addresses=tuple(ip_addresses),
    )
    files.ca_file.write_bytes(ca_pem)
    files.certificate.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.key.write_bytes(key_pem)
    files.key.chmod(0o600)
    files.cert_dir.mkdir(exist_ok=True)
    (files.cert_dir / "ca.crt").write_bytes(ca_pem)
    return files


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures, plus certificate and CRL signing for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ociforge throw-away test CA")])
    usage = _key_usage(signs_certificates=True)
    return (
        _builder(name, name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[x509.GeneralName],
    now: datetime.datetime,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ociforge test registry")])
    usage = _key_usage(signs_certificates=False)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        _builder(subject, ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
    )
