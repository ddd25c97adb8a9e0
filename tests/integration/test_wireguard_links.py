"""The direct WireGuard links (vpnagent/dataplane/wireguard.py) against real wireguard-go:
three containers of the VPN client image on an internal network of the test's own, each
with wg0 made and kept by PeerLinks as the agent does it, with no server and no OpenVPN.

- pairs that reach each other go direct within seconds, and packets cross wg0;
- a pair whose UDP is dropped (a firewall between them) stays on the relay, while the
  other pairs in the same mesh are direct (the positive control); it goes direct once
  the firewall lets it through;
- a peer the server no longer lists is removed with its route: nothing reaches it;
- as an attacker: a peer sending with another peer's VPN IP as source is dropped by
  WireGuard (allowed-ips), while its own address gets through beside it; with the rule
  weakened (the other peer's address allowed from that peer too) the same attack gets through, so the
  test can fail."""
from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.waiting import wait_for
from vpnagent.dataplane.wireguard import DIRECT, RELAY, WG_IF, Peer, PeerLinks
from vpnagent.image_recipes import VPN_IMAGE
from vpnagent.netns import Netns

pytestmark = pytest.mark.docker

VPN_IPS = ["10.98.0.1", "10.98.0.2", "10.98.0.3"]


class Mesh:
    def __init__(self, client, n: int = 3) -> None:
        self.client, self.prefix = client, f"wgl{uuid.uuid4().hex[:6]}"
        self.net = client.networks.create(f"{self.prefix}-net", internal=True, labels={"vpnagent.test": self.prefix})
        self.containers, self.links, self.ips = [], [], []
        for i in range(n):
            key_dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-{i}-"))
            c = client.containers.run(VPN_IMAGE, ["sleep", "600"], name=f"{self.prefix}-{i}", detach=True,
                                      cap_add=["NET_ADMIN"], devices=["/dev/net/tun"], network=self.net.name,
                                      volumes={str(key_dir): {"bind": "/vpn", "mode": "ro"}},
                                      labels={"vpnagent.test": self.prefix})
            c.reload()
            self.containers.append(c)
            self.ips.append(c.attrs["NetworkSettings"]["Networks"][self.net.name]["IPAddress"])
            links = PeerLinks(key_dir, 51820, 1420, keepalive_s=1, live_s=3, retry_s=1)
            links.up(c.attrs["State"]["Pid"], VPN_IPS[i])
            self.links.append(links)

    def peer(self, i: int) -> Peer:
        return Peer(i + 1, VPN_IPS[i], self.links[i].public_key(), (f"{self.ips[i]}:51820",))

    def ns(self, i: int) -> Netns:
        return Netns(self.containers[i].attrs["State"]["Pid"])

    def full_mesh(self) -> None:
        for i, links in enumerate(self.links):
            links.set_peers([self.peer(j) for j in range(len(self.links)) if j != i])

    def path(self, i: int, j: int) -> str | None:
        self.links[i].refresh()
        return next((p.path for p in self.links[i].paths if p.vpn_ip == VPN_IPS[j]), None)

    def wait_path(self, i: int, j: int, want: str, timeout: float = 20) -> None:
        wait_for(lambda: self.path(i, j), f"node {i + 1} -> node {j + 1} to be {want}", timeout, 0.2,
                 until=lambda p: p == want)

    def routed(self, i: int) -> set[str]:
        out = self.ns(i).run(["ip", "-4", "route", "show", "dev", WG_IF], check=False).stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def close(self) -> None:
        for c in self.containers:
            c.remove(force=True)
        self.net.remove()


@pytest.fixture
def mesh(docker_client, images):
    m = Mesh(docker_client)
    try:
        yield m
    finally:
        m.close()


def test_pairs_go_direct_and_a_blocked_pair_stays_on_the_relay(mesh):
    # node 3 drops every UDP packet from and to node 1's address: a firewall between them
    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
        mesh.ns(2).run(["iptables", "-I", chain, flag, mesh.ips[0], "-p", "udp", "-j", "DROP"])
    mesh.full_mesh()
    mesh.wait_path(0, 1, DIRECT)  # the positive control: the same code, an open path
    mesh.wait_path(1, 2, DIRECT)
    ping = mesh.ns(0).run(["ping", "-c", "2", "-W", "2", "-n", VPN_IPS[1]], check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    time.sleep(3)  # several retries with fresh handshakes
    assert mesh.path(0, 2) == RELAY and mesh.path(2, 0) == RELAY
    assert VPN_IPS[2] not in mesh.routed(0) and VPN_IPS[1] in mesh.routed(0)
    # the firewall opens: the pair finds its direct path at the next retry
    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
        mesh.ns(2).run(["iptables", "-D", chain, flag, mesh.ips[0], "-p", "udp", "-j", "DROP"])
    mesh.wait_path(0, 2, DIRECT)
    mesh.wait_path(2, 0, DIRECT)


def test_a_direct_pair_that_loses_its_path_falls_back_to_the_relay(mesh):
    mesh.full_mesh()
    mesh.wait_path(0, 1, DIRECT)
    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
        mesh.ns(1).run(["iptables", "-I", chain, flag, mesh.ips[0], "-p", "udp", "-j", "DROP"])
    mesh.wait_path(0, 1, RELAY, timeout=15)  # live_s without a keepalive heard
    assert VPN_IPS[1] not in mesh.routed(0)


def test_a_peer_no_longer_listed_is_cut(mesh):
    mesh.full_mesh()
    mesh.wait_path(0, 2, DIRECT)
    mesh.wait_path(2, 0, DIRECT)
    mesh.links[0].set_peers([mesh.peer(1)])  # the server dropped node 3 (removed, or no shared task)
    assert VPN_IPS[2] not in mesh.routed(0)
    dump = mesh.ns(0).run(["wg", "show", WG_IF, "peers"], mount=True).stdout
    assert mesh.links[2].public_key() not in dump and mesh.links[1].public_key() in dump
    # node 3 still lists node 1 and sends straight to it: node 1 no longer accepts it
    ping = mesh.ns(2).run(["ping", "-c", "2", "-W", "1", "-n", VPN_IPS[0]], check=False)
    assert ping.returncode != 0, ping.stdout


@pytest.mark.parametrize("weakened", [False, True], ids=["rule", "weakened"])
def test_a_peer_cannot_send_with_another_peers_address(mesh, weakened):
    mesh.full_mesh()
    mesh.wait_path(0, 1, DIRECT)
    mesh.wait_path(1, 0, DIRECT)
    victim = mesh.ns(0)
    if weakened:  # the victim accepts node 3's address from node 2 too: the attack must then show
        victim.run(["wg", "set", WG_IF, "peer", mesh.links[1].public_key(), "allowed-ips",
                    f"{VPN_IPS[1]}/32,{VPN_IPS[2]}/32"], mount=True)
    for src in (VPN_IPS[1], VPN_IPS[2]):  # node 2's own address (control), node 3's (spoofed)
        victim.run(["iptables", "-I", "INPUT", "-i", WG_IF, "-s", src, "-p", "icmp", "-j", "ACCEPT"])
    attacker = mesh.ns(1)
    attacker.run(["ip", "addr", "add", f"{VPN_IPS[2]}/32", "dev", WG_IF])
    for src in (VPN_IPS[1], VPN_IPS[2]):
        attacker.run(["ping", "-c", "3", "-W", "1", "-n", "-I", src, VPN_IPS[0]], check=False)
    save = victim.run(["iptables-save", "-c", "-t", "filter"]).stdout
    counts = {src: int(next(line for line in save.splitlines() if f"-s {src}/32" in line).split("]")[0]
                       .strip("[").split(":")[0]) for src in (VPN_IPS[1], VPN_IPS[2])}
    assert counts[VPN_IPS[1]] >= 3, save  # the control: the peer's own address arrives
    if weakened:
        assert counts[VPN_IPS[2]] >= 3, save
    else:
        assert counts[VPN_IPS[2]] == 0, save  # another peer's address never does
