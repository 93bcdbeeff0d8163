"""Certificates for the local secure Kafka: a throwaway CA and one broker certificate it signs.

Made once per local cluster with `cryptography`, kept (mode 0600) under the cluster's state
directory, and never needed against a real cluster, whose operators issue their own.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The brokers' certificate subject; with mutual TLS on the controller listener it is the
#: brokers' principal there (`User:CN=...`), hence a super user.
BROKER_CN = "cascade-local-kafka-broker"
VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class BrokerTls:
    """PEM files of one local cluster: the CA certificate clients trust, the broker's chain and
    its unencrypted PKCS#8 key (Kafka reads both inline from its properties)."""

    ca_cert: Path
    broker_cert: Path
    broker_key: Path


def ensure_broker_tls(directory: Path) -> BrokerTls:
    """The CA and broker certificate under `directory`, made on the first call only."""
    tls = BrokerTls(directory / "ca.pem", directory / "broker.pem", directory / "broker-key.pem")
    if tls.ca_cert.exists() and tls.broker_cert.exists() and tls.broker_key.exists():
        return tls
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cascade-local-kafka CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CN)])
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    broker = (
        _builder(subject, ca_name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            # Both: a broker serves its listeners and is a TLS client of the controllers.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(tls.ca_cert, ca.public_bytes(pem))
    # The leaf alone: Kafka reads an inline chain on one line as its last certificate only.
    _write_private(tls.broker_cert, broker.public_bytes(pem))
    _write_private(
        tls.broker_key,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return tls


def one_line_pem(path: Path) -> str:
    """A PEM file as one line: the form Kafka's inline PEM settings accept in a properties file
    (its parser ignores whitespace inside the base64)."""
    return " ".join(path.read_text().split())


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _new_key() -> rsa.RSAPrivateKey:
    # RSA: Kafka's PEM key store mishandles EC keys ("Invalid CertificateVerify signature").
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
