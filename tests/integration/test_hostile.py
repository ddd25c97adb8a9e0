"""The hostile algorithm (test_algorithms/hostile.py) as an ordinary run on the session
cluster, next to a live echo task on the same node and on the others: every escape it tries
must fail while its positive controls (its own children over the VPN, on its node and on
another, its own address, its own node proxy) succeed. Then the same attack against a node
whose firewall is weakened by a test switch must succeed, so this test can fail.

Also here: what a run leaves in place of its output (links to host files, /dev/zero, a
FIFO, a huge file), resource limits of algorithm containers, and the node's image
allowlist."""
from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
import sys
from typing import Iterator

import pytest

from test_algorithms import hostile
from tests.waiting import wait_for

from vpnagent.netns import Netns

from .util import (create_task, kill_run, outsider_session, user_session, vpn_container, wait_live, wait_task_done,
                   wait_zero)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def hostile_image(docker_client, images):
    return hostile.build(docker_client, progress=lambda m: print(f"[images] {m}"))


def _gateway(docker_client, network: str) -> str:
    return docker_client.networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]


def _hostile_task(cluster, http, org_id: int, **kwargs) -> dict:
    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": cluster.collaboration_id, "organizations": [org_id], "image": hostile.HOSTILE_IMAGE,
        "input": {"method": "attack", "kwargs": kwargs}})
    assert r.status_code == 201, r.text
    return r.json()


def _attempts(done: dict) -> list[dict]:
    run = done["runs"][0]
    assert run["status"] == "completed", (run["status"], (run.get("log") or "")[-2000:])
    attempts = run["result"]["attempts"]
    print(f"\n{'attack':<48} {'target':<52} outcome")
    for a in attempts:
        print(f"{a['attack'][:48]:<48} {a['target'][:52]:<52} {a['outcome']}  {a['detail'][:60]}")
    return attempts


def _foreign(cluster) -> dict:
    """A real task of another collaboration (its node never runs: the task just exists),
    with that collaboration's and organisation's ids."""
    node = cluster.add_node(f"{cluster.prefix}fo")
    http, collab = outsider_session(cluster, node)
    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": collab, "organizations": [node.organization_id], "image": "vpnagent/echo:latest",
        "input": {"method": "peer", "kwargs": {}}})
    assert r.status_code == 201, r.text
    return {"foreign_task_id": r.json()["id"], "foreign_collaboration_id": collab,
            "foreign_organization_id": node.organization_id}


def _hints(cluster, docker_client, node, echo_task: dict, echo_runs: dict, host_port: int) -> dict:
    others = [n for n in cluster.nodes if n is not node]
    openvpn = docker_client.containers.get(cluster.openvpn_container)
    vpn_client = docker_client.containers.get(f"vpnagent-{node.name}-vpn")
    ips = {n.name: n.status()["vpn"]["vpn_ip"] for n in cluster.nodes}
    return {
        "same_node_holders": [{"run_id": echo_runs[node.name]["run_id"], "ip": echo_runs[node.name]["holder_ip"]}],
        "holder_names": [f"vpnagent-{node.name}-run{echo_runs[node.name]['run_id']}-holder"],
        "other_task_ports": [{"run_id": r["run_id"], "ip": ips[name], "port": r["ports"][0]["vpn_port"]}
                             for name, r in echo_runs.items()],
        "node_vpn_ips": list(ips.values()),
        "host_ports": [host_port, node.metrics_port, cluster.api_port],
        "api_ports": [cluster.api_port],
        "proxy_port": 8765,
        "other_gateways": {n.name: _gateway(docker_client, f"vpnagent-{n.name}-net") for n in others},
        "openvpn_ips": [str(next(ipaddress.IPv4Network(cluster.vpn_subnet).hosts())),
                        openvpn.attrs["NetworkSettings"]["Networks"][cluster.wan_network]["IPAddress"]],
        "vpn_client_iso_ip": vpn_client.attrs["NetworkSettings"]["Networks"][f"vpnagent-{node.name}-net"]["IPAddress"],
        **_foreign(cluster),
        # the victims' task: same collaboration, another job (a container sees its own job only)
        "other_job_task_id": echo_task["id"], "other_job_run_id": echo_runs[node.name]["run_id"],
    }


def _echo_everywhere(cluster, http) -> tuple[dict, dict]:
    """Task T: a long echo run on every node (the victims)."""
    task = create_task(cluster, http, [n.organization_id for n in cluster.nodes],
                       {"method": "peer", "kwargs": {"timeout": 120, "n_peers": len(cluster.nodes)}})
    runs = {r["organization_id"]: r["id"] for r in task["runs"]}
    return task, {n.name: wait_live(n, runs[n.organization_id]) for n in cluster.nodes}


UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    data, src = s.recvfrom(2048)
    s.sendto(b"canary: " + data, src)
"""


@contextlib.contextmanager
def udp_canary(docker_client, node, run: dict) -> Iterator[None]:
    """A UDP echo on port 8888 in the run's holder (where the echo listens on TCP). It
    first answers a datagram from its node's VPN client over the bridge (the control: an
    attack's "blocked" then means the path is closed, not that the canary is deaf)."""
    pid = int(docker_client.containers.get(run["holder_id"]).attrs["State"]["Pid"])
    proc = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", UDP_ECHO, "8888"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        client_pid = int(vpn_container(docker_client, node.name).attrs["State"]["Pid"])
        ask = Netns(client_pid).run([sys.executable, "-c", UDP_ASK, run["holder_ip"], "8888"], check=False)
        assert ask.stdout.startswith("canary:"), (node.name, ask.stdout, ask.stderr)
        yield
    finally:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def udp_canaries(cluster, docker_client, node, echo_runs: dict) -> Iterator[list[dict]]:
    """A canary in every victim run, as hints for the hostile run on `node`: at the
    victim's node VPN IP and forwarded port, and on `node`'s own bridge at the holder."""
    hints = []
    with contextlib.ExitStack() as stack:
        for n in cluster.nodes:
            run = echo_runs[n.name]
            stack.enter_context(udp_canary(docker_client, n, run))
            hints.append({"name": f"run {run['run_id']} on {n.name} at its VPN port", "ip": n.status()["vpn"]["vpn_ip"],
                          "port": run["ports"][0]["vpn_port"]})
            if n is node:
                hints.append({"name": f"run {run['run_id']} on the own bridge", "ip": run["holder_ip"], "port": 8888})
        yield hints


UDP_ASK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"control", (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(2048)[0].decode())
"""


def _end(cluster, docker_client, http, task: dict) -> None:
    for r in task["runs"]:
        kill_run(docker_client, r["id"])
    wait_task_done(cluster, http, task["id"], timeout=60)


def test_hostile_algorithm_escapes_nowhere_and_its_controls_pass(cluster, docker_client, hostile_image,
                                                                 host_listener):
    http = user_session(cluster)
    node, other = cluster.nodes[0], cluster.nodes[1]
    echo_task, echo_runs = _echo_everywhere(cluster, http)
    try:
        hints = _hints(cluster, docker_client, node, echo_task, echo_runs, host_listener)
        with udp_canaries(cluster, docker_client, node, echo_runs) as canaries:
            task = _hostile_task(cluster, http, node.organization_id, hints={**hints, "udp_canaries": canaries},
                                 child_orgs=[node.organization_id, other.organization_id], timeout=60)
            attempts = _attempts(wait_task_done(cluster, http, task["id"], timeout=240))
    finally:
        _end(cluster, docker_client, http, echo_task)
    escaped = [a for a in attempts if a["outcome"] == "ESCAPED"]
    failed_controls = [a for a in attempts if a["outcome"] == "FAILED"]
    assert not escaped, escaped
    assert not failed_controls, failed_controls
    # every attack of the image ran and tried something (a silent attack proves nothing)
    tried = {a["attack"] for a in attempts}
    missing = set(hostile.ATTACKS) - {"process_limit"} - tried
    assert not missing, f"attacks that tried nothing: {missing}"
    controls = [a for a in attempts if a["expect"] == "ok"]
    assert {a["attack"] for a in controls} >= {"control: own child over the VPN", "control: own address over the VPN",
                                                "control: own node proxy",
                                                "control: own run's token swapped by the proxy"}
    # both children answered: the one on this node (hairpin through the VPN client) and the other
    assert len([a for a in controls if a["attack"] == "control: own child over the VPN"]) == 2
    same_node = [a for a in attempts if a["attack"] == "same_node_runs_over_the_bridge"
                 and echo_runs[node.name]["holder_ip"] in a["target"]]
    assert same_node and same_node[0]["outcome"] == "blocked", same_node
    wait_zero(cluster, docker_client)


def test_weakened_token_swap_lets_a_forged_token_take_another_runs_identity(cluster, docker_client, hostile_image):
    """The negative control of forged_tokens_through_the_proxy: a node started with the test
    switch VPNAGENT_TEST_WEAKEN_TOKEN_SWAP=1 swaps in the token of whichever run a token
    names, from any address. The forged token naming the hostile run's own child (on the
    same node) then gets the child's identity at the server."""
    node = cluster.nodes[2]
    http = user_session(cluster)
    cluster.stop_node(node)
    cluster.start_node(node, env={"VPNAGENT_TEST_WEAKEN_TOKEN_SWAP": "1"})
    try:
        cluster.wait_connected(60, nodes=[node])
        task = _hostile_task(cluster, http, node.organization_id, timeout=30, child_orgs=[node.organization_id],
                             only=["forged_tokens_through_the_proxy"])
        attempts = _attempts(wait_task_done(cluster, http, task["id"], timeout=120))
        child = [a for a in attempts if "own child's run" in a["target"]]
        assert child and child[0]["outcome"] == "ESCAPED", attempts
    finally:
        cluster.stop_node(node)
        cluster.start_node(node)
        cluster.wait_connected(60, nodes=[node])
    wait_zero(cluster, docker_client)


def test_weakened_firewall_lets_the_same_node_attack_through(cluster, docker_client, hostile_image):
    """The negative control of the test above: the same attacks (TCP, and UDP to a canary)
    against a node started with the test switch VPNAGENT_TEST_WEAKEN_FIREWALL=same-node (no
    bridge DROP, Docker's inter-container communication on) must reach the other task's run
    directly."""
    node = cluster.nodes[2]
    http = user_session(cluster)
    cluster.stop_node(node)  # a clean stop removes the node's network: the weakened agent makes a new one
    cluster.start_node(node, env={"VPNAGENT_TEST_WEAKEN_FIREWALL": "same-node"})
    try:
        cluster.wait_connected(60, nodes=[node])
        echo = create_task(cluster, http, [node.organization_id],
                           {"method": "peer", "kwargs": {"timeout": 90, "n_peers": 5}})
        victim = wait_live(node, echo["runs"][0]["id"])
        try:
            with udp_canary(docker_client, node, victim):
                task = _hostile_task(cluster, http, node.organization_id, timeout=30,
                                     only=["same_node_runs_over_the_bridge", "udp_across_the_tunnels"],
                                     hints={"same_node_holders": [{"run_id": victim["run_id"], "ip": victim["holder_ip"]}],
                                            "udp_canaries": [{"name": "victim on the own bridge",
                                                              "ip": victim["holder_ip"], "port": 8888}]})
                attempts = _attempts(wait_task_done(cluster, http, task["id"], timeout=120))
        finally:
            _end(cluster, docker_client, http, echo)
        direct = [a for a in attempts if a["target"].endswith(f" {victim['holder_ip']}:8888")]
        assert {a["attack"] for a in direct} == {"same_node_runs_over_the_bridge", "udp_across_the_tunnels"}, direct
        assert all(a["outcome"] == "ESCAPED" for a in direct), direct
    finally:
        cluster.stop_node(node)
        cluster.start_node(node)
        cluster.wait_connected(60, nodes=[node])
    net = docker_client.networks.get(f"vpnagent-{node.name}-net")
    assert net.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    wait_zero(cluster, docker_client)


@pytest.mark.parametrize("trick", ["symlink-host-file", "symlink-dev-zero", "fifo", "huge", "directory"])
def test_output_tricks_fail_the_run_and_leak_nothing(cluster, docker_client, hostile_image, tmp_path, trick):
    node = cluster.nodes[1]
    secret_text = f"host secret {secrets.token_hex(8)}"
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(secret_text))
    kwargs = {"symlink-host-file": {"trick": "symlink", "target": str(secret)},
              "symlink-dev-zero": {"trick": "symlink", "target": "/dev/zero"},
              "fifo": {"trick": "fifo"}, "huge": {"trick": "huge"}, "directory": {"trick": "directory"}}[trick]
    http = user_session(cluster)
    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": cluster.collaboration_id, "organizations": [node.organization_id],
        "image": hostile.HOSTILE_IMAGE, "input": {"method": "output", "kwargs": kwargs}})
    assert r.status_code == 201, r.text
    run = wait_task_done(cluster, http, r.json()["id"], timeout=60)["runs"][0]
    assert run["status"] == "failed", run
    assert run["result"] is None
    assert "refused" in (run["log"] or ""), run["log"]
    assert secret_text not in json.dumps(run)
    assert node.proc.poll() is None, "the agent died"
    assert not (node.data_dir / "runs" / str(run["id"])).exists(), "the run's directory was left behind"
    wait_zero(cluster, docker_client)


def test_limits_and_image_allowlist_of_a_node(cluster, docker_client, hostile_image):
    node = cluster.add_node(f"{cluster.prefix}lim", algorithm_memory="256m", algorithm_cpus=0.5,
                            algorithm_pids=64, allowed_images=["vpnagent/echo:*", "vpnagent/hostile:latest"])
    cluster.start_node(node)
    try:
        cluster.wait_connected(60, nodes=[node])
        http, collab = outsider_session(cluster, node)

        def task(image: str, task_input: dict) -> dict:
            r = http.post(f"{cluster.server_url}/task", timeout=10, json={
                "collaboration_id": collab, "organizations": [node.organization_id], "image": image,
                "input": task_input})
            assert r.status_code == 201, r.text
            return r.json()

        # the container runs with the node's limits, and a fork bomb stops at the pids limit
        t = task(hostile.HOSTILE_IMAGE, {"method": "attack", "kwargs": {
            "only": ["process_limit"], "hints": {"pids_limit": 64}, "timeout": 30}})
        run_id = t["runs"][0]["id"]
        algo = wait_for(lambda: docker_client.containers.list(
            filters={"label": [f"vpnagent.run={run_id}", "vpnagent.role=algorithm"]}), "the algorithm container")[0]
        host = algo.attrs["HostConfig"]
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (256 << 20, 500_000_000, 64)
        assert "no-new-privileges" in host["SecurityOpt"]
        attempts = _attempts(wait_task_done(cluster, http, t["id"], timeout=120))
        bomb = [a for a in attempts if a["attack"] == "process_limit"]
        assert bomb and bomb[0]["outcome"] == "blocked", bomb

        # an image outside allowed_images is refused with the reason; one inside runs
        docker_client.images.get("vpnagent/algo-base:latest").tag("vpnagent/unlisted", "latest")
        try:
            refused = wait_task_done(cluster, http, task("vpnagent/unlisted:latest", {})["id"])["runs"][0]
        finally:
            docker_client.images.remove("vpnagent/unlisted:latest")
        assert refused["status"] == "failed" and "not in this node's allowed_images" in refused["log"], refused
        echo = wait_task_done(cluster, http, task("vpnagent/echo:latest", {
            "method": "peer", "kwargs": {"timeout": 1, "n_peers": 1}})["id"])["runs"][0]
        assert "allowed_images" not in (echo["log"] or ""), echo
    finally:
        cluster.stop_node(node)

