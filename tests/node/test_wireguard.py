"""The WireGuard data plane's logic, without a kernel: the dump parser, the key file, the
per-peer direct/relay decision and endpoint rotation, the firewall's second tunnel
interface, the config keys, and what `status` prints. tests/integration/test_wireguard.py
runs the same code against real wireguard-go in containers."""
from __future__ import annotations

import base64
import os
import stat

import pytest

from vpnagent import firewall
from vpnagent.agent import direct_peers
from vpnagent.cli import _plane_lines
from vpnagent.config import ConfigError, parse_config
from vpnagent.dataplane.wireguard import (DIRECT, RELAY, DumpPeer, Peer, PeerLinks, load_or_create_key,
                                          parse_dump, peer_args)

K1, K2 = base64.b64encode(b"1" * 32).decode(), base64.b64encode(b"2" * 32).decode()
DUMP = (f"cHJpdmF0ZQ==\t{K1}\t51820\toff\n"
        f"{K2}\t(none)\t172.20.0.3:51820\t10.99.0.2/32\t1700000000\t1234\t5678\t25\n"
        f"{K1}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")


def test_parse_dump_reads_the_port_and_every_peer():
    port, peers = parse_dump(DUMP)
    assert port == 51820
    assert peers[K2] == DumpPeer(K2, "172.20.0.3:51820", ("10.99.0.2/32",), 1700000000, 1234, 5678)
    assert peers[K1] == DumpPeer(K1, None, (), 0, 0, 0)
    assert parse_dump("") == (None, {})
    assert parse_dump("garbage\nshort\tline\n") == (None, {})


def test_the_key_is_made_once_private_to_root_and_replaced_when_unreadable(tmp_path, caplog):
    path = tmp_path / "vpn" / "wg.key"
    public = load_or_create_key(path)
    assert len(base64.b64decode(public)) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == public  # the same key at every start
    path.write_text("not a key\n")
    assert load_or_create_key(path) != public
    assert "not a WireGuard private key" in caplog.text


def test_peer_args_remove_first_for_a_fresh_handshake():
    peer = Peer(2, "10.99.0.2", K2, ("172.20.0.3:51820",))
    assert peer_args(peer, "172.20.0.3:51820", fresh=False) == [
        "peer", K2, "allowed-ips", "10.99.0.2/32", "persistent-keepalive", "25", "endpoint", "172.20.0.3:51820"]
    fresh = peer_args(peer, None, fresh=True)
    assert fresh[:3] == ["peer", K2, "remove"] and "endpoint" not in fresh


def _links(tmp_path) -> PeerLinks:
    return PeerLinks(tmp_path, 51820, 1420, retry_s=5, live_s=60)


def test_a_peer_heard_from_after_a_handshake_is_direct(tmp_path):
    links, peer = _links(tmp_path), Peer(2, "10.99.0.2", K2, ("172.20.0.3:51820",))
    found = DumpPeer(K2, "172.20.0.3:51820", ("10.99.0.2/32",), 1000, 10, 10)
    path, args = links._peer_pass(peer, found, now=1010, mono=500)
    assert path.path == DIRECT and path.endpoint == "172.20.0.3:51820" and args == []
    # nothing received for longer than live_s: no longer direct, even with a recent handshake
    path, args = links._peer_pass(peer, found, now=1070, mono=561)
    assert path.path == RELAY and "not heard" in path.detail
    assert args[:3] == ["peer", K2, "remove"]  # a new handshake is started


def test_an_unreached_peer_gets_the_next_endpoint_every_retry(tmp_path):
    links = _links(tmp_path)
    peer = Peer(2, "10.99.0.2", K2, ("198.51.100.7:51820", "172.20.0.3:51820"))
    path, args = links._peer_pass(peer, None, now=1000, mono=100)
    assert path.path == RELAY and args[-1] == "198.51.100.7:51820" and "remove" not in args
    found = DumpPeer(K2, "198.51.100.7:51820", ("10.99.0.2/32",), 0, 0, 148)
    assert links._peer_pass(peer, found, now=1002, mono=102)[1] == []  # within retry_s: left alone
    path, args = links._peer_pass(peer, found, now=1005, mono=105)
    assert args[-1] == "172.20.0.3:51820" and args[2] == "remove"
    assert links._peer_pass(peer, found, now=1010, mono=110)[1][-1] == "198.51.100.7:51820"  # round robin
    assert "trying 2 endpoint(s)" in path.detail


def test_a_peer_with_other_allowed_ips_is_set_right_at_once(tmp_path):
    links, peer = _links(tmp_path), Peer(2, "10.99.0.2", K2, ("172.20.0.3:51820",))
    found = DumpPeer(K2, "172.20.0.3:51820", ("10.99.0.0/16",), 1000, 10, 10)  # wider than its VPN IP
    path, args = links._peer_pass(peer, found, now=1001, mono=500)
    assert path.path == RELAY and "10.99.0.2/32" in args


def test_direct_peers_come_from_every_family_once_and_only_with_a_key():
    families = {
        5: [{"run_id": 5, "node_id": 1, "ip": "10.99.0.1", "ports": [], "wireguard": None},
            {"run_id": 6, "node_id": 2, "ip": "10.99.0.2", "ports": [6000],
             "wireguard": {"public_key": K2, "endpoints": ["172.20.0.3:51820"]}}],
        7: [{"run_id": 8, "node_id": 2, "ip": "10.99.0.2", "ports": [6001],
             "wireguard": {"public_key": K2, "endpoints": ["172.20.0.3:51820"]}},
            {"run_id": 9, "node_id": 3, "ip": "10.99.0.3", "ports": []}],  # an older server: no field
    }
    assert direct_peers(families) == [Peer(2, "10.99.0.2", K2, ("172.20.0.3:51820",))]


def test_the_second_tunnel_interface_gets_the_rules_tun0_gets():
    run = firewall.RunRules(7, "172.30.0.5", (firewall.Forward(6000, 8888),), peer_ips=("10.99.0.2",),
                            destinations=(("10.99.0.2", 6001),))
    hub = firewall.VpnClientRules("10.99.0.1", "eth1", "172.30.0.0/24", runs=(run,), mss=1360)
    both = firewall.VpnClientRules("10.99.0.1", "eth1", "172.30.0.0/24", runs=(run,), mss=1360,
                                   p2p_if="wg0", p2p_mss=1380)
    empty = firewall.TableState()
    hub_text, both_text = firewall.render_vpn_client(hub, empty), firewall.render_vpn_client(both, empty)
    assert "wg0" not in hub_text
    for line in hub_text.splitlines():
        if "tun0" in line:
            assert line in both_text
            twin = line.replace("tun0", "wg0").replace("--set-mss 1360", "--set-mss 1380").replace(
                "--mss 1361:65535", "--mss 1381:65535")
            assert twin in both_text, twin
    # the per-run fast paths too
    assert "-i wg0" in firewall.render_run_added(both, run) and "-o wg0" in firewall.render_run_refreshed(both, run)
    with pytest.raises(ValueError):
        firewall.render_vpn_client(firewall.VpnClientRules("10.99.0.1", "eth1", "172.30.0.0/24", p2p_if="wg0 -j ACCEPT"),
                                   empty)


BASE = {"name": "n1", "server_url": "https://s/api", "api_key": "k", "data_dir": "/tmp/n1"}


def test_wireguard_config_keys_and_their_errors():
    cfg = parse_config({**BASE, "wireguard_port": 51999, "wireguard_endpoints": ["203.0.113.7:51820"],
                        "wireguard_mtu": 1380})
    assert (cfg.wireguard_port, cfg.wireguard_endpoints, cfg.wireguard_mtu) == (51999, ("203.0.113.7:51820",), 1380)
    assert parse_config(BASE).wireguard_port == 51820 and parse_config(BASE).wireguard_mtu == 1420
    for bad, says in [({"wireguard_port": 0}, "within 1-65535"), ({"wireguard_mtu": 1000}, "1280"),
                      ({"wireguard_endpoints": ["vpn.example.org:51820"]}, "is not IPv4:port"),
                      ({"wireguard_endpoints": ["203.0.113.7"]}, "is not IPv4:port"),
                      ({"wireguard_endpoints": [51820]}, "is not IPv4:port"),
                      ({"wireguard_endpoints": ["127.0.0.1:51820"]}, "a loopback address"),
                      ({"wireguard_endpoints": ["10.76.0.9:51820"]}, "inside the VPN subnet"),
                      ({"wireguard_endpoints": [f"203.0.113.{i}:1" for i in range(9)]}, "at most 8")]:
        with pytest.raises(ConfigError, match=says):
            parse_config({**BASE, **bad})


def test_status_says_which_peers_are_direct():
    assert _plane_lines({"plane": "openvpn"}) == ["data plane: OpenVPN hub (every peer through the server)"]
    assert "not up yet" in _plane_lines({"plane": "wireguard", "interface": None})[0]
    lines = _plane_lines({"plane": "wireguard", "interface": "wg0", "mode": "userspace", "listen_port": 51820,
                          "peers": [{"node_id": 2, "vpn_ip": "10.99.0.2", "path": "direct", "endpoint": "172.20.0.3:51820",
                                     "detail": "handshake 3 s ago"},
                                    {"node_id": 3, "vpn_ip": "10.99.0.3", "path": "relay", "endpoint": None,
                                     "detail": "no handshake yet"}]})
    assert "1 of 2 peer(s) direct" in lines[0] and "userspace" in lines[0]
    assert lines[1].strip() == "node 2 10.99.0.2: direct via 172.20.0.3:51820 (handshake 3 s ago)"
    assert lines[2].strip() == "node 3 10.99.0.3: relay (no handshake yet)"
