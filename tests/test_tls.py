"""HTTPS between node and server: a real server with the certificate our CA issues, on
loopback, and the node's client checking it by CA file, by pinned fingerprint, or both.
A wrong CA or a wrong pin must refuse the connection before any API key is sent."""
from __future__ import annotations

import threading

import pytest
from werkzeug.serving import make_server

from server_ext import create_app
from server_ext.cli import ServerConfigError, tls_context
from server_ext.pki import PKI, fingerprint
from vpnagent.serverapi import ServerAPI, ServerError
from vpnagent.tls import make_session


@pytest.fixture
def https_server(tmp_path):
    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "TESTING": True}, migrate=True)
    state = app.extensions["vpnagent"]
    org = state.store.create_organization("o")
    collab = state.store.create_collaboration("c", [org.id])
    _, key = state.store.create_node(org.id, collab.id, "n1")
    ctx = tls_context({"host": "127.0.0.1"}, state.pki)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield {"url": f"https://127.0.0.1:{server.server_port}/api", "key": key, "pki": state.pki,
               "fp": fingerprint((state.pki.dir / "api.crt").read_bytes())}
    finally:
        server.shutdown()


def test_node_trusts_the_server_by_its_ca_file(https_server):
    s = https_server
    api = ServerAPI(s["url"], s["key"], session=make_session(str(s["pki"].dir / "ca.crt")))
    assert api.node_self()["name"] == "n1"


def test_pinned_fingerprint_alone_is_enough_and_must_match(https_server):
    s = https_server
    pin = s["fp"].replace(":", "").lower()
    assert ServerAPI(s["url"], s["key"], session=make_session(True, pin)).node_self()["name"] == "n1"
    wrong = "00" * 32
    with pytest.raises(ServerError, match="TLS check"):
        ServerAPI(s["url"], s["key"], session=make_session(True, wrong)).node_self()
    # the right CA does not excuse a wrong pin
    with pytest.raises(ServerError, match="Fingerprints did not match"):
        ServerAPI(s["url"], s["key"], session=make_session(str(s["pki"].dir / "ca.crt"), wrong)).node_self()


def test_another_ca_or_the_system_cas_are_refused(https_server, tmp_path):
    s = https_server
    other = PKI(tmp_path / "other-pki")
    with pytest.raises(ServerError, match="certificate verify failed"):
        ServerAPI(s["url"], s["key"], session=make_session(str(other.dir / "ca.crt"))).node_self()
    with pytest.raises(ServerError, match="server_ca_file"):
        ServerAPI(s["url"], s["key"], session=make_session(True)).node_self()


def test_certificate_names_the_hosts_nodes_use(tmp_path, capsys):
    from cryptography import x509

    pki = PKI(tmp_path / "pki")
    tls_context({"host": "0.0.0.0", "tls_hostnames": ["vpn.example.org", "192.0.2.7"]}, pki)
    cert = x509.load_pem_x509_certificate((pki.dir / "api.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["vpn.example.org"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    out = capsys.readouterr().out
    assert fingerprint((pki.dir / "api.crt").read_bytes()) in out and "server_ca_file" in out


def test_given_certificate_needs_its_key(tmp_path):
    pki = PKI(tmp_path / "pki")
    with pytest.raises(ServerConfigError, match="go together"):
        tls_context({"tls_cert": str(tmp_path / "x.crt")}, pki)
    (tmp_path / "bad.crt").write_text("not a cert")
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(ServerConfigError, match="cannot load the API certificate"):
        tls_context({"tls_cert": str(tmp_path / "bad.crt"), "tls_key": str(tmp_path / "bad.key")}, pki)
