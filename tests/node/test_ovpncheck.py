"""The node's allowlist for .ovpn files (vpnagent/ovpncheck.py): every config our server
renders passes, and every way of smuggling a directive past the old blocklist is refused
with the directive named."""
from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server_ext.ovpn import DEFAULT_PROFILE, VANTAGE6_PROFILE, Profile, VPNSettings, render_client
from server_ext.pki import PKI
from vpnagent import ovpncheck
from vpnagent.ovpncheck import ConfigRefused, check_ovpn


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def _config(pki: PKI, settings: VPNSettings, index: int = 0, cn: str = "node-3") -> str:
    issued = pki.issue_node_cert(cn, days=1)
    return render_client(settings, pki.ca_pem, issued.cert_pem, issued.key_pem, pki.tls_crypt_v2_client_key(cn),
                         index=index)


PROFILES = [DEFAULT_PROFILE, VANTAGE6_PROFILE, Profile(cipher="CHACHA20-POLY1305", tun_mtu=1500, mssfix=1400,
                                                       txqueuelen=1000, sndbuf=0, rcvbuf=0, fast_io=True),
            Profile(cipher="AES-128-GCM:AES-256-GCM")]


@pytest.mark.parametrize("profile", PROFILES, ids=["default", "vantage6", "tuned", "two-ciphers"])
@pytest.mark.parametrize("proto, processes, port_share", [("udp", 1, None), ("tcp", 1, None), ("udp", 3, None),
                                                           ("tcp", 4, None), ("tcp", 1, ("172.18.0.1", 5000))])
def test_every_config_our_server_renders_passes(pki, profile, proto, processes, port_share):
    s = VPNSettings(subnet=ipaddress.IPv4Network("10.76.0.0/16"), remote_host="vpn.example.org", remote_port=443,
                    proto=proto, profile=profile, processes=processes, port_share=port_share)
    for index in range(processes):
        check_ovpn(_config(pki, s, index))


@settings(max_examples=60, deadline=None)
@given(host=st.one_of(st.ip_addresses().map(str), st.from_regex(ovpncheck.HOST, fullmatch=True)),
       port=st.integers(1, 60000), proto=st.sampled_from(["udp", "tcp"]),
       mtu=st.one_of(st.none(), st.integers(0, 65535)), fast_io=st.booleans(),
       cipher=st.lists(st.sampled_from(ovpncheck.AEAD_CIPHERS), min_size=1, max_size=3).map(":".join))
def test_any_settings_the_server_accepts_render_a_config_nodes_accept(pki, host, port, proto, mtu, fast_io, cipher):
    s = VPNSettings(remote_host=host, remote_port=port, proto=proto,
                    profile=Profile(cipher=cipher, tun_mtu=mtu, mssfix=mtu, fast_io=fast_io))
    check_ovpn(_config(pki, s))


def _good(pki: PKI) -> str:
    return _config(pki, VPNSettings())


def _before_blocks(config: str, extra: str) -> str:
    return config.replace("<ca>", extra + "\n<ca>", 1)


# (line(s) added to a good config, what the refusal must name)
ATTACKS = [
    ("script-security 2", "'script-security'"),
    ("script-security\t2", "'script-security'"),
    ("  \t script-security 2   ", "'script-security'"),
    ("iproute /tmp/x", "'iproute'"),
    ("up /bin/sh", "'up'"),
    ("--up /bin/sh", "'up' (written '--up')"),
    ("--script-security 2", "'script-security' (written '--script-security')"),
    ('"up" /bin/sh', "'up'"),
    ("'up' /bin/sh", "'up'"),
    ("UP /bin/sh", "'UP'"),
    ("Script-Security 2", "'Script-Security'"),
    ("config /tmp/other.ovpn", "'config'"),
    ("setenv opt up /bin/sh", "'setenv'"),
    ("plugin /usr/lib/x.so", "'plugin'"),
    ("down /bin/sh", "'down'"),
    ("route-up /bin/sh", "'route-up'"),
    ("route-pre-down /bin/sh", "'route-pre-down'"),
    ("ipchange /bin/sh", "'ipchange'"),
    ("tls-verify /bin/sh", "'tls-verify'"),
    ("tls-crypt-v2-verify /bin/sh", "'tls-crypt-v2-verify'"),
    ("learn-address /bin/sh", "'learn-address'"),
    ("client-connect /bin/sh", "'client-connect'"),
    ("auth-user-pass-verify /bin/sh via-env", "'auth-user-pass-verify'"),
    ("management 0.0.0.0 7505", "'management'"),
    ("log /etc/passwd", "'log'"),
    ("writepid /etc/shadow", "'writepid'"),
    ("status /etc/hosts 1", "'status'"),
    ("tmp-dir /", "'tmp-dir'"),
    ("cd /", "'cd'"),
    ("route 0.0.0.0 0.0.0.0", "'route'"),
    ("no-such-directive x", "'no-such-directive'"),
    ("<connection>\nremote evil.example 1194\n</connection>", "<connection>"),
    ("<dh>\n-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n</dh>", "<dh>"),
    ("<tls-crypt>\n-----BEGIN OpenVPN Static key V1-----\n00\n-----END OpenVPN Static key V1-----\n</tls-crypt>",
     "<tls-crypt>"),
    ("--<connection>\nup /bin/sh\n</connection>", "<connection>"),
    # arguments outside what we issue
    ("dev tap", "'dev' with 'tap'"),
    ("dev tun0 up", "'dev' with 'tun0 up'"),
    ("proto tcp-server", "'proto' with 'tcp-server'"),
    ("verb 11", "'verb' with '11'"),
    ("tun-mtu lots", "'tun-mtu' with 'lots'"),
    ("data-ciphers BF-CBC", "'data-ciphers' with 'BF-CBC'"),
    ("connect-retry 1 5 /bin/sh", "'connect-retry'"),
    ("remote-cert-tls client", "'remote-cert-tls' with 'client'"),
    ("remote evil.example 1194 udp", "'remote' with 'evil.example 1194 udp'"),
    ("remote -evil 1194", "'remote' with '-evil 1194'"),
    # a second copy of an allowed directive: a second remote, or a second verify-x509-name
    ("remote evil.example 1194", "'remote' a second time"),
    ("verify-x509-name evil name-prefix", "'verify-x509-name' with 'evil name-prefix'"),
    # what OpenVPN splits or hides differently from a naive reader
    ("verb 3\rscript-security 2", r"'\r' in 'verb 3\rscript-security 2'"),
    ("\rup /bin/sh", r"'\r' in '\rup /bin/sh'"),
    ("verb 3\x00up /bin/sh", r"'\x00' in 'verb 3\x00up /bin/sh'"),
    ("verb 3\x0bup /bin/sh", r"'\x0b' in 'verb 3\x0bup /bin/sh'"),
    ("u\\p /bin/sh", "backslash"),
    ("#" + " " * 250 + "up /bin/sh", "a line of 261 characters"),
    ('up "/bin/sh', "an unclosed quote in 'up \"/bin/sh'"),
    ('nobind "a b"', "quoted word"),
    ("txqueuelen 5 # a comment\nup /bin/sh", "'up'"),
    ("# a comment\n; another\nscript-security 2", "'script-security'"),
]


@pytest.mark.parametrize("extra, named", ATTACKS, ids=[a[0][:40] for a in ATTACKS])
@pytest.mark.parametrize("where", ["before blocks", "at the end"])
def test_each_attack_is_refused_by_name(pki, extra, named, where):
    good = _good(pki)
    text = _before_blocks(good, extra) if where == "before blocks" else good + extra + "\n"
    with pytest.raises(ConfigRefused) as exc:
        check_ovpn(text)
    assert named in str(exc.value)
    assert "refused" in str(exc.value) and "GET /vpn" in str(exc.value)  # what happens next, for the log reader


@pytest.mark.parametrize("change, named", [
    (lambda c: c.replace("</ca>", "</ca> up /bin/sh"), "without a line '</ca>'"),
    (lambda c: c.replace("</cert>", "</cert>up /bin/sh"), "without a line '</cert>'"),
    (lambda c: c.replace("-----END CERTIFICATE-----\n</ca>", "-----END CERTIFICATE-----\nup /bin/sh\n</ca>"),
     "'up /bin/sh' in <ca>"),
    (lambda c: c.replace("</key>", ""), "<key> without a line '</key>' closing it"),
    (lambda c: c.replace("<key>", "<key>\n<key>"), "'<key>' in <key>"),
    (lambda c: c + "<key>\n" + c.split("<key>\n")[1].split("</key>")[0] + "</key>\n", "a second <key> block"),
    (lambda c: c.replace("<key>", "<key> x"), "'<key>'"),
    (lambda c: c.replace("-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----"),
     "'PRIVATE KEY' PEM block belongs"),
    (lambda c: c.replace("verify-x509-name vpnagent-openvpn-server name\n", ""), "lacks verify-x509-name"),
    (lambda c: re.sub(r"<tls-crypt-v2>.*</tls-crypt-v2>\n", "", c, flags=re.S), "lacks <tls-crypt-v2>"),
    (lambda c: "\ufeff" + c, r"'\ufeff'"),
    (lambda c: c + "x" * 70000, "64 KiB"),
    (lambda c: "garbage", "the directive 'garbage'"),
    (lambda c: "", "lacks <ca>, <cert>, <key>, <tls-crypt-v2>, client, dev, proto, remote, remote-cert-tls, "
                   "verify-x509-name"),
])
def test_blocks_and_required_directives(pki, change, named):
    with pytest.raises(ConfigRefused, match=re.escape(named)):
        check_ovpn(change(_good(pki)))


@pytest.mark.parametrize("harmless", ["# up /bin/sh", "; script-security 2", "   ", "\t", "verb 3 ;comment",
                                      "--nobind"])
def test_comments_blanks_and_dashes_read_as_openvpn_reads_them(pki, harmless):
    good = _good(pki).replace("nobind\n", "").replace("verb 3\n", "")
    check_ovpn(_before_blocks(good, harmless))
    check_ovpn(good.replace("</key>", "   </key>"))  # OpenVPN allows blanks before a closing tag


def _old_blocklist(text: str) -> bool:
    """The check this module replaced (vpnclient.check_ovpn before issue 11), reduced to its
    verdict: True = let through."""
    outside = re.sub(r"<([a-z-]+)>.*?</\1>", "", text, flags=re.S)
    for line in outside.splitlines():
        word = line.strip().split(" ", 1)[0].lower()
        if word in {"up", "down", "script-security", "plugin", "route-up", "ipchange", "tls-verify",
                    "client-connect", "learn-address", "auth-user-pass-verify", "route-pre-down", "config"}:
            return False
    return True


def test_the_attack_list_catches_weaker_checks(pki, monkeypatch):
    """The attack list is sharp enough to fail a weaker check: the old blocklist lets
    program-running lines through, and so does this allowlist with one rule loosened."""
    good = _good(pki)
    through_old = {extra for extra, _ in ATTACKS if _old_blocklist(_before_blocks(good, extra))}
    assert {"script-security\t2", "iproute /tmp/x", "--up /bin/sh", '"up" /bin/sh',
            "setenv opt up /bin/sh"} <= through_old
    monkeypatch.setitem(ovpncheck.DIRECTIVES, "up", ovpncheck.Directive(".*", "up CMD"))
    check_ovpn(_before_blocks(good, "--up /bin/sh"))  # loosened: the attack passes, the test above would fail
    monkeypatch.setitem(ovpncheck.DIRECTIVES, "dev", ovpncheck.Directive(".*", "dev ANY"))
    check_ovpn(good.replace("dev tun", "dev tap"))


def test_vpnclient_reports_a_refusal_as_a_vpn_error(pki):
    from vpnagent.dataplane import VPNError
    from vpnagent.dataplane.openvpn import check_ovpn as client_check

    client_check(_good(pki))
    with pytest.raises(VPNError, match="'script-security'"):
        client_check(_before_blocks(_good(pki), "script-security 2"))
