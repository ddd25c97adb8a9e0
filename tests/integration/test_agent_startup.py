"""The agent's start-up path against the real server and OpenVPN server: config on disk →
POST /vpn/update → GET /vpn → run without VPN, each step seen in the agent's log."""
import docker
import pytest
import yaml

from server_ext.store import Certificate, Store
from tests.waiting import wait_for

from .util import reachable_run

pytestmark = pytest.mark.docker


def _log(node) -> str:
    return node.log_path.read_text(errors="replace")


def _certs(cluster, node_id: int) -> int:
    from sqlalchemy import func, select

    store = Store(f"sqlite:///{cluster.workdir / 'server' / 'store.db'}")
    try:
        with store.session() as s:
            return s.scalar(select(func.count(Certificate.id)).where(Certificate.node_id == node_id))
    finally:
        store.close()


@pytest.fixture
def extra_node(cluster):
    node = cluster.add_node(f"{cluster.prefix}s", vpn_connect_timeout=8)
    yield node
    cluster.stop_node(node)


def test_startup_path_garbage_then_reuse_then_revoked(cluster, extra_node):
    node = extra_node
    vpn_dir = node.data_dir / "vpn"
    vpn_dir.mkdir(parents=True, exist_ok=True)
    (vpn_dir / "client.ovpn").write_text("this is not an OpenVPN config\n")

    # 1. garbage on disk: renew is refused (400), a fresh config is fetched
    cluster.start_node(node)
    cluster.wait_connected(60, nodes=[node])
    log = _log(node)
    assert "config on disk did not work" in log and "renewed config (POST /vpn/update) did not work" in log
    assert "starting client with the fresh config (GET /vpn)" in log
    first_ip = node.status()["vpn"]["vpn_ip"]
    assert _certs(cluster, node.node_id) == 1
    assert oct((vpn_dir / "client.ovpn").stat().st_mode & 0o777) == "0o600"

    # 2. a valid config on disk is reused: no new certificate, same VPN IP
    cluster.stop_node(node)  # and `vpnagent cleanup`: no status may claim the VPN client it removed
    assert node.status() is None
    before = len(_log(node))
    cluster.start_node(node)
    cluster.wait_connected(60, nodes=[node])
    assert "starting client with the config on disk" in _log(node)[before:]
    assert _certs(cluster, node.node_id) == 1
    assert node.status()["vpn"]["vpn_ip"] == first_ip

    # 3. the certificate on disk was revoked meanwhile: it cannot connect, renewing it is
    #    refused, and the node fetches a fresh one and keeps its IP
    cluster.stop_node(node)
    cluster.node_api(node).renew_vpn_config((vpn_dir / "client.ovpn").read_text())
    before = len(_log(node))
    cluster.start_node(node)
    cluster.wait_connected(90, nodes=[node])
    log = _log(node)[before:]
    assert "config on disk did not work" in log
    assert "revoked" in log
    assert "starting client with the fresh config (GET /vpn)" in log
    assert node.status()["vpn"]["vpn_ip"] == first_ip


def test_a_config_from_before_tls_crypt_v2_is_replaced_at_start(cluster):
    """Migration: a node whose config on disk has the old shared tls-crypt key and no pinned
    server name (valid certificate) has it refused by the allowlist, renews it and connects."""
    import re

    node = cluster.add_node(f"{cluster.prefix}m", vpn_connect_timeout=8)
    try:
        current = cluster.node_api(node).get_vpn_config()
        old_key = "-----BEGIN OpenVPN Static key V1-----\n" + "00" * 16 + "\n-----END OpenVPN Static key V1-----"
        old = re.sub(r"<tls-crypt-v2>.*</tls-crypt-v2>", f"<tls-crypt>\n{old_key}\n</tls-crypt>", current, flags=re.S)
        old = old.replace("verify-x509-name vpnagent-openvpn-server name\n", "")
        vpn_dir = node.data_dir / "vpn"
        vpn_dir.mkdir(parents=True, exist_ok=True)
        (vpn_dir / "client.ovpn").write_text(old)
        cluster.start_node(node)
        cluster.wait_connected(60, nodes=[node])
        log = _log(node)
        assert "config on disk did not work" in log and "the inline block <tls-crypt>" in log
        assert "starting client with the renewed config (POST /vpn/update)" in log
        assert "<tls-crypt-v2>" in (vpn_dir / "client.ovpn").read_text()
    finally:
        cluster.stop_node(node)


def test_without_a_reachable_vpn_server_the_node_runs_and_says_why(cluster, docker_client):
    net = docker_client.networks.create(f"{cluster.prefix}-void", driver="bridge", internal=True)
    node = cluster.add_node(f"{cluster.prefix}v", vpn_connect_timeout=3, vpn_client_network=net.name)
    try:
        cluster.start_node(node)
        status = wait_for(node.status, "the agent to report why it has no VPN", 60, 0.2,
                          until=lambda st: st and st["vpn"]["error"])
        assert status["vpn"]["connected"] is False
        assert "tun0 did not come up" in status["vpn"]["error"]
        assert node.proc.poll() is None, "the agent must keep running without VPN"
        assert "running WITHOUT VPN" in _log(node)
    finally:
        cluster.stop_node(node)
        try:
            net.reload()
            net.remove()
        except docker.errors.NotFound:
            pass


def test_node_labels_reach_every_container(cluster, docker_client):
    """The node config's `labels` are on every container the agent creates for the node:
    its VPN client, and each run's holder and algorithm container."""
    prober, node = cluster.nodes[0], cluster.nodes[1]
    original = node.config_path.read_text()
    raw = yaml.safe_load(original)
    cluster.stop_node(node)
    node.config_path.write_text(yaml.safe_dump({**raw, "labels": {"org.example.team": "fl-ops"}}))
    try:
        cluster.start_node(node)
        cluster.wait_connected(90, nodes=[node])
        with reachable_run(cluster, docker_client, prober, node):
            found = {c.labels.get("vpnagent.role"): c.labels
                     for c in docker_client.containers.list(filters={"label": f"vpnagent.node={node.name}"})}
            assert {"vpn-client", "holder", "algorithm"} <= set(found), found
            assert all(labels.get("org.example.team") == "fl-ops" for labels in found.values()), found
    finally:
        cluster.stop_node(node)
        node.config_path.write_text(original)
        cluster.start_node(node)
        cluster.wait_connected(90, nodes=[node])
