"""Real handshakes between the host's openvpn binaries in two network namespaces, with the
configs, keys and verify hook server_ext makes (no Docker): the client pins the VPN
server's certificate name, and tls-crypt-v2 keys made in Python work with OpenVPN and stop
working before TLS once their node is removed. Each test also runs the weakened setup
once, to show that its assertion would catch the hole."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from server_ext.ovpn import VPNSettings, render_client, render_server_conf
from server_ext.pki import PKI
from server_ext.tlscrypt import VERIFY_HOOK, client_key_for_node, make_server_key
from server_ext.vpnserver import OpenVPNFiles
from tests.openvpn_netns import CONNECTED, SERVER_IP, Link, host_config, running, skip_unless_possible, veth_link
from tests.waiting import wait_for

SUBNET = ipaddress.IPv4Network("10.99.0.0/24")  # only inside the test's namespaces


@pytest.fixture
def link() -> Link:
    skip_unless_possible()
    with veth_link() as link:
        yield link


@pytest.fixture
def server_files(tmp_path) -> OpenVPNFiles:
    """The server's directory as server_ext writes it (config, hook, CRL, ccd), rendered for
    this directory instead of the container's mount point."""
    d = tmp_path / "openvpn"
    settings = VPNSettings(subnet=SUBNET, remote_host=SERVER_IP, config_dir_in_container=str(d))
    files = OpenVPNFiles(d, PKI(tmp_path / "pki"), settings)
    files.write_all()
    return files


def _server_conf(files: OpenVPNFiles, path: Path, cert: str | None = None, key: str | None = None,
                 drop: tuple[str, ...] = ()) -> Path:
    pki = files.pki
    own_cert, own_key = pki.server_pair()
    conf = render_server_conf(files.settings, pki.ca_pem, cert or own_cert, key or own_key,
                              pki.tls_crypt_v2_server_key())
    path.write_text("".join(line + "\n" for line in host_config(conf).splitlines() if not line.startswith(drop)))
    return path


def _client_conf(files: OpenVPNFiles, path: Path, cn: str, tls_key: str | None = None,
                 drop: tuple[str, ...] = ()) -> Path:
    pki = files.pki
    issued = pki.issue_node_cert(cn, days=1)
    conf = render_client(files.settings, pki.ca_pem, issued.cert_pem, issued.key_pem,
                         tls_key or pki.tls_crypt_v2_client_key(cn))
    path.write_text("".join(line + "\n" for line in conf.splitlines() if not line.startswith(drop)))
    return path


def _tun_ip(ns: str) -> str | None:
    out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "tun0"], capture_output=True, text=True,
                         timeout=10)
    addrs = json.loads(out.stdout or "[]") if out.returncode == 0 else []
    return next((a["local"] for link in addrs for a in link.get("addr_info", [])), None)


def test_client_refuses_a_server_showing_the_api_certificate(link, server_files, tmp_path):
    """Same CA, serverAuth: the API's HTTPS certificate passes `remote-cert-tls server`;
    only verify-x509-name tells it from the VPN server's."""
    server_files.write_ccd("node-2", "10.99.0.2")
    api_crt, api_key = server_files.pki.api_pair([SERVER_IP])
    impostor = _server_conf(server_files, tmp_path / "impostor.conf", api_crt.read_text(), api_key.read_text())
    client = _client_conf(server_files, tmp_path / "client.ovpn", "node-2")
    with running(link.server_ns, impostor, tmp_path / "impostor.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, client, tmp_path / "client.log") as node:
            node.wait_log("VERIFY X509NAME ERROR: CN=vpnagent-api, must be vpnagent-openvpn-server")
        assert CONNECTED not in node.log()
        assert _tun_ip(link.client_ns) is None

        # weakened: the same config without the pin connects to the impostor
        unpinned = _client_conf(server_files, tmp_path / "unpinned.ovpn", "node-2", drop=("verify-x509-name",))
        with running(link.client_ns, unpinned, tmp_path / "unpinned.log") as node:
            node.wait_log(CONNECTED)

    real = _server_conf(server_files, tmp_path / "server.conf")
    with running(link.server_ns, real, tmp_path / "server.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, client, tmp_path / "client2.log") as node:
            node.wait_log(CONNECTED)
            assert "VERIFY X509NAME OK: CN=vpnagent-openvpn-server" in node.log()


def test_tls_crypt_v2_current_removed_and_foreign_keys(link, server_files, tmp_path):
    """One server (our config, our server key, our hook) and three clients: a current
    node's key connects; a removed node's key (valid certificate, ccd entry gone) is
    refused by the verify hook before TLS; a key wrapped with another server key is
    refused when unwrapped."""
    for cn, ip in (("node-7", "10.99.0.7"), ("node-8", "10.99.0.8"), ("node-9", "10.99.0.9")):
        server_files.write_ccd(cn, ip)
    server_files.remove_ccd("node-8")  # what admin.remove_node does
    current = _client_conf(server_files, tmp_path / "current.ovpn", "node-7")
    removed = _client_conf(server_files, tmp_path / "removed.ovpn", "node-8")
    foreign = _client_conf(server_files, tmp_path / "foreign.ovpn", "node-9",
                           tls_key=client_key_for_node(make_server_key(), "node-9"))
    conf = _server_conf(server_files, tmp_path / "server.conf")
    with running(link.server_ns, conf, tmp_path / "server.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, current, tmp_path / "current.log") as node:
            node.wait_log(CONNECTED)
            assert wait_for(lambda: _tun_ip(link.client_ns), "tun0 to get the ccd address", 10, 0.05) == "10.99.0.7"
            assert "TLS CRYPT V2 VERIFY SCRIPT OK" in server.log()

        with running(link.client_ns, removed, tmp_path / "removed.log"):
            server.wait_log("refused: node-8 has no client-config-dir entry (removed)")
            server.wait_log("TLS CRYPT V2 VERIFY SCRIPT ERROR")
        assert "CN=node-8" not in server.log(), "the removed node's key got as far as TLS"

        with running(link.client_ns, foreign, tmp_path / "foreign.log"):
            server.wait_log("client key authentication error")
        assert "CN=node-9" not in server.log()
        assert "Initialization Sequence Completed" not in (tmp_path / "foreign.log").read_text()

    # weakened: without the hook the removed node's key is let in and its certificate
    # checked (ccd-exclusive refuses it later, but only after TLS): the assertion above fails
    hookless = _server_conf(server_files, tmp_path / "hookless.conf", drop=("script-security", "tls-crypt-v2-verify"))
    with running(link.server_ns, hookless, tmp_path / "hookless.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, removed, tmp_path / "removed2.log"):
            server.wait_log("CN=node-8")


def test_the_hook_refuses_malformed_metadata(tmp_path):
    """The verify hook on its own, run as OpenVPN runs it (environment, one argument), with
    metadata that is not a plain node name: nothing but `node-<digits>` with a ccd entry.
    Decoy ccd entries exist for the malformed names, so only the validation can refuse them."""
    hook, ccd = tmp_path / "hook.sh", tmp_path / "ccd"
    hook.write_text(VERIFY_HOOK)
    ccd.mkdir()
    for name in ("node-3", "x", "node-3 x", "node-3\n", "node-"):
        (ccd / name).write_text("ifconfig-push 10.99.0.3 255.255.255.0\n")

    def verdict(metadata: bytes, metadata_type: str = "0") -> int:
        meta = tmp_path / "meta"
        meta.write_bytes(metadata)
        env = {"PATH": os.environ["PATH"], "metadata_type": metadata_type, "metadata_file": str(meta)}
        return subprocess.run(["/bin/sh", str(hook), str(ccd)], env=env, capture_output=True, timeout=10).returncode

    assert verdict(b"node-3") == 0
    assert verdict(b"node-4") != 0  # no ccd entry
    assert verdict(b"node-3", metadata_type="1") != 0  # a timestamp key: not one of ours
    for bad in (b"node-3\n", b"node-3\0", b"node-3 x", b"x", b"node-", b"node-03", b"../ccd/node-3", b"node-3/",
                b"$(touch /tmp/pwned)", b"node-3;id", b"node-3`id`", b"-node-3", b"node-3" + b"0" * 20, b""):
        assert verdict(bad) != 0, bad
    assert not Path("/tmp/pwned").exists()
