"""One-port mode: the API and OpenVPN (TCP) share port 443 of the OpenVPN server, and a
node needs nothing but outgoing TCP to it. Firewall rules put in place before any agent
starts drop every other packet between the nodes and the server: the VPN clients' traffic
on the wan bridge (DOCKER-USER: only new TCP to the server's 443 passes) and the host's
own (OUTPUT: only TCP to the server's 443; the API's real port is dropped). Then the
echo task across three nodes must pass, and probes show the rules really bite.

On this one machine the host plays both the nodes' host (agents) and the server's host
(the API behind port-share); the rules are written so that only the server's side of
that (the OpenVPN container reaching the API) is let through."""
import socket
import subprocess
import sys
import uuid

import docker
import pytest

from test_algorithms.cluster import LocalCluster
from test_algorithms.send_echo import format_matrix, send_echo
from tests.waiting import wait_for

from .util import vpn_container

pytestmark = pytest.mark.docker
CHAIN = f"VA-TEST-1P-{uuid.uuid4().hex[:4]}"


def ipt(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True, text=True)


def bridge_of(client: docker.DockerClient, network: str) -> str:
    net = client.networks.get(network)
    return net.attrs["Options"].get("com.docker.network.bridge.name") or f"br-{net.id[:12]}"


def install_firewall(bridge: str, server_ip: str, api_port: int) -> None:
    ipt("-N", CHAIN)
    for rule in (
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
        ["-d", server_ip, "-p", "tcp", "--dport", "443", "-j", "RETURN"],  # the one port
        ["-s", server_ip, "-p", "tcp", "--dport", str(api_port), "-j", "RETURN"],  # port-share -> API (server side)
        ["-j", "DROP"],
    ):
        ipt("-A", CHAIN, *rule)
    ipt("-I", "DOCKER-USER", "1", "-i", bridge, "-o", bridge, "-j", CHAIN)  # VPN clients <-> server, bridged
    ipt("-I", "INPUT", "1", "-i", bridge, "-j", CHAIN)  # containers -> host: only the server's port-share
    ipt("-I", "OUTPUT", "1", "-o", bridge, "-j", CHAIN)  # host (agents) -> wan: only 443
    ipt("-I", "OUTPUT", "1", "-o", "lo", "-p", "tcp", "--dport", str(api_port), "-j", "DROP")  # API port itself


def remove_firewall(bridge: str, api_port: int) -> None:
    for args in (["DOCKER-USER", "-i", bridge, "-o", bridge, "-j", CHAIN], ["INPUT", "-i", bridge, "-j", CHAIN],
                 ["OUTPUT", "-o", bridge, "-j", CHAIN], ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(api_port),
                                                          "-j", "DROP"]):
        subprocess.run(["iptables", "-w", "-D", *args], capture_output=True)
    subprocess.run(["iptables", "-w", "-F", CHAIN], capture_output=True)
    subprocess.run(["iptables", "-w", "-X", CHAIN], capture_output=True)


def tcp_connect(ip: str, port: int, timeout: float = 2.0) -> str:
    try:
        socket.create_connection((ip, port), timeout=timeout).close()
        return "connected"
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return f"error {exc.strerror or exc}"


PROBE = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
         "    print('connected')\nexcept TimeoutError:\n    print('timed out')\nexcept OSError as e:\n"
         "    print('error', e.strerror)\n")


def probe_from(client: docker.DockerClient, node_name: str, ip: str, port: int) -> str:
    pid = int(vpn_container(client, node_name).attrs["State"]["Pid"])
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", PROBE, ip, str(port)],
                          capture_output=True, text=True, timeout=20).stdout.strip()


@pytest.fixture(scope="module")
def one_port_cluster(docker_client, images, tmp_path_factory):
    c = LocalCluster(workdir=tmp_path_factory.mktemp("oneport"), prefix=f"vop{uuid.uuid4().hex[:3]}", n_nodes=3,
                     vpn_subnet="10.78.0.0/16", one_port=True, progress=lambda m: print(f"[one-port] {m}"))
    bridge = None
    try:
        c.up(start=[])  # the server only: the firewall goes in before any node connects
        bridge = bridge_of(docker_client, c.wan_network)
        install_firewall(bridge, c.openvpn_ip(), c.api_port)
        for node in c.nodes:
            c.start_node(node)
        c.wait_connected()
        yield c
    finally:
        if bridge:
            remove_firewall(bridge, c.api_port)
        c.down()


def test_one_port_nodes_connect_and_echo_passes(one_port_cluster, docker_client):
    c = one_port_cluster
    assert c.server_url == f"https://{c.openvpn_ip()}:443/api"
    for node in c.nodes:  # the event stream goes through port-share too
        wait_for(node.status, f"{node.name}'s event stream to open", 30, 0.1,
                 until=lambda s: s and s["push"]["state"] == "connected")
    result = send_echo(c.server_url, c.user_api_key, c.collaboration_id, verify=c.tls_verify, timeout=180,
                       progress=print)
    print(format_matrix(result))
    assert result["ok"] is True and len(result["pairs"]) == 3 * 3 + 3
    for node in c.nodes:
        conf = (node.data_dir / "vpn" / "client.ovpn").read_text().splitlines()
        assert "proto tcp-client" in conf and f"remote {c.openvpn_container} 443" in conf


def test_one_port_firewall_really_bites(one_port_cluster, docker_client):
    """Positive and negative controls: what the nodes use passes, everything else is dropped."""
    c = one_port_cluster
    server_ip = c.openvpn_ip()
    gateway = docker_client.networks.get(c.wan_network).attrs["IPAM"]["Config"][0]["Gateway"]
    node = c.nodes[0].name
    assert probe_from(docker_client, node, server_ip, 443) == "connected"
    # another port on the server: without the rules the kernel would refuse at once; dropped, it times out
    assert probe_from(docker_client, node, server_ip, 1194) == "timed out"
    # the API's own port, from a VPN client and from the host: dropped
    assert probe_from(docker_client, node, gateway, c.api_port) == "timed out"
    assert tcp_connect(gateway, c.api_port) == "timed out"
    assert tcp_connect(server_ip, 443) == "connected"
