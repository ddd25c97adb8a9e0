"""The WireGuard data plane end to end (issue 18), on a cluster of its own whose server puts
the collaboration on it (`data_plane: wireguard`): three nodes, where node 3's VPN client
drops all UDP to and from the other nodes' clients (an egress firewall; its OpenVPN
session to the server is untouched), so node 3 can reach no one directly.

- the echo task across the three nodes passes: nodes 1 and 2 talk direct, node 3 through
  the OpenVPN hub, and every node's status says which;
- direct traffic really crosses wg0 (its counters grow), relayed traffic does not; the
  doctor tells direct from relayed peers;
- the plane is one server setting: a collaboration moved to the hub and back makes its
  nodes remove wg0 and its rules, and make them again, within seconds;
- the hostile algorithm escapes nowhere on this plane either (test_hostile's test, run
  here against this cluster);
- a node removed at the server drops out of its peers' WireGuard config within seconds,
  and no packet of it reaches them any more."""
from __future__ import annotations

import os
import time
import uuid

import pytest
import requests

from test_algorithms.cluster import LocalCluster
from test_algorithms.send_echo import format_matrix, send_echo
from tests.waiting import wait_for
from vpnagent.dataplane import read_counters
from vpnagent.dataplane.wireguard import WG_IF
from vpnagent.netns import Netns

from . import test_hostile
from .test_hostile import hostile_image  # noqa: F401 - the fixture, for the hostile test below
from .test_doctor import run_doctor
from .util import create_task, kill_run, store_of, user_session, vpn_container, wait_live, wait_task_done

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def wg_cluster(docker_client, images, tmp_path_factory):
    prefix = f"vaw{uuid.uuid4().hex[:4]}"
    c = LocalCluster(workdir=tmp_path_factory.mktemp("wgcluster"), prefix=prefix, n_nodes=3,
                     vpn_subnet="10.81.0.0/16", server_extra={"data_plane": "wireguard"},
                     progress=lambda m: print(f"[wg cluster] {m}"))
    try:
        c.up()
        _firewall_node3(docker_client, c)
        yield c
    finally:
        if os.environ.get("VPNAGENT_KEEP_CLUSTER") != "1":
            c.down()


def _outside_ip(docker_client, cluster, node) -> str:
    c = vpn_container(docker_client, node.name)
    return c.attrs["NetworkSettings"]["Networks"][cluster.wan_network]["IPAddress"]


def _pid(docker_client, node) -> int:
    return int(vpn_container(docker_client, node.name).attrs["State"]["Pid"])


def _firewall_node3(docker_client, cluster) -> None:
    ns = Netns(_pid(docker_client, cluster.nodes[2]))
    for other in cluster.nodes[:2]:
        ip = _outside_ip(docker_client, cluster, other)
        ns.run(["iptables", "-I", "OUTPUT", "-d", ip, "-p", "udp", "-j", "DROP"])
        ns.run(["iptables", "-I", "INPUT", "-s", ip, "-p", "udp", "-j", "DROP"])


def _paths(node) -> dict[str, str]:
    plane = (node.status() or {}).get("data_plane") or {}
    return {p["vpn_ip"]: p["path"] for p in plane.get("peers") or []}


def _wg_peers(docker_client, node) -> str:
    return Netns(_pid(docker_client, node)).run(["wg", "show", WG_IF, "peers"], check=False, mount=True).stdout


@pytest.fixture
def live_everywhere(wg_cluster, docker_client):
    """A long echo run on every node, in one task family: every pair of nodes are peers."""
    http = user_session(wg_cluster)
    task = create_task(wg_cluster, http, [n.organization_id for n in wg_cluster.nodes],
                       {"method": "peer", "kwargs": {"timeout": 120, "n_peers": 50}})
    runs = {r["organization_id"]: r["id"] for r in task["runs"]}
    try:
        yield {n.name: wait_live(n, runs[n.organization_id]) for n in wg_cluster.nodes}
    finally:
        for r in task["runs"]:
            kill_run(docker_client, r["id"])
        wait_task_done(wg_cluster, http, task["id"], timeout=60)


def test_echo_across_three_nodes_direct_where_it_can_and_relayed_where_it_cannot(wg_cluster, docker_client,
                                                                                   live_everywhere):
    n1, n2, n3 = wg_cluster.nodes
    ip = {n.name: n.status()["vpn"]["vpn_ip"] for n in wg_cluster.nodes}
    wait_for(lambda: (_paths(n1), _paths(n2), _paths(n3)), "nodes 1 and 2 direct, node 3 relayed", 30, 0.2,
             until=lambda p: p[0] == {ip[n2.name]: "direct", ip[n3.name]: "relay"}
             and p[1] == {ip[n1.name]: "direct", ip[n3.name]: "relay"}
             and p[2] == {ip[n1.name]: "relay", ip[n2.name]: "relay"})
    before = read_counters(_pid(docker_client, n1), WG_IF)
    result = send_echo(wg_cluster.server_url, wg_cluster.user_api_key, wg_cluster.collaboration_id,
                       verify=wg_cluster.tls_verify, timeout=180, progress=print, payload_size=200_000)
    print(format_matrix(result))
    assert result["ok"] is True and all(p["ok"] for p in result["pairs"]), result["pairs"]
    assert len(result["pairs"]) == 3 * 3 + 3
    after = read_counters(_pid(docker_client, n1), WG_IF)
    # node 1's 200 kB to node 2 (and the echo back) went through wg0, not only keepalives
    assert after.tx_bytes - before.tx_bytes > 200_000 and after.rx_bytes - before.rx_bytes > 200_000, (before, after)
    # node 3 sent nothing direct: all of its traffic took the hub
    assert read_counters(_pid(docker_client, n3), WG_IF).rx_bytes == 0
    metrics = requests.get(f"http://127.0.0.1:{n1.metrics_port}/metrics", timeout=5).text
    assert 'vpnagent_agent_peers{path="direct"} 1.0' in metrics and 'vpnagent_agent_peers{path="relay"} 1.0' in metrics
    plane = n1.status()["data_plane"]
    assert plane["plane"] == "wireguard" and plane["mode"] in ("kernel", "userspace")
    # the doctor says the same from outside the agent: node 1 has a live direct session with
    # node 2 and warns about node 3 (relayed), naming the fix; node 3 warns about both
    _, checks = run_doctor(n1.config_path)
    assert checks["peer paths"]["status"] == "warn", checks["peer paths"]
    assert "1 of 2 peer(s) with a live direct session" in checks["peer paths"]["detail"]
    assert ip[n3.name] in checks["peer paths"]["detail"] and "wireguard_port" in checks["peer paths"]["fix"]
    _, checks = run_doctor(n3.config_path)
    assert "0 of 2 peer(s)" in checks["peer paths"]["detail"], checks["peer paths"]


def _wg_rules(docker_client, node) -> list[str]:
    save = Netns(_pid(docker_client, node)).iptables_save()
    return [line for line in save.splitlines() if "wg0" in line]


def test_the_plane_is_one_server_setting_and_nodes_follow_it_at_once(wg_cluster, docker_client):
    """set-data-plane's store call moves the collaboration to the hub: every node removes wg0
    and its rules within seconds, and back on WireGuard makes them again (no run needed)."""
    n1 = wg_cluster.nodes[0]
    wait_for(lambda: _wg_rules(docker_client, n1), "node 1's wg0 rules", 20, 0.2)
    store = store_of(wg_cluster)
    try:
        store.set_data_plane(wg_cluster.collaboration_id, "openvpn")
        for n in wg_cluster.nodes:
            wait_for(lambda n=n: (n.status()["data_plane"], _wg_rules(docker_client, n)),
                     f"{n.name} on the hub only", 15, 0.2,
                     until=lambda got: got[0]["plane"] == "openvpn" and not got[0]["interface"] and not got[1])
        assert Netns(_pid(docker_client, n1)).link_mtu(WG_IF) is None
    finally:
        store.set_data_plane(wg_cluster.collaboration_id, None)  # back to the server's data_plane: wireguard
        store.close()
    for n in wg_cluster.nodes:
        wait_for(lambda n=n: n.status()["data_plane"], f"{n.name} on WireGuard again", 15, 0.2,
                 until=lambda plane: plane["plane"] == "wireguard" and plane["interface"] == WG_IF)
    assert _wg_rules(docker_client, n1)


def test_hostile_algorithm_escapes_nowhere_on_the_wireguard_plane(wg_cluster, docker_client, hostile_image,  # noqa: F811
                                                                   host_listener):
    test_hostile.test_hostile_algorithm_escapes_nowhere_and_its_controls_pass(wg_cluster, docker_client,
                                                                               hostile_image, host_listener)


def _pings_arriving(docker_client, sender, receiver, ip: str) -> int:
    """Packets of three pings from `sender`'s wg0 that `receiver`'s wg0 decrypted (its
    counters count them before its firewall drops the ping itself)."""
    before = read_counters(_pid(docker_client, receiver), WG_IF).rx_packets
    Netns(_pid(docker_client, sender)).run(["ping", "-c", "3", "-i", "0.2", "-W", "1", "-n", "-I", WG_IF, ip],
                                           check=False)
    return read_counters(_pid(docker_client, receiver), WG_IF).rx_packets - before


def test_a_removed_node_is_cut_from_its_peers_within_seconds(wg_cluster, docker_client, live_everywhere):
    n1, n2, _ = wg_cluster.nodes
    ip1, ip2 = n1.status()["vpn"]["vpn_ip"], n2.status()["vpn"]["vpn_ip"]
    wait_for(lambda: _paths(n1).get(ip2), "node 1 -> node 2 direct", 30, 0.2, until=lambda p: p == "direct")
    own2 = Netns(_pid(docker_client, n2)).run(["wg", "show", WG_IF, "public-key"], mount=True).stdout.strip()
    assert own2 in _wg_peers(docker_client, n1)
    assert _pings_arriving(docker_client, n2, n1, ip1) >= 3  # the control: node 2's packets arrive now
    store = store_of(wg_cluster)
    try:
        t0 = time.monotonic()
        store.remove_node(n2.node_id)
    finally:
        store.close()
    wait_for(lambda: _wg_peers(docker_client, n1), "node 2's key to leave node 1's WireGuard", 10, 0.1,
             until=lambda peers: own2 not in peers)
    print(f"node 2 cut from node 1's WireGuard {time.monotonic() - t0:.2f} s after its removal")
    # node 2's client still lists node 1 and sends to it: none of it is taken any more
    assert _pings_arriving(docker_client, n2, n1, ip1) == 0
