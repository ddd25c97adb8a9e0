"""Several OpenVPN server processes: nodes spread over them by address, and algorithms on
nodes served by different processes still reach each other (the server container's
kernel routes between the processes' tun devices). Removing a node disconnects it on
whichever process holds its session."""
import ipaddress
import uuid

import pytest

from server_ext.vpnserver import Management
from test_algorithms.cluster import LocalCluster
from test_algorithms.send_echo import format_matrix, send_echo

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def mp_cluster(docker_client, images, tmp_path_factory):
    c = LocalCluster(workdir=tmp_path_factory.mktemp("multiproc"), prefix=f"vmp{uuid.uuid4().hex[:3]}", n_nodes=3,
                     vpn_subnet="10.81.0.0/16", server_extra={"openvpn_processes": 2},
                     progress=lambda m: print(f"[multi-process] {m}"))
    try:
        yield c.up()
    finally:
        c.down()


def test_nodes_on_two_processes_reach_each_other(mp_cluster, docker_client):
    c = mp_cluster
    halves = list(ipaddress.IPv4Network(c.vpn_subnet).subnets(1))
    ips = [ipaddress.IPv4Address(n.status()["vpn"]["vpn_ip"]) for n in c.nodes]
    assert {next(i for i, h in enumerate(halves) if ip in h) for ip in ips} == {0, 1}, ips
    top = docker_client.containers.get(c.openvpn_container).top(ps_args="-eo pid,args")["Processes"]
    assert sum(p[-1].startswith("openvpn --config") for p in top) == 2, top
    sockets = [c.workdir / "server" / "openvpn-run" / name for name in ("management.sock", "management-1.sock")]
    assert Management(sockets).connected() == {f"node-{n.node_id}" for n in c.nodes}

    result = send_echo(c.server_url, c.user_api_key, c.collaboration_id, verify=c.tls_verify, timeout=180,
                       progress=print)
    print(format_matrix(result))
    assert result["ok"] is True and len(result["pairs"]) == 3 * 3 + 3
