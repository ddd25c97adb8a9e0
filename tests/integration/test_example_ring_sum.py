"""The ring_sum example of docs/algorithm-guide.md in the real network: a central run at one
organisation starts a node run at every organisation, and the number goes round the ring
node to node over the VPN."""
from __future__ import annotations

import pytest

from .util import user_session, wait_task_done

pytestmark = pytest.mark.docker


def test_ring_sum_example_adds_every_organisations_value(cluster, docker_client):
    from examples.ring_sum import build

    build.build(docker_client, progress=lambda m: print(f"[images] {m}"))
    orgs = sorted(n.organization_id for n in cluster.nodes)
    values = {str(o): 1000 + 17 * o for o in orgs}
    http = user_session(cluster)
    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": cluster.collaboration_id, "organizations": [orgs[0]], "image": build.TAG,
        "input": {"method": "central", "kwargs": {"values": values, "timeout": 60}}})
    assert r.status_code == 201, r.text
    done = wait_task_done(cluster, http, r.json()["id"], timeout=120)
    run = done["runs"][0]
    assert run["status"] == "completed", run.get("log")
    assert run["result"] == {"organizations": orgs, "total": sum(values.values())}
