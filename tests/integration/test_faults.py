"""Faults the node agent must survive, each on the real network: a crashing algorithm, a
killed VPN client, a restarted OpenVPN server, an agent SIGKILLed in the middle of wiring,
and a soak of 300 runs. After each, the test counts what was left behind."""
import os
import signal
import time

import pytest

from .util import (ZERO, create_task, kill_run, leftovers, long_peer, port_rows, probe_until_ok, reachable_run,
                   user_session, vpn_container, wait_live, wait_task_done, wait_zero)

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
    assert wait_zero(cluster, docker_client) == ZERO


def test_killed_vpn_client_is_brought_back_and_runs_reachable_again(cluster, docker_client):
    a, b = cluster.nodes[0], cluster.nodes[1]
    with reachable_run(cluster, docker_client, a, b) as (ip, port):
        old_id = vpn_container(docker_client, b.name).id
        vpn_container(docker_client, b.name).kill()
        ok, took, last = probe_until_ok(docker_client, a.name, ip, port, 60)
        print(f"run reachable again {took:.1f} s after the VPN client was killed")
        assert ok, last
        assert b.status()["vpn"]["vpn_ip"] == ip  # same server-allocated IP, no re-registration
        assert any("reconnected the VPN client" in f for f in b.status()["fixes"]) or \
            vpn_container(docker_client, b.name).id == old_id


def test_restarted_openvpn_server_nodes_reconnect_and_keep_their_ips(cluster, docker_client):
    a, b = cluster.nodes[0], cluster.nodes[2]
    ips = {n.name: n.status()["vpn"]["vpn_ip"] for n in cluster.nodes}
    with reachable_run(cluster, docker_client, a, b) as (ip, port):
        ports_before = port_rows(cluster)
        docker_client.containers.get(cluster.openvpn_container).restart(timeout=5)
        ok, took, last = probe_until_ok(docker_client, a.name, ip, port, 90)
        print(f"run reachable again {took:.1f} s after the OpenVPN server restart")
        assert ok, last
        assert {n.name: n.status()["vpn"]["vpn_ip"] for n in cluster.nodes} == ips
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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and f"VA-{run_id}-N" not in _chains(docker_client, node):
        time.sleep(0.05)
    assert f"VA-{run_id}-N" in _chains(docker_client, node)
    os.killpg(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    assert leftovers(cluster, docker_client)["holders"] == 1  # the crash left a holder behind

    cluster.start_node(node)
    cluster.wait_connected(60, nodes=[node])
    assert wait_zero(cluster, docker_client) == ZERO
    t = wait_task_done(cluster, http, task["id"])
    assert t["runs"][0]["status"] == "failed" and "restarted" in (t["runs"][0]["log"] or "")
    assert any("orphan" in f for f in node.status()["fixes"]), node.status()
    # the node works normally afterwards
    t2 = create_task(cluster, http, [node.organization_id], {"method": "peer", "kwargs": {"timeout": 1, "n_peers": 1}})
    assert wait_task_done(cluster, http, t2["id"])["runs"][0]["status"] in ("completed", "failed")
    assert wait_zero(cluster, docker_client) == ZERO


def _chains(docker_client, node) -> set:
    from .util import vpn_client_state

    st = vpn_client_state(docker_client, node.name)
    return st.run_chains("nat")


def test_leak_soak_300_runs(cluster, docker_client):
    http = user_session(cluster)
    total, in_flight, max_in_flight = 300, [], 12
    orgs = [n.organization_id for n in cluster.nodes]
    started = done = 0
    statuses = {}
    t0 = time.monotonic()
    while done < total and time.monotonic() - t0 < 900:
        while started < total and len(in_flight) < max_in_flight:
            t = create_task(cluster, http, [orgs[started % len(orgs)]],
                            {"method": "peer", "kwargs": {"timeout": 0.3, "n_peers": 1}})
            in_flight.append(t["id"])
            started += 1
        still = []
        for task_id in in_flight:
            t = http.get(f"{cluster.server_url}/task/{task_id}", timeout=10).json()
            if all(r["status"] in ("completed", "failed") for r in t["runs"]):
                done += 1
                statuses[t["runs"][0]["status"]] = statuses.get(t["runs"][0]["status"], 0) + 1
            else:
                still.append(task_id)
        in_flight = still
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    print(f"{done} runs in {elapsed:.0f} s ({done / elapsed:.1f}/s), statuses {statuses}")
    assert done == total
    found = wait_zero(cluster, docker_client)
    print(f"left behind: {found}")
    assert found == ZERO
