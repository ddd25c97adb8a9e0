import ipaddress

import pytest

from server_ext.ovpn import VPNSettings, render_ccd, render_client, render_server_conf

PEMS = dict(ca="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----",
            cert="-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----",
            key="-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----",
            tls_crypt_v2="-----BEGIN OpenVPN tls-crypt-v2 server key-----\nT\n-----END OpenVPN tls-crypt-v2 server key-----")


def test_server_conf_udp():
    conf = render_server_conf(VPNSettings(subnet=ipaddress.IPv4Network("10.77.0.0/16")), **PEMS).splitlines()
    for line in ("proto udp", "dev tun0", "topology subnet", "server 10.77.0.0 255.255.0.0", "ccd-exclusive",
                 "client-to-client", "data-ciphers AES-256-GCM", "crl-verify /etc/openvpn/vpnagent/crl.pem",
                 "client-config-dir /etc/openvpn/vpnagent/ccd", "verify-client-cert require", "dh none",
                 "script-security 2", 'tls-crypt-v2-verify "/bin/sh /etc/openvpn/vpnagent/tls-crypt-v2-verify.sh '
                 '/etc/openvpn/vpnagent/ccd"'):
        assert line in conf, line
    assert "tcp-nodelay" not in conf
    for tag in ("ca", "cert", "key", "tls-crypt-v2"):
        assert f"<{tag}>" in conf and f"</{tag}>" in conf


def test_server_conf_tcp_has_nodelay():
    conf = render_server_conf(VPNSettings(proto="tcp", remote_port=443), **PEMS).splitlines()
    assert "proto tcp-server" in conf and "tcp-nodelay" in conf and "port 443" in conf


def test_client_config():
    conf = render_client(VPNSettings(remote_host="vpn.example.org", remote_port=1194), **PEMS)
    lines = conf.splitlines()
    assert lines[0] == "client"
    assert "remote vpn.example.org 1194" in lines and "remote-cert-tls server" in lines and "nobind" in lines
    assert "verify-x509-name vpnagent-openvpn-server name" in lines  # only the VPN server's certificate
    assert "<tls-crypt-v2>" in lines and PEMS["key"] in conf and PEMS["tls_crypt_v2"] in conf
    # scripts run on the server only
    assert not any(line.startswith(("script-security", "tls-crypt-v2-verify")) for line in lines)


def test_ccd_pushes_the_static_ip():
    net = ipaddress.IPv4Network("10.76.0.0/16")
    assert render_ccd("10.76.0.9", net) == "ifconfig-push 10.76.0.9 255.255.0.0\n"
    with pytest.raises(ValueError, match="outside"):
        render_ccd("10.99.0.9", net)


@pytest.mark.parametrize("host", ["a\nup /bin/sh", "a b", "", "<ca>", "-x", "a\\b", "a\tb", "é"])
def test_remote_host_cannot_inject_directives(host):
    with pytest.raises(ValueError, match="single word"):
        VPNSettings(remote_host=host)


@pytest.mark.parametrize("where", ["relative/dir", "/etc/open vpn", '/etc/"x', "/etc/x\n"])
def test_config_dir_cannot_break_the_hook_command(where):
    with pytest.raises(ValueError, match="absolute path"):
        VPNSettings(config_dir_in_container=where)


def test_profile_cipher_must_be_one_nodes_accept():
    from server_ext.ovpn import Profile

    assert Profile(cipher="AES-128-GCM:CHACHA20-POLY1305").cipher
    for bad in ("BF-CBC", "AES-256-GCM:", "AES-256-GCM up"):
        with pytest.raises(ValueError, match="AEAD"):
            Profile(cipher=bad)


def test_bad_proto_and_port():
    with pytest.raises(ValueError, match="udp or tcp"):
        VPNSettings(proto="sctp")
    with pytest.raises(ValueError, match="1-65535"):
        VPNSettings(remote_port=0)


def test_profile_lines_reach_both_ends():
    from server_ext.ovpn import Profile

    prof = Profile(tun_mtu=9000, mssfix=0, sndbuf=524288, rcvbuf=524288, fast_io=True, cipher="CHACHA20-POLY1305")
    settings = VPNSettings(profile=prof)
    for conf in (render_server_conf(settings, **PEMS), render_client(settings, **PEMS)):
        lines = conf.splitlines()
        for line in ("tun-mtu 9000", "mssfix 0", "sndbuf 524288", "rcvbuf 524288", "fast-io",
                     "data-ciphers CHACHA20-POLY1305"):
            assert line in lines, line
    tcp = render_server_conf(VPNSettings(proto="tcp", profile=prof), **PEMS).splitlines()
    assert "fast-io" not in tcp  # UDP only


def test_profile_from_server_config(tmp_path):
    from server_ext import create_app

    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path), "VPNAGENT_OPENVPN_PROFILE": {"tun_mtu": 9000}})
    assert app.extensions["vpnagent"].settings.profile.tun_mtu == 9000
    with pytest.raises(ValueError, match="unknown openvpn_profile key"):
        create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "b"), "VPNAGENT_OPENVPN_PROFILE": {"mtu": 1}})


def test_several_processes_split_the_subnet_and_route_between_them():
    s = VPNSettings(subnet=ipaddress.IPv4Network("10.76.0.0/16"), remote_port=1194, processes=3)
    assert [str(n) for n in s.slices] == ["10.76.0.0/18", "10.76.64.0/18", "10.76.128.0/18"]
    assert s.server_ips == {"10.76.0.1", "10.76.64.1", "10.76.128.1"}
    assert s.process_of("10.76.70.2") == 1
    conf = render_server_conf(s, **PEMS, index=2).splitlines()
    for line in ("port 1196", "dev tun2", "server 10.76.128.0 255.255.192.0", 'push "route 10.76.0.0 255.255.0.0"',
                 "client-config-dir /etc/openvpn/vpnagent/ccd-2", "management /run/vpnagent/management-2.sock unix"):
        assert line in conf, line
    assert "remote 127.0.0.1 1195" in render_client(s, **PEMS, index=1).splitlines()
    # one process: no pushed route, the classic names
    one = render_server_conf(VPNSettings(), **PEMS).splitlines()
    assert not any(line.startswith("push") for line in one) and "management /run/vpnagent/management.sock unix" in one
    with pytest.raises(ValueError, match="too small"):
        VPNSettings(subnet=ipaddress.IPv4Network("10.76.0.0/29"), processes=2)
    with pytest.raises(ValueError, match="within 1-16"):
        VPNSettings(processes=0)


def test_one_port_mode_shares_the_tcp_port_with_the_api():
    s = VPNSettings(proto="tcp", remote_port=443, port_share=("172.18.0.1", 5000))
    conf = render_server_conf(s, **PEMS).splitlines()
    assert "port-share 172.18.0.1 5000" in conf and "proto tcp-server" in conf and "tcp-nodelay" in conf
    with pytest.raises(ValueError, match="proto tcp"):
        VPNSettings(proto="udp", port_share=("172.18.0.1", 5000))
