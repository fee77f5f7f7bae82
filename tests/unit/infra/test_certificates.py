"""The secure stack's local CA: a verifying chain, the right names, stable files, private keys."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from infra.stack import certificates
from infra.stack.certificates import TlsFiles, ensure_certificates


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_certificates(tmp_path_factory.mktemp("tls") / "tls")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify_with_openssl(files: TlsFiles, cert: Path, key: Path, purpose: ssl.Purpose) -> None:
    # The chain as a TLS library sees it: the CA file as the only trust anchor, the leaf loaded with
    # its key (load_cert_chain fails on a key that does not match).
    ctx = ssl.create_default_context(purpose, cafile=str(files.ca_cert))
    ctx.load_cert_chain(str(cert), str(key))


def test_server_and_client_certificates_are_issued_by_the_ca(files: TlsFiles) -> None:
    ca = _cert(files.ca_cert)
    for leaf, usage in (
        (files.server_cert, ExtendedKeyUsageOID.SERVER_AUTH),
        (files.client_cert, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = _cert(leaf)
        cert.verify_directly_issued_by(ca)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    _verify_with_openssl(files, files.server_cert, files.server_key, ssl.Purpose.CLIENT_AUTH)
    _verify_with_openssl(files, files.client_cert, files.client_key, ssl.Purpose.SERVER_AUTH)


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, hostname: str) -> ssl.SSLObject:
    """A real handshake over memory BIOs, both sides in this thread; returns the server's end."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done: set[str] = set()
    for _ in range(10):
        for name, side, out, peer_in in (("client", client, c_out, s_in), ("server", server, s_out, c_in)):
            if name not in done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                    done.add(name)
            peer_in.write(out.read())
        if done == {"client", "server"}:
            return server
    raise AssertionError(f"handshake did not finish: {done}")


def _server_ctx(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files.server_cert), str(files.server_key))
    return ctx


def test_a_tls_handshake_verifies_the_server_by_name(files: TlsFiles) -> None:
    # The client trusts only ca.pem and checks the hostname; the server verifies the client certificate.
    server_ctx = _server_ctx(files)
    server_ctx.load_verify_locations(str(files.ca_cert))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    client_ctx.load_cert_chain(str(files.client_cert), str(files.client_key))
    for hostname in ("localhost", "127.0.0.1", "::1"):
        server = _handshake(client_ctx, server_ctx, hostname)
        assert server.getpeercert()["subject"] == ((("commonName", certificates.CLIENT_COMMON_NAME),),)


def test_a_wrong_hostname_fails_verification(files: TlsFiles) -> None:
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(client_ctx, _server_ctx(files), "elsewhere.example")


def test_server_certificate_names_every_local_address_and_service(files: TlsFiles) -> None:
    san = _cert(files.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert {"localhost", "postgres", "kafka", "connect", "redis"} <= set(san.get_values_for_type(x509.DNSName))


def test_keys_are_private_and_certificates_readable(files: TlsFiles) -> None:
    for key in (files.ca_key, files.server_key, files.client_key, files.server_keystore, files.client_keystore):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for cert in (files.ca_cert, files.server_cert, files.client_cert):
        assert stat.S_IMODE(cert.stat().st_mode) == 0o644, cert
    assert not list(files.dir.glob("*.tmp"))


def test_kafka_pem_keystore_holds_key_then_chain(files: TlsFiles) -> None:
    text = files.server_keystore.read_bytes()
    assert text.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted: no ssl.key.password
    chain = x509.load_pem_x509_certificates(text[text.index(b"-----BEGIN CERTIFICATE-----") :])
    assert chain == [_cert(files.server_cert), _cert(files.ca_cert)]
    key = serialization.load_pem_private_key(text, password=None)
    assert key.public_key() == chain[0].public_key()


def test_a_second_call_keeps_every_file(files: TlsFiles) -> None:
    paths = sorted(files.dir.iterdir())
    before = {p: p.read_bytes() for p in paths}
    ensure_certificates(files.dir)
    assert {p: p.read_bytes() for p in sorted(files.dir.iterdir())} == before


def test_a_loosened_key_mode_is_tightened(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path)
    files.server_key.chmod(0o644)
    ensure_certificates(tmp_path)
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_a_missing_name_or_leaf_reissues_the_leaf_under_the_same_ca(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path)
    ca, server = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    client = files.client_cert.read_bytes()
    ensure_certificates(tmp_path, extra_names=["broker.internal"])
    assert files.ca_cert.read_bytes() == ca
    assert files.server_cert.read_bytes() != server
    assert files.client_cert.read_bytes() == client
    assert "broker.internal" in _cert(files.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    files.client_key.unlink()
    ensure_certificates(tmp_path, extra_names=["broker.internal"])
    assert files.client_cert.read_bytes() != client
    _cert(files.client_cert).verify_directly_issued_by(_cert(files.ca_cert))


def test_an_expiring_ca_is_replaced_with_all_leaves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ensure_certificates(tmp_path)
    ca, server = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    later = certificates._now() + certificates.CA_VALIDITY - dt.timedelta(days=1)
    monkeypatch.setattr(certificates, "_now", lambda: later)
    ensure_certificates(tmp_path)
    assert files.ca_cert.read_bytes() != ca
    assert files.server_cert.read_bytes() != server
    _cert(files.server_cert).verify_directly_issued_by(_cert(files.ca_cert))
