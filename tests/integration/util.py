"""Helpers for the integration tests: tasks through the real API, the live state of a
node, and TCP probes sent from inside a VPN client's namespace (so the probe really
crosses the OpenVPN network)."""
from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time

import docker
import requests

from server_ext.store import Store
from tests.waiting import wait_equal, wait_for
from vpnagent import firewall
from vpnagent.netns import Netns, NetnsError
from vpnagent.tls import make_session

PROBE = r"""
import json, socket, sys
ip, port, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with socket.create_connection((ip, port), timeout=3) as s:
        s.settimeout(3)
        # without "from" the echo server does not count the probe as one of its senders
        line = json.dumps({"nonce": "x", **({"from": sender} if sender else {})}).encode() + b"\n"
        s.sendall(line)
        got = s.makefile("rb").readline()
    print("ok" if got == line else "bad echo")
except OSError as exc:
    print(f"error {exc}")
"""


def vpn_container(client: docker.DockerClient, node_name: str):
    return client.containers.get(f"vpnagent-{node_name}-vpn")


def vpn_client_state(client: docker.DockerClient, node_name: str) -> firewall.TableState:
    c = vpn_container(client, node_name)
    return firewall.parse_save(Netns(int(c.attrs["State"]["Pid"])).iptables_save())


def user_session(cluster) -> requests.Session:
    return cluster.user_session()


def create_task(cluster, http: requests.Session, org_ids: list[int], input_: dict) -> dict:
    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": cluster.collaboration_id, "organizations": org_ids,
        "image": "vpnagent/echo:latest", "input": input_})
    assert r.status_code == 201, r.text
    return r.json()


def long_peer(cluster, http, node, seconds: float = 90) -> dict:
    """A run that serves the echo port for `seconds` (it waits for peers that never come)."""
    return create_task(cluster, http, [node.organization_id],
                       {"method": "peer", "kwargs": {"timeout": seconds, "n_peers": 50}})


def live_run(node, run_id: int) -> dict | None:
    """The run as the node's status shows it, once it has its VPN ports."""
    return next((r for r in (node.status() or {}).get("runs", []) if r["run_id"] == run_id and r["ports"]), None)


def wait_live(node, run_id: int, timeout: float = 30) -> dict:
    return wait_for(lambda: live_run(node, run_id), f"run {run_id} to be live on {node.name}", timeout, 0.05)


def task_of(cluster, http: requests.Session, task_id: int) -> dict:
    r = http.get(f"{cluster.server_url}/task/{task_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def task_done(task: dict) -> bool:
    return all(r["status"] in ("completed", "failed") for r in task["runs"])


def wait_task_done(cluster, http, task_id: int, timeout: float = 60) -> dict:
    return wait_for(lambda: task_of(cluster, http, task_id), f"task {task_id} to finish", timeout, until=task_done)


def probe(client: docker.DockerClient, from_node: str, ip: str, port: int, sender: str = "") -> str:
    """TCP echo probe from the VPN client namespace of `from_node` to ip:port; with a
    `sender` name the echo run counts it as one of the senders it waits for."""
    pid = int(vpn_container(client, from_node).attrs["State"]["Pid"])
    proc = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", PROBE, ip, str(port),
                           sender],
                          capture_output=True, text=True, timeout=20)
    return (proc.stdout.strip() or proc.stderr.strip())[-300:]


def probe_until_ok(client, from_node: str, ip: str, port: int, timeout: float) -> float:
    """Probe until the echo answers; returns how long that took (fails with the last answer)."""
    t0 = time.monotonic()
    wait_equal(lambda: probe(client, from_node, ip, port), "ok", f"{ip}:{port} to answer from {from_node}", timeout,
               0.25, ignore=(docker.errors.NotFound, subprocess.TimeoutExpired, KeyError))
    return time.monotonic() - t0


def store_of(cluster) -> Store:
    return Store(f"sqlite:///{cluster.workdir / 'server' / 'store.db'}")


def port_rows(cluster) -> list[tuple[int, int, int]]:
    from sqlalchemy import select

    from server_ext.store import Port

    store = store_of(cluster)
    try:
        with store.session() as s:
            return [(p.id, p.run_id, p.port) for p in s.scalars(select(Port))]
    finally:
        store.close()


def leftovers(cluster, client: docker.DockerClient) -> dict:
    """Everything runs leave behind, counted over the collaboration's nodes."""
    chains = dnat = 0
    for node in cluster.nodes:
        st = vpn_client_state(client, node.name)
        chains += len(st.run_chains("nat") | st.run_chains("filter"))
        dnat += len([r for r in st.rules["nat"] if r.startswith("-A VA-")])
    holders = [c.name for c in client.containers.list(all=True, filters={"label": "vpnagent.role=holder"})
               if c.labels.get("vpnagent.node", "").startswith(cluster.prefix)]
    algos = [c.name for c in client.containers.list(all=True, filters={"label": "vpnagent.role=algorithm"})
             if c.labels.get("vpnagent.node", "").startswith(cluster.prefix)]
    local_ports = sum(len(json.loads((n.data_dir / "ports.json").read_text() or "{}"))
                      for n in cluster.nodes if (n.data_dir / "ports.json").exists())
    return {"run_chains": chains, "dnat_rules": dnat, "holders": len(holders), "algorithm_containers": len(algos),
            "server_port_records": len(port_rows(cluster)), "local_port_records": local_ports}


ZERO = {"run_chains": 0, "dnat_rules": 0, "holders": 0, "algorithm_containers": 0,
        "server_port_records": 0, "local_port_records": 0}


def wait_zero(cluster, client, timeout: float = 30) -> dict:
    """Wait until the runs have left nothing behind (fails with what is still there)."""
    # a VPN client being replaced right now has no namespace to read: look again
    return wait_equal(lambda: leftovers(cluster, client), ZERO, "every run's leftovers to be gone", timeout, 0.2,
                      ignore=(NetnsError, docker.errors.NotFound))


def kill_run(docker_client, run_id: int) -> None:
    for c in docker_client.containers.list(all=True, filters={"label": f"vpnagent.run={run_id}"}):
        if c.labels.get("vpnagent.role") == "algorithm":
            c.kill()


@contextlib.contextmanager
def reachable_run(cluster, docker_client, prober, target):
    """A live run on `target`, reachable from `prober`'s VPN client; ended afterwards."""
    http = user_session(cluster)
    # one task with a run on both nodes: the prober's node is in the target run's family
    task = create_task(cluster, http, [prober.organization_id, target.organization_id],
                       {"method": "peer", "kwargs": {"timeout": 90, "n_peers": 50}})
    run_id = next(r["id"] for r in task["runs"] if r["organization_id"] == target.organization_id)
    live = wait_live(target, run_id)
    # the prober's own run too: a test that counts port records must not race its registration
    wait_live(prober, next(r["id"] for r in task["runs"] if r["organization_id"] == prober.organization_id))
    ip, port = target.status()["vpn"]["vpn_ip"], live["ports"][0]["vpn_port"]
    try:
        probe_until_ok(docker_client, prober.name, ip, port, 20)
        yield ip, port
    finally:
        for r in task["runs"]:
            kill_run(docker_client, r["id"])
        wait_task_done(cluster, http, task["id"])
    wait_zero(cluster, docker_client)


def outsider_session(cluster, node) -> tuple[requests.Session, int]:
    """A researcher of the organisation of a node made by cluster.add_node, and the id of
    that node's collaboration."""
    store = store_of(cluster)
    try:
        _, key = store.create_user(node.organization_id, f"res{secrets.token_hex(2)}")
        collab_id = store.get_node(node.node_id).collaboration_id
    finally:
        store.close()
    s = make_session(cluster.tls_verify)
    tok = s.post(f"{cluster.server_url}/token/user", json={"api_key": key}, timeout=10)
    tok.raise_for_status()
    s.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
    return s, collab_id
