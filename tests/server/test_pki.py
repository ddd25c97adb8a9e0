import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from server_ext.pki import PKI, PKIError, cert_from_ovpn, common_name, make_tls_crypt_key


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
    for name in ("ca.key", "server.key", "tls-crypt.key"):
        mode = stat.S_IMODE((tmp_path / "pki" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    again = PKI(tmp_path / "pki")
    assert again.ca_pem == pki.ca_pem
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


def test_tls_crypt_key_has_openvpns_format():
    key = make_tls_crypt_key().splitlines()
    assert key[0] == "-----BEGIN OpenVPN Static key V1-----" and key[-1] == "-----END OpenVPN Static key V1-----"
    body = key[1:-1]
    assert len(body) == 16 and all(len(line) == 32 and int(line, 16) >= 0 for line in body)
    assert make_tls_crypt_key() != make_tls_crypt_key()
