"""A vantage6 4.x algorithm, unchanged, on vpnagent nodes: the ring_sum example written with
vantage6-algorithm-tools 4.13.7 from PyPI (its wrap_algorithm, @algorithm_client, @data and
AlgorithmClient), in an image built offline from PyPI wheels. Each node offers a `default`
database (a CSV of its organisation's values); the run of a task asks for it by label."""
from __future__ import annotations

import pytest

from .util import user_session, wait_task_done

pytestmark = pytest.mark.docker


def _values(org_id: int) -> list[int]:
    return [100 * org_id + k for k in range(1, 4)]


@pytest.fixture(scope="module")
def v6_cluster(cluster, docker_client):
    from examples.ring_sum import build_v6

    build_v6.build(docker_client, progress=lambda m: print(f"[images] {m}"))
    data = cluster.workdir / "v6-data"
    data.mkdir(exist_ok=True)

    def database(node) -> dict:
        path = data / f"{node.name}.csv"
        path.write_text("value\n" + "".join(f"{v}\n" for v in _values(node.organization_id)))
        return {"databases": [{"label": "default", "uri": str(path), "type": "csv"}]}

    cluster.reconfigure_nodes(database)
    return cluster


def _create(cluster, http, orgs: list[int], **body) -> dict:
    from examples.ring_sum import build_v6

    r = http.post(f"{cluster.server_url}/task", timeout=10, json={
        "collaboration_id": cluster.collaboration_id, "organizations": orgs, "image": build_v6.TAG,
        "contract": "vantage6", **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_ring_sum_runs_unchanged_as_a_vantage6_algorithm(v6_cluster):
    cluster = v6_cluster
    orgs = sorted(n.organization_id for n in cluster.nodes)
    http = user_session(cluster)
    task = _create(cluster, http, [orgs[0]], input={"method": "central", "kwargs": {"timeout": 60}},
                   databases=[{"label": "default"}])
    assert task["contract"] == "vantage6"
    done = wait_task_done(cluster, http, task["id"], timeout=180)
    run = done["runs"][0]
    assert run["status"] == "completed", run.get("log")
    result = run["result"]
    # the total crossed the VPN: from the ring's first member to central's own port
    assert result["total"] == sum(sum(_values(o)) for o in orgs)
    assert result["organizations"] == orgs
    assert result["children_seen"] == orgs  # get_child_addresses() saw every partial
    # wait_for_results() + result.from_task() decoded every partial's output
    partials = sorted(result["partials"], key=lambda p: p["organization_id"])
    assert [p["organization_id"] for p in partials] == orgs
    assert sorted(p["position"] for p in partials) == list(range(len(orgs)))
    assert all(p["rows"] == 3 for p in partials)  # @data read the node's CSV


def test_a_database_the_node_does_not_have_fails_the_run_with_the_reason(v6_cluster):
    cluster = v6_cluster
    http = user_session(cluster)
    org = cluster.nodes[0].organization_id
    task = _create(cluster, http, [org], input={"method": "partial", "kwargs": {"n_nodes": 1}},
                   databases=[{"label": "registry"}])
    done = wait_task_done(cluster, http, task["id"], timeout=60)
    run = done["runs"][0]
    assert run["status"] == "failed"
    assert "database 'registry'" in run["log"] and "its databases: default" in run["log"]
