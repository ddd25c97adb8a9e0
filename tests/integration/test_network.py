"""End to end over a real OpenVPN network: configs issued by server_ext, real node agents,
real iptables in the VPN client namespaces, the echo algorithm across three nodes."""
import ipaddress
import json
import time

import docker
import pytest
from cryptography import x509

from server_ext.pki import cert_from_ovpn
from server_ext.store import Store
from test_algorithms.send_echo import format_matrix, send_echo
from tests.waiting import wait_equal, wait_for
from vpnagent import firewall
from vpnagent.netns import Netns
from vpnagent.serverapi import ServerAPI
from vpnagent.tls import make_session

from .util import wait_live, wait_task_done

pytestmark = pytest.mark.docker


def _vpn_client_state(client: docker.DockerClient, node_name: str) -> firewall.TableState:
    c = client.containers.get(f"vpnagent-{node_name}-vpn")
    return firewall.parse_save(Netns(int(c.attrs["State"]["Pid"])).iptables_save())


def test_nodes_get_distinct_server_allocated_vpn_ips(cluster):
    ips = [n.status()["vpn"]["vpn_ip"] for n in cluster.nodes]
    assert len(set(ips)) == 3
    subnet = ipaddress.IPv4Network(cluster.vpn_subnet)
    assert all(ipaddress.IPv4Address(ip) in subnet for ip in ips)
    store = Store(f"sqlite:///{cluster.workdir / 'server' / 'store.db'}")
    try:
        allocated = {n.name: store.get_node(n.node_id).vpn_ip for n in cluster.nodes}
    finally:
        store.close()
    assert {n.name: n.status()["vpn"]["vpn_ip"] for n in cluster.nodes} == allocated


def test_echo_task_all_pairs_ok_and_nothing_left_after(cluster, docker_client):
    result = send_echo(cluster.server_url, cluster.user_api_key, cluster.collaboration_id, verify=cluster.tls_verify,
                       timeout=180, progress=print)
    print(format_matrix(result))
    n = len(cluster.nodes)
    pairs = result["pairs"]
    # every peer reached every peer (itself included, through the VPN) and the central each peer
    assert len(pairs) == n * n + n, pairs
    assert all(p["ok"] for p in pairs), [p for p in pairs if not p["ok"]]
    assert result["ok"] is True

    # the runs are over: their DNAT rules, chains, holders and port records are gone
    from .util import ZERO, leftovers
    wait_equal(lambda: leftovers(cluster, docker_client), ZERO, "every run's leftovers to be gone", 30, 0.2)
    wait_for(lambda: [n.status()["runs"] for n in cluster.nodes], "no live runs in any node's status",
             until=lambda runs: not any(runs))


def _raw_client(client: docker.DockerClient, cluster, ovpn: str, tmp_path, name: str):
    d = tmp_path / name
    d.mkdir()
    (d / "client.ovpn").write_text(ovpn)
    return client.containers.run(
        "vpnagent/vpn:latest", ["openvpn", "--config", "/vpn/client.ovpn"], detach=True,
        name=f"{cluster.prefix}-{name}", cap_add=["NET_ADMIN"], devices=["/dev/net/tun:/dev/net/tun"],
        volumes={str(d): {"bind": "/vpn", "mode": "ro"}}, network=cluster.wan_network,
        labels={"vpnagent.node": f"{cluster.prefix}-test"})


def _tun_ip(container) -> str | None:
    container.reload()
    addrs = Netns(int(container.attrs["State"]["Pid"])).ipv4_addresses("tun0").get("tun0")
    return str(addrs[0].ip) if addrs else None


def _wait_tun_ip(container, timeout: float) -> str:
    return wait_for(lambda: _tun_ip(container), f"tun0 of {container.name} to get an address", timeout, 0.05)


def _server_log(docker_client, cluster, since: float) -> str:
    c = docker_client.containers.get(cluster.openvpn_container)
    return c.logs(since=int(since)).decode(errors="replace")


def test_vpn_update_revokes_the_old_certificate(cluster, docker_client, tmp_path):
    store = Store(f"sqlite:///{cluster.workdir / 'server' / 'store.db'}")
    try:
        org = store.create_organization(f"{cluster.prefix}-extra")
        collab = store.create_collaboration(f"{cluster.prefix}-extra", [org.id])
        node, key = store.create_node(org.id, collab.id, f"{cluster.prefix}x")
    finally:
        store.close()
    api = ServerAPI(cluster.server_url, key, session=make_session(cluster.tls_verify))
    old = api.get_vpn_config()
    old_serial = str(x509.load_pem_x509_certificate(cert_from_ovpn(old).encode()).serial_number)
    containers = []
    try:
        c = _raw_client(docker_client, cluster, old, tmp_path, "old1")
        containers.append(c)
        first_ip = _wait_tun_ip(c, 30)
        _remove(c)

        new = api.renew_vpn_config(old)
        assert new != old
        t0 = time.time() - 1
        c = _raw_client(docker_client, cluster, old, tmp_path, "old2")
        containers.append(c)
        # the server turns the old certificate away: wait for it to say so, then look at tun0
        wait_for(lambda: _server_log(docker_client, cluster, t0), "the OpenVPN server to refuse the revoked certificate",
                 30, 0.2, until=lambda text: "certificate revoked" in text and f"serial={old_serial}" in text)
        assert _tun_ip(c) is None, "a revoked certificate still connects"
        c = _raw_client(docker_client, cluster, new, tmp_path, "new")
        containers.append(c)
        assert _wait_tun_ip(c, 30) == first_ip  # same server-allocated IP
    finally:
        for c in containers:
            _remove(c)


def _remove(container) -> None:
    """Stop first: openvpn tells the server it leaves (explicit-exit-notify), so the server
    does not count a session that is gone until its keepalive runs out."""
    try:
        container.stop(timeout=5)
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


def _user_session(cluster):
    return cluster.user_session()


def test_live_run_has_dnat_and_ports_which_go_when_it_ends(cluster, docker_client):
    """A run that lives a few seconds: while it runs its chain, DNAT rule and port record
    exist; after it ends (waiting in vain for peers that never come) all are gone."""
    node = cluster.nodes[1]
    http = _user_session(cluster)
    task = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": cluster.collaboration_id, "organizations": [node.organization_id],
        "image": "vpnagent/echo:latest", "input": {"method": "peer", "kwargs": {"timeout": 6, "n_peers": 5}}}).json()
    run_id = task["runs"][0]["id"]
    live = [wait_live(node, run_id)]
    vpn_port = live[0]["ports"][0]["vpn_port"]
    state = _vpn_client_state(docker_client, node.name)
    assert f"VA-{run_id}-N" in state.run_chains("nat")
    vpn_ip = node.status()["vpn"]["vpn_ip"]
    assert any(f"--dport {vpn_port} -j DNAT" in r and r.startswith(f"-A VA-{run_id}-N -d {vpn_ip}/32")
               for r in state.rules["nat"])
    store = Store(f"sqlite:///{cluster.workdir / 'server' / 'store.db'}")
    try:
        assert store.count_ports() >= 1
        t = wait_task_done(cluster, http, task["id"], timeout=60)
        # the peers it waited for never came: the result says so instead of pretending
        assert t["runs"][0]["result"]["errors"], t["runs"][0]["result"]
        wait_equal(store.count_ports, 0, "the run's port records to be deleted at the server")
    finally:
        store.close()
    state = wait_for(lambda: _vpn_client_state(docker_client, node.name), f"run {run_id}'s chains to be removed",
                     until=lambda st: not ({f"VA-{run_id}-N"} & st.run_chains("nat")
                                           or {f"VA-{run_id}-F"} & st.run_chains("filter")))
    assert not [r for r in state.rules["nat"] if r.startswith("-A VA-")]
    assert not docker_client.containers.list(all=True, filters={"label": f"vpnagent.run={run_id}"})
    assert json.loads((node.data_dir / "ports.json").read_text() or "{}") == {}


def test_status_command_shows_vpn_and_live_runs(cluster, docker_client):
    import subprocess
    import sys

    from .util import long_peer, user_session

    node = cluster.nodes[0]
    http = user_session(cluster)
    task = long_peer(cluster, http, node, seconds=30)
    run_id = task["runs"][0]["id"]
    live = wait_live(node, run_id)
    try:
        cmd = [sys.executable, "-m", "vpnagent.cli", "status", "--config", str(node.config_path)]
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        assert f"VPN connected  ip {node.status()['vpn']['vpn_ip']}" in text
        assert "1 live run(s)" in text and f"{live['ports'][0]['vpn_port']}->8888 echo" in text
        data = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=30).stdout)
        assert data["vpn"]["connected"] is True and [r["run_id"] for r in data["runs"]] == [run_id]
        assert data["runs"][0]["wired_ms"] > 0
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": f"vpnagent.run={run_id}"}):
            if c.labels.get("vpnagent.role") == "algorithm":
                c.kill()
        wait_task_done(cluster, http, task["id"])


def test_no_secret_reaches_a_log(cluster):
    """After everything above (echo task, runs, renewals), no private key, API key or token
    appears in the logs of the server or of any agent."""
    secrets = [n.api_key for n in cluster.nodes + cluster.extra_nodes] + [cluster.user_api_key]
    logs = sorted((cluster.workdir / "logs").glob("*.log"))
    assert len(logs) >= 4
    for path in logs:
        text = path.read_text(errors="replace")
        assert "PRIVATE KEY" not in text, path
        assert "OpenVPN Static key" not in text, path
        assert "eyJ" not in text, f"a JWT in {path}"  # every JWT starts with base64 of '{"'
        for secret in secrets:
            assert secret not in text, f"an API key in {path}"
