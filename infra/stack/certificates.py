"""A local certificate authority for the stack's secure mode (``STACK_SECURE=1``).

``ensure_certificates(tls_dir)`` makes, once, a CA and two leaf certificates signed by it, and keeps
them on later calls while they are still good (signed by the CA on disk, valid for at least
``RENEW_BEFORE`` more, and naming every requested host); anything missing or stale is made again, the
CA only when the CA itself is missing or expiring, so clients that trust ``ca.pem`` keep trusting.

Files under ``tls_dir`` (``<STACK_DIR>/tls`` by default, ``StackSettings.tls_dir``); keys are PKCS#8
PEM, unencrypted, mode 0600; certificates mode 0644:

- ``ca.pem`` / ``ca-key.pem``: the CA. Every client's trust anchor (Postgres ``sslrootcert``, Redis
  ``ssl_ca_certs``, Kafka ``ssl.truststore.location`` with ``ssl.truststore.type=PEM``).
- ``server.pem`` / ``server-key.pem``: the one server certificate every service presents. Its SANs are
  127.0.0.1, ::1, localhost, the machine's hostname and the compose service names (``SERVER_HOSTNAMES``),
  so hostname verification (Postgres ``verify-full``, Kafka's HTTPS endpoint identification) passes.
- ``client.pem`` / ``client-key.pem``: a client certificate (CN ``engagement-client``, clientAuth) for
  services that ask for one (Kafka ``ssl.client.auth``, Redis ``tls-auth-clients``).
- ``server-keystore.pem`` / ``client-keystore.pem``: key + certificate + CA in one file, which is what
  Kafka 3.x reads with ``ssl.keystore.type=PEM`` and ``ssl.keystore.location`` (no JKS/PKCS12 and no
  keytool): set no ``ssl.key.password``, the key is not encrypted. Mode 0600.

Keys are EC P-256: every client here (libpq, hiredis/OpenSSL, Java's PEM keystore) reads them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Compose service names, so the same CA works for containers that reach each other by name.
SERVER_HOSTNAMES = ("localhost", "postgres", "kafka", "kafka-2", "kafka-3", "connect", "redis")
SERVER_ADDRESSES = ("127.0.0.1", "::1")
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=397)
RENEW_BEFORE = dt.timedelta(days=30)
CLIENT_COMMON_NAME = "engagement-client"
SERVER_COMMON_NAME = "engagement-server"


@dataclass(frozen=True)
class TlsFiles:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client-key.pem"

    @property
    def server_keystore(self) -> Path:
        return self.dir / "server-keystore.pem"

    @property
    def client_keystore(self) -> Path:
        return self.dir / "client-keystore.pem"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    # Written to a temporary name with its final mode, then renamed: a key is never readable by others,
    # not even for a moment, and a reader never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        return None
    return cert, key


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() > RENEW_BEFORE


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engagement-pipeline local CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    names: Iterable[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + LEAF_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def server_names(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every name the server certificate must carry, in a stable order without duplicates."""
    wanted = [*SERVER_ADDRESSES, *SERVER_HOSTNAMES, socket.gethostname(), *extra]
    return tuple(dict.fromkeys(n for n in wanted if n))


def ensure_certificates(tls_dir: Path, extra_names: Iterable[str] = ()) -> TlsFiles:
    """Make (or keep) the CA, server and client certificates under ``tls_dir``; see the module doc."""
    files = TlsFiles(tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True)
    # 0755: the Postgres server may run as the postgres OS user and reads certificates here (it
    # gets its own copy of the key, see infra/stack/postgres.py); the keys themselves are 0600.
    os.chmod(tls_dir, 0o755)
    names = server_names(extra_names)

    ca = _load(files.ca_cert, files.ca_key)
    renew_all = ca is None or not _fresh(ca[0])
    if renew_all:
        ca = _make_ca()
        _write(files.ca_key, _key_pem(ca[1]), 0o600)
        _write(files.ca_cert, _cert_pem(ca[0]), 0o644)
    assert ca is not None
    ca_cert, ca_key = ca

    leaves = (
        (
            files.server_cert,
            files.server_key,
            files.server_keystore,
            "engagement-server",
            ExtendedKeyUsageOID.SERVER_AUTH,
            names,
        ),
        (
            files.client_cert,
            files.client_key,
            files.client_keystore,
            CLIENT_COMMON_NAME,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            (),
        ),
    )
    for cert_path, key_path, keystore_path, common_name, usage, sans in leaves:
        leaf = None if renew_all else _load(cert_path, key_path)
        good = (
            leaf is not None
            and _fresh(leaf[0])
            and _signed_by(leaf[0], ca_cert)
            and set(sans) <= _names(leaf[0])
            and keystore_path.exists()
        )
        if good:
            _ensure_mode(key_path, 0o600)
            _ensure_mode(keystore_path, 0o600)
            continue
        cert, key = _make_leaf(ca_cert, ca_key, common_name, usage, sans)
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, _cert_pem(cert), 0o644)
        _write(keystore_path, _key_pem(key) + _cert_pem(cert) + _cert_pem(ca_cert), 0o600)
    _ensure_mode(files.ca_key, 0o600)
    return files


def _ensure_mode(path: Path, mode: int) -> None:
    if path.exists() and path.stat().st_mode & 0o777 != mode:
        os.chmod(path, mode)
