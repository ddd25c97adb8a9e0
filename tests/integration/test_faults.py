"""Faults the node agent must survive, each on the real network: a crashing algorithm, a
killed VPN client, a restarted OpenVPN server, an agent SIGKILLed in the middle of wiring,
and a soak of 300 runs. After each, the test counts what was left behind."""
import os
import signal
import time

import docker.errors
import pytest

from tests.waiting import wait_equal, wait_for
from vpnagent.netns import NetnsError

from .util import (create_task, kill_run, leftovers, long_peer, port_rows, probe_until_ok, reachable_run,
                   task_of, user_session, vpn_client_state, vpn_container, wait_live, wait_task_done, wait_zero)

pytestmark = pytest.mark.docker


def test_crashing_algorithm_leaves_nothing(cluster, docker_client):
    http = user_session(cluster)
    node = cluster.nodes[1]
    task = long_peer(cluster, http, node)
    run_id = task["runs"][0]["id"]
    wait_live(node, run_id)
    assert leftovers(cluster, docker_client)["holders"] == 1
    kill_run(docker_client, run_id)  # SIGKILL: exit code 137
    t = wait_task_done(cluster, http, task["id"])
    assert t["runs"][0]["status"] == "failed"
    wait_zero(cluster, docker_client)


def test_killed_vpn_client_is_brought_back_and_runs_reachable_again(cluster, docker_client):
    a, b = cluster.nodes[0], cluster.nodes[1]
    with reachable_run(cluster, docker_client, a, b) as (ip, port):
        fixes_before = set(b.status()["fixes"])
        vpn_container(docker_client, b.name).kill()
        took = probe_until_ok(docker_client, a.name, ip, port, 60)
        print(f"run reachable again {took:.1f} s after the VPN client was killed")
        # the agent replaced the client and says so; same server-allocated IP, no re-registration
        # one condition, waited for: status is written as each step lands, not all at once
        wait_for(b.status, "the agent to report the VPN client's replacement, connected with the same IP", 30,
                 until=lambda s: any("reconnected the VPN client" in f for f in set(s["fixes"]) - fixes_before)
                 and s["vpn"]["connected"] and s["vpn"]["vpn_ip"] == ip)


def test_restarted_openvpn_server_nodes_reconnect_and_keep_their_ips(cluster, docker_client):
    a, b = cluster.nodes[0], cluster.nodes[2]
    ips = {n.name: n.status()["vpn"]["vpn_ip"] for n in cluster.nodes}
    with reachable_run(cluster, docker_client, a, b) as (ip, port):
        ports_before = port_rows(cluster)
        docker_client.containers.get(cluster.openvpn_container).restart(timeout=5)
        took = probe_until_ok(docker_client, a.name, ip, port, 90)
        print(f"run reachable again {took:.1f} s after the OpenVPN server restart")
        wait_equal(lambda: {n.name: (n.status() or {"vpn": {}})["vpn"].get("vpn_ip") for n in cluster.nodes}, ips,
                   "every node connected with its old VPN IP")
        assert port_rows(cluster) == ports_before  # reachable without re-registration


def test_agent_sigkilled_mid_wiring_restarts_clean(cluster, docker_client):
    http = user_session(cluster)
    node = cluster.nodes[2]
    cluster.stop_node(node)
    cluster.start_node(node, env={"VPNAGENT_FAULT_PAUSE_BEFORE_REGISTER": "30"})
    cluster.wait_connected(60, nodes=[node])
    task = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 5}})
    run_id = task["runs"][0]["id"]
    # wait until the run's rules are in the VPN client (the agent then pauses before registering)
    wait_for(lambda: f"VA-{run_id}-N" in _chains(docker_client, node), f"run {run_id}'s rules in the VPN client",
             interval=0.05, ignore=(NetnsError, docker.errors.NotFound))
    os.killpg(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    assert leftovers(cluster, docker_client)["holders"] == 1  # the crash left a holder behind

    cluster.start_node(node)
    cluster.wait_connected(60, nodes=[node])
    wait_zero(cluster, docker_client)
    t = wait_task_done(cluster, http, task["id"])
    assert t["runs"][0]["status"] == "failed" and "restarted" in (t["runs"][0]["log"] or "")
    wait_for(node.status, "the orphan removal in the node's status",
             until=lambda st: any("orphan" in f for f in st["fixes"]))
    # the node works normally afterwards
    t2 = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 1, "n_peers": 1}})
    assert wait_task_done(cluster, http, t2["id"])["runs"][0]["status"] in ("completed", "failed")
    wait_zero(cluster, docker_client)


def _chains(docker_client, node) -> set:
    return vpn_client_state(docker_client, node.name).run_chains("nat")


def test_leak_soak_300_runs(cluster, docker_client):
    """Keeps up to 12 runs in flight until 300 have finished; then nothing may be left."""
    http = user_session(cluster)
    total, max_in_flight = 300, 12
    orgs = [n.organization_id for n in cluster.nodes]
    in_flight: list[int] = []
    statuses: dict[str, int] = {}
    progress = {"started": 0, "done": 0}

    def step() -> int:
        """Top the runs in flight up, collect the finished ones; returns how many are done."""
        while progress["started"] < total and len(in_flight) < max_in_flight:
            t = create_task(cluster, http, [orgs[progress["started"] % len(orgs)]],
                            {"method": "peer", "kwargs": {"timeout": 0.3, "n_peers": 1}})
            in_flight.append(t["id"])
            progress["started"] += 1
        for task_id in list(in_flight):
            t = task_of(cluster, http, task_id)
            if t["runs"] and all(r["status"] in ("completed", "failed") for r in t["runs"]):
                in_flight.remove(task_id)
                progress["done"] += 1
                statuses[t["runs"][0]["status"]] = statuses.get(t["runs"][0]["status"], 0) + 1
        return progress["done"]

    t0 = time.monotonic()
    wait_for(step, f"{total} runs to finish", 900, 0.2, until=lambda done: done == total)
    elapsed = time.monotonic() - t0
    print(f"{total} runs in {elapsed:.0f} s ({total / elapsed:.1f}/s), statuses {statuses}")
    print(f"left behind: {wait_zero(cluster, docker_client)}")
