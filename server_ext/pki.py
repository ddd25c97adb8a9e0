"""The server's own PKI, made with `cryptography`: a CA, the OpenVPN server certificate,
node certificates with a finite lifetime, the CRL, the tls-crypt-v2 server key and the
per-node client keys wrapped with it (tlscrypt.py). No EduVPN, no easy-rsa. Private keys
are written 0600."""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .tlscrypt import client_key_for_node, make_server_key

CA_CN = "vpnagent-ca"
SERVER_CN = "vpnagent-openvpn-server"
TLS_CRYPT_V2_KEY = "tls-crypt-v2-server.key"


class PKIError(ValueError):
    """A certificate is malformed or was not issued by this server's CA."""


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: str
    key_pem: str
    serial: int
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def write_private(path: Path, data: str) -> None:
    """Write a secret with mode 0600 from the first byte (no window with wider rights)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_public(path: Path, data: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class PKI:
    """CA material under `directory`; created on first use, loaded afterwards."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._ensure()

    def _ensure(self) -> None:
        ca_key_path, ca_crt_path = self.dir / "ca.key", self.dir / "ca.crt"
        if not ca_crt_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_CN)])
            now = _now()
            cert = (
                x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            write_private(ca_key_path, _key_pem(key))
            write_public(ca_crt_path, _cert_pem(cert))
        self.ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        self.ca_cert = x509.load_pem_x509_certificate(ca_crt_path.read_bytes())
        if not (self.dir / "server.crt").exists():
            issued = self._issue(SERVER_CN, 3650, ExtendedKeyUsageOID.SERVER_AUTH)
            write_private(self.dir / "server.key", issued.key_pem)
            write_public(self.dir / "server.crt", issued.cert_pem)
        # Also on a data dir from before tls-crypt-v2 (its tls-crypt.key is no longer used):
        # nodes then fetch new configs, as their old ones are refused.
        if not (self.dir / TLS_CRYPT_V2_KEY).exists():
            write_private(self.dir / TLS_CRYPT_V2_KEY, make_server_key())
        if not (self.dir / "crl.pem").exists():
            self.write_crl([])

    # --- material
    @property
    def ca_pem(self) -> str:
        return _cert_pem(self.ca_cert)

    def server_pair(self) -> tuple[str, str]:
        return (self.dir / "server.crt").read_text(), (self.dir / "server.key").read_text()

    def tls_crypt_v2_server_key(self) -> str:
        return (self.dir / TLS_CRYPT_V2_KEY).read_text()

    def tls_crypt_v2_client_key(self, common_name: str) -> str:
        """A new client key for one config of that node, naming it in its metadata."""
        return client_key_for_node(self.tls_crypt_v2_server_key(), common_name)

    def crl_pem(self) -> str:
        return (self.dir / "crl.pem").read_text()

    # --- issuing and revoking
    def _issue(self, cn: str, days: float, usage, sans: list[str] | None = None) -> IssuedCert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        serial = x509.random_serial_number()
        not_after = now + dt.timedelta(days=days)
        builder = x509.CertificateBuilder()
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in sans]),
                                            critical=False)
        cert = (
            builder
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.ca_cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=usage == ExtendedKeyUsageOID.SERVER_AUTH,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return IssuedCert(_cert_pem(cert), _key_pem(key), serial, not_after)

    def api_pair(self, hostnames: list[str]) -> tuple[Path, Path]:
        """The API's HTTPS certificate and key files for `hostnames` (DNS names or IPs),
        signed by our CA; re-issued when the names change or it expires within 30 days."""
        crt, key = self.dir / "api.crt", self.dir / "api.key"
        if crt.exists() and key.exists():
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            try:
                have = sorted(str(n.value) for n in cert.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName).value)
            except x509.ExtensionNotFound:
                have = []
            fresh = cert.not_valid_after_utc - _now() > dt.timedelta(days=30)
            if fresh and have == sorted(str(_general_name(n).value) for n in hostnames):
                return crt, key
        issued = self._issue("vpnagent-api", 825, ExtendedKeyUsageOID.SERVER_AUTH, sans=hostnames)
        write_private(key, issued.key_pem)
        write_public(crt, issued.cert_pem)
        return crt, key

    def issue_node_cert(self, cn: str, days: float = 30) -> IssuedCert:
        return self._issue(cn, days, ExtendedKeyUsageOID.CLIENT_AUTH)

    def write_crl(self, revoked: list[tuple[int, dt.datetime]]) -> None:
        """Rewrite the CRL with every revoked serial; OpenVPN re-reads it on each connect."""
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ca_cert.subject)
                   .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=365)))
        for serial, when in revoked:
            entry = (x509.RevokedCertificateBuilder().serial_number(serial)
                     .revocation_date(when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when).build())
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self.ca_key, hashes.SHA256())
        write_public(self.dir / "crl.pem", crl.public_bytes(serialization.Encoding.PEM).decode())

    def verify_issued(self, cert_pem: str) -> x509.Certificate:
        """The certificate, if it was signed by our CA; PKIError otherwise."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError as exc:
            raise PKIError("not a PEM certificate") from exc
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PKIError("certificate was not issued by this server's CA") from exc
        return cert


def cert_from_ovpn(text: str) -> str:
    """The PEM certificate inside an inline .ovpn's <cert> block."""
    match = re.search(r"<cert>\s*(-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----)\s*</cert>", text, re.S)
    if not match:
        raise PKIError("config holds no <cert> block with a PEM certificate")
    return match.group(1) + "\n"


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def fingerprint(cert_pem: str | bytes) -> str:
    """SHA-256 of the certificate's DER, as hex pairs with colons (what a node pins)."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    der = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
