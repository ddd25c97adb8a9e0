"""One-step join against the real server: the operator's commands (`vpnagent-server
add-organization`, `add-collaboration`, `add-node`) print a join string, `vpnagent join` on
the node turns it into a config, and the agent started with that config connects to the
VPN. The same string does not work twice."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from test_algorithms.cluster import NodeHandle, free_port
from vpnagent.config import load_config

pytestmark = pytest.mark.docker


def _server(cluster, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "server_ext.cli", *args, "--config",
                           str(cluster.workdir / "server" / "server.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _join(string: str, config, data_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnagent.cli", "join", string, "--config", str(config),
                           "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)


def test_a_node_joined_with_the_join_string_connects(cluster):
    name = f"{cluster.prefix}j"
    org = int(_server(cluster, "add-organization", f"org-{name}").split()[1])
    collab = int(_server(cluster, "add-collaboration", f"collab-{name}", "--org", str(org)).split()[1])
    out = _server(cluster, "add-node", name, "--org", str(org), "--collaboration", str(collab),
                  "--server-url", cluster.server_url, "--expires", "10m")
    lines = out.splitlines()
    node_id = int(lines[0].split()[1])
    string = lines[1].split()[1]
    assert lines[1].startswith("join_string vpnagent-join-1.") and "api_key" not in out

    config = cluster.workdir / "nodes" / f"{name}.yaml"
    data_dir = cluster.workdir / "nodes" / name
    joined = _join(string, config, data_dir)
    assert joined.returncode == 0, joined.stderr
    cfg = load_config(config)
    assert (cfg.name, cfg.server_url, str(cfg.vpn_subnet)) == (name, cluster.server_url, cluster.vpn_subnet)
    assert oct(config.stat().st_mode & 0o777) == "0o600"

    # The cluster's own keys for a node on this machine (the WAN network its VPN client
    # reaches the OpenVPN server on, a port range of its own); the join's keys stay as written.
    metrics_port = free_port()
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "vpn_client_network": cluster.wan_network, "poll_interval": 0.25,
                                      "port_range": [29000, 29099], "metrics_listen": f"127.0.0.1:{metrics_port}"}))
    node = NodeHandle(name, org, node_id, cfg.api_key, config, data_dir, cluster.workdir / "logs" / f"{name}.log",
                      metrics_port=metrics_port)
    cluster.extra_nodes.append(node)  # torn down with the cluster, also when this test fails
    try:
        cluster.start_node(node)
        cluster.wait_connected(90, nodes=[node])
        vpn_ip = node.status()["vpn"]["vpn_ip"]
        assert cluster.node_api(node).node_self()["vpn_ip"] == vpn_ip

        # the string was spent: a second node cannot join with it, and nothing is written
        again = _join(string, cluster.workdir / "nodes" / f"{name}-again.yaml", data_dir)
        assert again.returncode == 1 and "used already" in again.stderr
        assert not (cluster.workdir / "nodes" / f"{name}-again.yaml").exists()
    finally:
        cluster.stop_node(node)
