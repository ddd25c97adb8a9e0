"""Runs survive what happens to the software around them: the node agent SIGKILLed and
started again, the API server killed in the middle of a task, a node that lost a run while
its agent was down, a run that lives longer than its token, and more tasks at once than a
node has run slots. Everything on the real network of the session cluster."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import docker.errors
import pytest

from tests.waiting import wait_for

from .util import (create_task, kill_run, port_rows, probe_until_ok, store_of, task_of, user_session, vpn_container, wait_live, wait_task_done, wait_zero)

pytestmark = pytest.mark.docker

# One connection every `interval` s to ip:port for `seconds`, each sending a line and
# expecting it echoed; prints a JSON summary with every failure and when it happened.
PROBER = r"""
import json, socket, sys, time
ip, port, seconds, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
line = b'{"nonce": "survive"}\n'
t0 = time.monotonic()
sent, failures = 0, []
while time.monotonic() - t0 < seconds:
    start = time.monotonic()
    sent += 1
    try:
        with socket.create_connection((ip, port), timeout=1) as s:
            s.settimeout(1)
            s.sendall(line)
            if s.makefile("rb").readline() != line:
                failures.append([round(start - t0, 2), "bad echo"])
    except OSError as exc:
        failures.append([round(start - t0, 2), str(exc)])
    time.sleep(max(0.0, interval - (time.monotonic() - start)))
print(json.dumps({"sent": sent, "failures": failures}))
"""


def start_prober(docker_client, from_node: str, ip: str, port: int, seconds: float,
                 interval: float = 0.05) -> subprocess.Popen:
    """The prober runs in `from_node`'s VPN client namespace: its packets cross the VPN."""
    pid = int(vpn_container(docker_client, from_node).attrs["State"]["Pid"])
    return subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", PROBER, ip, str(port),
                             str(seconds), str(interval)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def prober_result(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def no_request_fails_while(docker_client, from_node: str, ip: str, port: int, seconds: float, min_sent: int,
                           disrupt: Callable[[], Any]) -> Any:
    """A prober sends a request every 50 ms for `seconds` while `disrupt` runs (2 s in); none
    may fail. Returns what `disrupt` returned."""
    prober = start_prober(docker_client, from_node, ip, port, seconds)
    try:
        time.sleep(2)
        out = disrupt()
        result = prober_result(prober, seconds + 30)
    finally:
        if prober.poll() is None:
            prober.kill()
    print(f"prober: {result['sent']} requests, {len(result['failures'])} failed: {result['failures'][:10]}")
    assert result["sent"] >= min_sent and result["failures"] == []
    return out


def _family_run(cluster, docker_client, http, prober_node, target, seconds: float) -> tuple[dict, int, str, int]:
    """A task with a run on both nodes (so the prober's node is in the target run's
    family), serving the echo port for `seconds`; returns (task, target run, ip, port)."""
    task = create_task(cluster, http, [prober_node.organization_id, target.organization_id],
                       {"method": "peer", "kwargs": {"timeout": seconds, "n_peers": 50}})
    run_id = next(r["id"] for r in task["runs"] if r["organization_id"] == target.organization_id)
    live = wait_live(target, run_id)
    wait_live(prober_node, next(r["id"] for r in task["runs"] if r["organization_id"] == prober_node.organization_id))
    ip, port = target.status()["vpn"]["vpn_ip"], live["ports"][0]["vpn_port"]
    probe_until_ok(docker_client, prober_node.name, ip, port, 20)  # its echo server listens
    return task, run_id, ip, port


def test_agent_sigkilled_and_restarted_adopts_live_run_without_a_dropped_request(cluster, docker_client):
    http = user_session(cluster)
    a, b = cluster.nodes[0], cluster.nodes[1]
    task, run_id, ip, port = _family_run(cluster, docker_client, http, a, b, seconds=35)
    vpn_before = vpn_container(docker_client, b.name).id
    containers_before = {c.id for c in docker_client.containers.list(filters={"label": f"vpnagent.run={run_id}"})}

    def kill_and_restart() -> dict:
        os.killpg(b.proc.pid, signal.SIGKILL)
        b.proc.wait(10)
        time.sleep(1)
        cluster.start_node(b)
        return wait_for(b.status, "the restarted agent to adopt the run", 60, 0.05,
                        until=lambda s: s and s.get("adopted_at") and s["vpn"]["connected"])

    st = no_request_fails_while(docker_client, a.name, ip, port, 12, 150, kill_and_restart)
    assert st["adopted"] == [run_id]
    # the same VPN client (its session never restarted) and the same run containers
    assert vpn_container(docker_client, b.name).id == vpn_before
    assert {c.id for c in docker_client.containers.list(filters={"label": f"vpnagent.run={run_id}"})} == containers_before
    assert not any("orphan" in f for f in st["fixes"])
    done = wait_task_done(cluster, http, task["id"], 90)
    run = next(r for r in done["runs"] if r["id"] == run_id)
    assert run["status"] == "completed", run["log"]
    assert run["result"] and "received_from" in run["result"]  # collected by the adopting agent
    wait_zero(cluster, docker_client)


def test_results_reach_a_server_that_was_away(cluster, docker_client):
    """The API server is killed 1.5 s into an echo task and started again 3 s later: every
    run's result still reaches it (journaled on the node, delivered when it answers)."""
    http = user_session(cluster)
    orgs = [n.organization_id for n in cluster.nodes]
    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": cluster.collaboration_id, "organizations": [orgs[0]], "image": "vpnagent/echo:latest",
        "input": {"method": "central", "kwargs": {"timeout": 60}}})
    assert r.status_code == 201, r.text
    task = r.json()
    time.sleep(1.5)
    cluster.kill_server()
    time.sleep(3)
    cluster.restart_server()
    http = user_session(cluster)
    done = wait_task_done(cluster, http, task["id"], 120)
    run = done["runs"][0]
    assert run["status"] == "completed", run["log"]
    # ok: every pair echoed and every subtask run's result reached the server and the central
    assert run["result"]["ok"], run["result"]
    wait_zero(cluster, docker_client)


def test_a_result_finished_while_the_server_is_down_is_delivered_when_it_is_back(cluster, docker_client):
    http = user_session(cluster)
    node = cluster.nodes[1]
    task = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 3, "n_peers": 1}})
    run_id = task["runs"][0]["id"]
    wait_live(node, run_id)
    cluster.kill_server()
    try:
        # the run ends while no server answers: its result waits in the node's journal
        wait_for(node.status, f"run {run_id}'s report to wait for the server", 30, 0.1,
                 until=lambda st: run_id in (st.get("reports_waiting") or []) and not st["runs"])
        assert (node.data_dir / "journal" / f"{run_id}.json").exists()
    finally:
        cluster.restart_server()
    http = user_session(cluster)
    run = wait_task_done(cluster, http, task["id"], 60)["runs"][0]
    assert run["status"] == "completed" and run["result"]["received_from"] is not None, run
    wait_for(node.status, "the journal to be empty", 30, until=lambda st: not st["reports_waiting"])
    assert not (node.data_dir / "journal" / f"{run_id}.json").exists()


def test_server_fails_a_run_its_node_lost(cluster, docker_client):
    """The node lost a run while its agent was down (containers and journal gone): its next
    report tells the server, which marks the run failed with the reason instead of
    showing it active for ever."""
    http = user_session(cluster)
    node = cluster.nodes[2]
    task = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 60}})
    run_id = task["runs"][0]["id"]
    wait_live(node, run_id)
    cluster.stop_node(node, clean=False)
    for c in docker_client.containers.list(all=True, filters={"label": f"vpnagent.run={run_id}"}):
        c.remove(force=True)
    for path in (node.data_dir / "journal").glob("*.json"):
        path.unlink()
    (node.data_dir / "ports.json").unlink(missing_ok=True)
    cluster.start_node(node)
    cluster.wait_connected(60, nodes=[node])
    run = wait_task_done(cluster, http, task["id"], 30)["runs"][0]
    assert run["status"] == "failed" and "no longer has this run" in run["log"], run


def test_run_outlives_its_token(cluster, docker_client):
    """Container tokens last 4 s here; a run keeps calling the API for 12 s through the
    node proxy, which attaches the token the agent renews, and never fails."""
    http = user_session(cluster)
    node = cluster.nodes[0]
    cluster.restart_server(container_token_seconds=4)
    try:
        http = user_session(cluster)
        task = create_task(cluster, http, [node.organization_id],
                           {"method": "poll_api", "kwargs": {"seconds": 12, "interval": 0.5}})
        run = wait_task_done(cluster, http, task["id"], 90)["runs"][0]
    finally:
        cluster.restart_server(container_token_seconds=21600)
    assert run["status"] == "completed", run["log"]
    assert run["result"]["calls"] >= 15 and run["result"]["errors"] == [], run["result"]


def test_subtasks_are_admitted_when_parents_fill_every_slot(cluster, docker_client):
    """3 x max_concurrent_runs echo tasks at once, each a central run at organisation 1 that
    waits for its own subtask there: all finish (subtasks have their own limit)."""
    limit = 2
    cluster.reconfigure_nodes(lambda node: {"max_concurrent_runs": limit})
    try:
        http = user_session(cluster)
        orgs = [n.organization_id for n in cluster.nodes]
        tasks = []
        for _ in range(3 * limit):
            r = http.post(f"{cluster.server_url}/task", timeout=10, json={
                "collaboration_id": cluster.collaboration_id, "organizations": [orgs[0]],
                "image": "vpnagent/echo:latest", "input": {"method": "central", "kwargs": {"timeout": 60}}})
            assert r.status_code == 201, r.text
            tasks.append(r.json()["id"])
        results = [wait_task_done(cluster, http, t, 240)["runs"][0] for t in tasks]
    finally:
        cluster.reconfigure_nodes(lambda node: {"max_concurrent_runs": 8})
    bad = [(r["id"], r["status"], (r["log"] or "")[-300:]) for r in results
           if r["status"] != "completed" or not r["result"]["ok"]]
    assert bad == []
    wait_zero(cluster, docker_client)


def test_tasks_run_list_is_not_changed_by_a_restart(cluster):
    """A task finished before the agent restarted is not touched by the restart's report."""
    http = user_session(cluster)
    node = cluster.nodes[1]
    task = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 1, "n_peers": 1}})
    before = wait_task_done(cluster, http, task["id"], 60)["runs"][0]
    cluster.stop_node(node, clean=False)
    cluster.start_node(node)
    cluster.wait_connected(60, nodes=[node])
    wait_for(node.status, "the restarted agent's first pass", 30, until=lambda s: s and s.get("adopted_at"))
    assert task_of(cluster, http, task["id"])["runs"][0] == before


def test_ports_missing_at_the_server_are_registered_again(cluster, docker_client):
    """A live run's port rows vanish from the server's store behind the API's back (a
    restored backup, say: no event tells anyone): the node's next resync (every 15 s on this
    cluster) registers them again, and the run is reachable by its address again."""
    from sqlalchemy import delete

    from server_ext.store import Port

    http = user_session(cluster)
    node = cluster.nodes[0]
    task = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 60}})
    run_id = task["runs"][0]["id"]
    live = wait_live(node, run_id)
    before = sorted(p for _, r, p in port_rows(cluster) if r == run_id)
    assert before == [p["vpn_port"] for p in live["ports"]]
    store = store_of(cluster)
    try:
        with store.session() as s:
            s.execute(delete(Port).where(Port.run_id == run_id))
    finally:
        store.close()
    wait_for(lambda: sorted(p for _, r, p in port_rows(cluster) if r == run_id), "the ports to be registered again",
             45, 0.1, until=lambda ports: ports == before)
    assert any(f"of run {run_id} at the server" in f for f in node.status()["fixes"])
    kill_run(docker_client, run_id)
    wait_task_done(cluster, http, task["id"])
    wait_zero(cluster, docker_client)


def test_a_run_whose_holder_stopped_is_failed_and_a_stray_container_removed(cluster, docker_client):
    """Each pass compares runs with their containers: a run whose holder (its network) was
    stopped behind the agent's back is stopped and reported failed with the reason; a
    container labelled as a run of this node that no run owns is removed."""
    http = user_session(cluster)
    node = cluster.nodes[2]
    # it waits its whole 60 s for peers that never come, unless the agent stops it
    task = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 60, "n_peers": 5}})
    run_id = task["runs"][0]["id"]
    wait_live(node, run_id)
    stray = docker_client.containers.run(
        "vpnagent/algo-base:latest", ["sleep", "300"], detach=True, network_mode="none",
        name=f"{cluster.prefix}-stray", labels={"vpnagent.node": node.name, "vpnagent.role": "algorithm",
                                                "vpnagent.run": "999999"})
    try:
        holder = next(c for c in docker_client.containers.list(filters={"label": f"vpnagent.run={run_id}"})
                      if c.labels["vpnagent.role"] == "holder")
        holder.stop(timeout=1)
        # well before the algorithm's own 60 s end: the agent's check (every 10 s) stopped it
        run = wait_task_done(cluster, http, task["id"], 25)["runs"][0]
        assert run["status"] == "failed" and "holder container stopped" in run["log"], run
        wait_for(lambda: [c.name for c in docker_client.containers.list(all=True, filters={"name": stray.name})],
                 "the stray container to be removed", 30, 0.2, until=lambda names: stray.name not in names)
        assert any(f"removed orphan container {stray.name}" in f for f in node.status()["fixes"])
    finally:
        try:
            stray.remove(force=True)
        except docker.errors.NotFound:
            pass
    wait_zero(cluster, docker_client)
