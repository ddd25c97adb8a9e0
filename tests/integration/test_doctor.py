"""`vpnagent doctor` against the real session cluster: every check passes on a live node,
then each check is broken in turn (where that can be done on a shared machine) and must fail
with its fix line and exit code 1. Broken configs are written to tmp_path; anything changed
on the shared cluster is restored in a finally.

Not broken here, and why:
- /dev/net/tun and the iptables backend: removing the device or switching the backend would
  break Docker and every VPN container on the machine; tests/node/test_doctor.py checks
  those checks against a fake device and version strings.
- a missing DOCKER-USER chain: deleting it takes Docker's forwarding down for everyone; the
  logic is unit-tested with iptables-save text. The node's own jump in it *is* broken below.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import docker
import pytest
import yaml

from test_algorithms.cluster import free_port
from tests.waiting import wait_for
from vpnagent import doctor, firewall
from vpnagent.config import load_config
from vpnagent.netns import Netns

from .util import vpn_client_state

pytestmark = pytest.mark.docker


def run_doctor(config_path, env: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "vpnagent.cli", "doctor", "--config", str(config_path), "--json"],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.stdout, proc.stderr
    data = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in data["checks"]}


def variant(tmp_path, node, **changes):
    """The node's config with some keys changed, written to tmp_path."""
    raw = yaml.safe_load(node.config_path.read_text())
    raw.update(changes)
    path = tmp_path / f"{node.name}-variant.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def leftovers(client: docker.DockerClient, node) -> dict:
    containers = [c.name for c in client.containers.list(all=True, filters={"label": "vpnagent.role=doctor"},
                                                         ignore_removed=True)
                  if c.labels.get("vpnagent.node") == node.name]
    chains = sorted(c for c in vpn_client_state(client, node.name).chains.get("nat", set())
                    if c.startswith(doctor.SELFTEST_CHAIN_PREFIX))
    return {"containers": containers, "chains": chains}


def assert_failed(rc: int, checks: dict, name: str, fix_has: str) -> None:
    assert rc == 1, checks
    assert checks[name]["status"] == "fail", checks[name]
    assert fix_has in checks[name]["fix"], checks[name]


def test_all_checks_pass_on_a_live_node(cluster, docker_client):
    node = cluster.nodes[0]
    rc, checks = run_doctor(node.config_path)
    print("\n".join(f"{c['status'].upper()} {n}: {c['detail']}" for n, c in checks.items()))
    https = cluster.server_url.startswith("https://")
    engine = doctor.docker_version(docker_client.version()["Version"])
    for name, c in checks.items():
        allowed = ("pass",) if https or name != "server TLS valid" else ("pass", "skip")
        if name == "docker isolation fixes":  # this machine's engine decides: Debian 12's 20.10 warns
            allowed = ("pass",) if doctor.isolation_fixed(engine) else ("warn",)
        assert c["status"] in allowed, c
    assert rc == 0
    vpn_ip = node.status()["vpn"]["vpn_ip"]
    assert checks["self-test"]["detail"].startswith(f"{vpn_ip}:"), checks["self-test"]
    assert checks["own VPN IP in vpn_subnet"]["detail"] == f"{vpn_ip} in {cluster.vpn_subnet}"
    assert leftovers(docker_client, node) == {"containers": [], "chains": []}


def test_docker_unreachable(cluster, tmp_path):
    rc, checks = run_doctor(cluster.nodes[0].config_path, env={"DOCKER_HOST": f"unix://{tmp_path}/missing.sock"})
    assert_failed(rc, checks, "docker reachable", "dockerd")
    assert checks["VPN handshake"]["status"] == "skip"
    assert checks["self-test"]["status"] == "skip"
    assert checks["token valid"]["status"] == "pass"  # independent checks still run


def test_server_unreachable(cluster, tmp_path):
    url = cluster.server_url.replace(f":{cluster.api_port}/", f":{free_port()}/")
    rc, checks = run_doctor(variant(tmp_path, cluster.nodes[0], server_url=url))
    assert_failed(rc, checks, "server reachable", "server_url")
    assert checks["server TLS valid"]["status"] == checks["token valid"]["status"] == "skip"
    assert checks["self-test"]["status"] == "pass"  # the VPN does not need the API right now


def test_token_invalid(cluster, tmp_path):
    rc, checks = run_doctor(variant(tmp_path, cluster.nodes[0], api_key="not-the-key"))
    assert_failed(rc, checks, "token valid", "api_key")


def test_tls_wrong_fingerprint(cluster, tmp_path):
    if not cluster.server_url.startswith("https://"):
        pytest.skip("the cluster serves plain HTTP; tests/node/test_doctor.py checks TLS against a local HTTPS server")
    rc, checks = run_doctor(variant(tmp_path, cluster.nodes[0], server_fingerprint="ab" * 32))
    assert_failed(rc, checks, "server TLS valid", "server_fingerprint")
    assert checks["token valid"]["status"] == "skip"


def test_vpn_handshake_node_without_agent(cluster, tmp_path):
    node = cluster.add_node(f"{cluster.prefix}dr")  # registered at the server, agent never started
    rc, checks = run_doctor(node.config_path)
    assert_failed(rc, checks, "VPN handshake", "vpnagent run")
    assert checks["token valid"]["status"] == "pass"
    assert checks["own VPN IP in vpn_subnet"]["status"] == checks["self-test"]["status"] == "skip"


def test_vpn_handshake_session_lost(cluster, docker_client):
    """tun0 still has its address (persist-tun) but nothing answers through it: the OpenVPN
    server is frozen for a few seconds, well under the clients' 60 s keepalive timeout."""
    server = docker_client.containers.get(cluster.openvpn_container)
    server.pause()
    try:
        rc, checks = run_doctor(cluster.nodes[0].config_path)
    finally:
        server.unpause()
    assert_failed(rc, checks, "VPN handshake", "OpenVPN server")
    assert "does not answer through the tunnel" in checks["VPN handshake"]["detail"]
    # and back: the same node passes again once the server runs
    wait_for(lambda: run_doctor(cluster.nodes[0].config_path), "doctor to pass again after the unpause", 60, 1,
             until=lambda got: got[0] == 0)


def test_vpn_ip_outside_configured_subnet(cluster, tmp_path):
    rc, checks = run_doctor(variant(tmp_path, cluster.nodes[0], vpn_subnet="10.99.0.0/16"))
    assert_failed(rc, checks, "own VPN IP in vpn_subnet", cluster.vpn_subnet)
    assert checks["VPN handshake"]["status"] == "pass"
    assert checks["self-test"]["status"] == "skip"


def test_docker_user_jump_missing(cluster):
    """The node's jump DOCKER-USER -> VA-HOST-<node> is deleted; the check must see it. The
    agent would put it back at its next reconcile, so it is held still (SIGSTOP) while the
    jump is gone and the check runs; once it runs again, its reconcile restores the jump."""
    node = cluster.nodes[0]
    cfg = load_config(node.config_path)
    host = Netns(None)
    jump = f"-A DOCKER-USER -j {cfg.host_chain}"
    checks = [c for c in doctor.CHECKS if c.name in ("iptables backend", "DOCKER-USER chain")]

    def jump_present() -> bool:
        return firewall.parse_save(host.run(["iptables-save", "-t", "filter"]).stdout).has_rule("filter", jump)

    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        host.iptables_restore(f"*filter\n-D {jump[3:]}\nCOMMIT\n")
        results = doctor.run_checks(checks, doctor.Context(cfg))
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    try:
        assert results[1].status == "fail", results
        assert "missing" in results[1].detail and "restart `vpnagent run`" in results[1].fix
        assert doctor.exit_code(results) == 1
        wait_for(jump_present, "the agent's reconcile to restore the DOCKER-USER jump", 30, 0.2)
    finally:
        if not jump_present():
            host.iptables_restore(f"*filter\n-I DOCKER-USER 1 -j {cfg.host_chain}\nCOMMIT\n")


def test_self_test_fails_when_the_echo_reply_is_dropped(cluster, docker_client):
    """Negative control for the self-test: a DROP for the echo's replies in the VPN client's
    INPUT (a built-in chain the agent's reconcile does not rewrite) must make it fail."""
    node = cluster.nodes[1]
    ns = Netns(int(docker_client.containers.get(f"vpnagent-{node.name}-vpn").attrs["State"]["Pid"]))
    rule = f"INPUT -p tcp -m tcp --sport {doctor.ECHO_PORT} -j DROP"
    ns.iptables_restore(f"*filter\n-I {rule}\nCOMMIT\n")
    try:
        rc, checks = run_doctor(node.config_path)
    finally:
        ns.iptables_restore(f"*filter\n-D {rule}\nCOMMIT\n")
    assert_failed(rc, checks, "self-test", "vpnagent status")
    assert "error" in checks["self-test"]["detail"]
    assert leftovers(docker_client, node) == {"containers": [], "chains": []}


def test_self_test_fails_without_python_in_the_holder_image(cluster, tmp_path, docker_client):
    node = cluster.nodes[1]
    rc, checks = run_doctor(variant(tmp_path, node, holder_image="vpnagent/vpn:latest"))  # no python3 in it
    assert_failed(rc, checks, "self-test", "vpnagent images build")
    assert leftovers(docker_client, node) == {"containers": [], "chains": []}


def test_self_test_outlives_a_reconcile(cluster, docker_client):
    """The self-test's chain and container are held for longer than the agent's reconcile
    period (10 s); the agent must leave them alone (they are not runs), so the probe after
    the pause still gets through, and nothing is left afterwards."""
    node = cluster.nodes[1]
    before = node.status()
    rc, checks = run_doctor(node.config_path, env={"VPNAGENT_DOCTOR_PAUSE_S": "11"})
    assert rc == 0 and checks["self-test"]["status"] == "pass", checks
    after = node.status()
    assert after["reconciles"] > before["reconciles"], "no reconcile ran while the self-test held its chain"
    assert after["fixes"] == before["fixes"]  # the reconcile saw nothing to correct
    assert leftovers(docker_client, node) == {"containers": [], "chains": []}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_self_test_cleans_up(cluster, docker_client, sig):
    node = cluster.nodes[2]
    proc = subprocess.Popen([sys.executable, "-m", "vpnagent.cli", "doctor", "--config", str(node.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VPNAGENT_DOCTOR_PAUSE_S": "60"})
    try:
        wait_for(lambda: leftovers(docker_client, node), "the self-test to wire its echo container", 30,
                 until=lambda found: found["containers"] and found["chains"])
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert leftovers(docker_client, node) == {"containers": [], "chains": []}
