"""The server tells nodes what concerns them as it happens (issue 17), shown on the real
cluster with resyncs minutes apart, so only the push can be what acted:
- a run is taken within a second of its task's creation;
- a node whose pushes are lost on the way still runs its tasks, through its resync;
- a removed node knows at once (its status says refused)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.waiting import wait_for

from .util import outsider_session, store_of, task_done, wait_live

pytestmark = pytest.mark.docker

MINUTES = 600  # resync_interval: nothing but the push acts within a test


@contextmanager
def own_node(cluster, suffix: str, env: dict | None = None, **overrides) -> Iterator:
    node = cluster.add_node(f"{cluster.prefix}{suffix}", **overrides)
    cluster.start_node(node, env=env)
    try:
        cluster.wait_connected(60, nodes=[node])
        wait_for(node.status, "the node's event stream to open", 20, 0.1,
                 until=lambda s: s and s["push"]["state"] == "connected")
        yield node
    finally:
        cluster.stop_node(node)


def run_of(http, cluster, task_id: int) -> dict:
    r = http.get(f"{cluster.server_url}/task/{task_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["runs"][0]


def echo_task(http, cluster, collab: int, node) -> tuple[dict, float]:
    t0 = time.monotonic()
    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": collab, "organizations": [node.organization_id], "image": "vpnagent/echo:latest",
        "input": {"method": "peer", "kwargs": {"timeout": 5, "n_peers": 0}}})
    assert r.status_code == 201, r.text
    return r.json(), t0


def test_a_run_is_taken_within_a_second_of_its_task(cluster):
    with own_node(cluster, "pu", resync_interval=MINUTES) as node:
        http, collab = outsider_session(cluster, node)
        for _ in range(3):  # not once by luck
            task, t0 = echo_task(http, cluster, collab, node)
            run = wait_for(lambda: run_of(http, cluster, task["id"]), "the node to take the run", 5, 0.02,
                           until=lambda r: r["status"] != "pending")
            taken = time.monotonic() - t0
            print(f"run {run['id']} taken {taken * 1000:.0f} ms after its task was created")
            assert taken < 1.0, f"the run waited {taken:.2f} s with resyncs {MINUTES} s apart"
            wait_for(lambda: run_of(http, cluster, task["id"]), "the run to end", 60,
                     until=lambda r: r["status"] in ("completed", "failed"))
        assert node.status()["push"]["connects"] == 1


def test_lost_pushes_are_made_up_by_the_resync(cluster):
    with own_node(cluster, "pm", env={"VPNAGENT_FAULT_MUTE_PUSH": "1"}, resync_interval=3) as node:
        http, collab = outsider_session(cluster, node)
        task, t0 = echo_task(http, cluster, collab, node)
        done = wait_for(lambda: {"runs": [run_of(http, cluster, task["id"])]}, "the run to end", 60,
                        until=task_done)
        took = time.monotonic() - t0
        assert done["runs"][0]["status"] == "completed", done
        st = node.status()
        assert st["push"]["events"] >= 1, "no event reached the node: the test shows nothing"
        print(f"run completed {took:.1f} s after its task, {st['push']['events']} event(s) dropped")


def test_a_removed_node_is_told_at_once(cluster):
    with own_node(cluster, "pr", resync_interval=MINUTES) as node:
        store = store_of(cluster)
        try:
            t0 = time.monotonic()
            store.remove_node(node.node_id)  # what remove-node commits (it then also cuts the VPN session)
        finally:
            store.close()
        st = wait_for(node.status, "the node's status to say the server refuses it", 5, 0.05,
                      until=lambda s: s and s["server"]["state"] == "refused")
        took = time.monotonic() - t0
        print(f"node told {took:.2f} s after its removal was committed: {st['server']['error']}")
        assert took < 2.0, "only the push can have told it: its resyncs are minutes apart"
        assert not st["vpn"]["connected"]


def test_killing_a_task_stops_its_container_at_once(cluster, docker_client):
    with own_node(cluster, "pk", resync_interval=MINUTES) as node:
        http, collab = outsider_session(cluster, node)
        r = http.post(f"{cluster.server_url}/task", timeout=10, json={
            "collaboration_id": collab, "organizations": [node.organization_id], "image": "vpnagent/echo:latest",
            "input": {"method": "peer", "kwargs": {"timeout": 120, "n_peers": 5}}})  # waits for peers that never come
        assert r.status_code == 201, r.text
        task = r.json()
        run_id = task["runs"][0]["id"]
        wait_live(node, run_id)

        def run_containers() -> list:
            return docker_client.containers.list(all=True, filters={"label": f"vpnagent.run={run_id}"})

        assert run_containers()
        t0 = time.monotonic()
        r = http.post(f"{cluster.server_url}/task/{task['id']}/kill", timeout=10)
        assert r.status_code == 200 and r.json()["killed"] == [run_id], r.text
        wait_for(run_containers, "the run's containers to go", 10, 0.05, until=lambda cs: cs == [])
        gone = time.monotonic() - t0
        print(f"run {run_id}'s containers gone {gone:.2f} s after the kill")
        assert gone < 5.0, "only the push can have stopped it this soon: its resyncs are minutes apart"
        run = run_of(http, cluster, task["id"])
        assert run["status"] == "killed by user" and "killed by user" in run["log"], run
        wait_for(node.status, "the run to leave the node's status", 10,
                 until=lambda s: s and not s["runs"] and not s["reports_waiting"])
