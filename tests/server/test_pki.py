import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from server_ext.pki import PKI, TLS_CRYPT_V2_KEY, PKIError, cert_from_ovpn, common_name
from server_ext.tlscrypt import unwrap_client_key


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path / "pki")


def test_node_cert_verifies_against_the_ca_and_is_a_client_cert(pki):
    issued = pki.issue_node_cert("node-7", days=2)
    cert = pki.verify_issued(issued.cert_pem)
    assert common_name(cert) == "node-7"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=1, hours=23) < lifetime <= dt.timedelta(days=2)
    assert cert.serial_number == issued.serial


def test_server_cert_is_for_servers(pki):
    cert = x509.load_pem_x509_certificate(pki.server_pair()[0].encode())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(pki.ca_cert)


def test_revoked_serial_is_in_the_crl_and_others_are_not(pki):
    a, b = pki.issue_node_cert("node-1"), pki.issue_node_cert("node-2")
    pki.write_crl([(a.serial, dt.datetime.now(dt.timezone.utc))])
    crl = x509.load_pem_x509_crl(pki.crl_pem().encode())
    assert crl.is_signature_valid(pki.ca_cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(a.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(b.serial) is None


def test_private_keys_are_0600_and_material_survives_a_reload(pki, tmp_path):
    for name in ("ca.key", "server.key", TLS_CRYPT_V2_KEY):
        mode = stat.S_IMODE((tmp_path / "pki" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    again = PKI(tmp_path / "pki")
    assert again.ca_pem == pki.ca_pem
    assert again.tls_crypt_v2_server_key() == pki.tls_crypt_v2_server_key()
    issued = again.issue_node_cert("node-3")
    pki.verify_issued(issued.cert_pem)


def test_foreign_and_garbage_certificates_are_refused(pki, tmp_path):
    other = PKI(tmp_path / "other")
    with pytest.raises(PKIError, match="not issued by this server"):
        pki.verify_issued(other.issue_node_cert("node-1").cert_pem)
    with pytest.raises(PKIError, match="not a PEM"):
        pki.verify_issued("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError, match="no <cert> block"):
        cert_from_ovpn("client\nremote x 1194\n")


def test_a_data_dir_from_before_tls_crypt_v2_gets_a_server_key_at_start(pki, tmp_path):
    """Migration: a PKI with only the old shared tls-crypt key (simulated by removing the
    v2 key) gets a v2 server key when the server starts, and its node keys name the node."""
    (tmp_path / "pki" / TLS_CRYPT_V2_KEY).unlink()
    (tmp_path / "pki" / "tls-crypt.key").write_text("-----BEGIN OpenVPN Static key V1-----\n...")
    again = PKI(tmp_path / "pki")
    assert again.ca_pem == pki.ca_pem  # the rest of the PKI is kept
    server_key = again.tls_crypt_v2_server_key()
    assert server_key.startswith("-----BEGIN OpenVPN tls-crypt-v2 server key-----")
    client = unwrap_client_key(server_key, again.tls_crypt_v2_client_key("node-12"))
    assert (client.metadata_type, client.metadata) == (0, b"node-12")
