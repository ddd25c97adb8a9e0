"""MockAlgorithmClient: an algorithm's methods run per organisation in process, and every
call the real client has answers from what they returned (tests/mock_algorithm.py)."""
from __future__ import annotations

import pytest

from tests import mock_algorithm
from vpnagent_algorithm import AlgorithmClientError, MockAlgorithmClient

DATASETS = [[[1, 2, 3]], [[10, 20]], [[100]]]


def mock(**kwargs) -> MockAlgorithmClient:
    return MockAlgorithmClient(DATASETS, "tests.mock_algorithm", **kwargs)


def test_central_creates_partials_and_collects_their_results():
    client = mock(organization_ids=[4, 5, 6], node_ids=[40, 50, 60], collaboration_id=9)
    assert (client.organization_id, client.node_id, client.collaboration_id) == (4, 40, 9)
    task = client.task.create(input_={"method": "central", "kwargs": {"factor": 2}}, organizations=[4])
    assert task["status"] == "completed" and task["parent_id"] is None
    (out,) = client.wait_for_results(task["id"])
    assert out == {"total": 2 * (6 + 30 + 100), "task_id": 2, "n": 3}
    # the central's subtask, created from inside the run, is in the same world
    partials = client.result.from_task(2)
    assert [(p["organization_id"], p["node_id"], p["task_id"], p["run_id"]) for p in partials] == \
        [(4, 40, 2, 2), (5, 50, 2, 3), (6, 60, 2, 4)]  # run 1 is the central's
    assert client.task.get(2)["parent_id"] == 1 and client.task.get(2)["name"] == "partials"
    # each run got a fresh copy of its data
    assert client.task.create({"method": "partial"}, organizations=[4])["id"] == 3
    assert client.result.from_task(3) == [{"organization_id": 4, "sum": 6, "task_id": 3, "run_id": 5, "node_id": 40}]


def test_defaults_are_vantage6s_ids_and_args_follow_the_data():
    client = MockAlgorithmClient([[], []], mock_algorithm)  # a module object works as well as its name
    assert client.organization_id == 0 and [o["id"] for o in client.organization.list()] == [0, 1]
    task = client.task.create({"method": "positional", "args": [7, 8]}, organizations=[1, 0])
    assert client.wait_for_results(task["id"]) == [[1, 7, 8], [0, 7, 8]]


def test_runs_and_results_by_id():
    client = mock()
    task = client.task.create({"method": "partial"}, organizations=[0, 2])
    runs = client.run.from_task(task["id"])
    assert [(r["organization_id"], r["status"]) for r in runs] == [(0, "completed"), (2, "completed")]
    assert client.run.get(runs[1]["id"])["task"] == {"id": task["id"]}
    assert client.result.get(runs[1]["id"])["sum"] == 100
    for call in (lambda: client.run.get(99), lambda: client.task.get(99), lambda: client.organization.get(99)):
        with pytest.raises(AlgorithmClientError) as info:
            call()
        assert info.value.status == 404


def test_organization_collaboration_and_vpn():
    assert mock().collaboration.get() == {"id": 1, "name": "mock-collaboration",
                                          "organizations": [{"id": 0}, {"id": 1}, {"id": 2}], "encrypted": False}
    assert mock().organization.get(1) == {"id": 1, "name": "mock-1", "public_key": ""}
    assert mock().vpn.get_addresses() == [] and mock().vpn.get_child_addresses() == []
    ring = {"ip": "127.0.0.1", "port": 7001, "label": "ring", "organization_id": 0, "task_id": 1, "parent_id": None}
    other = {**ring, "port": 7002, "label": "metrics"}
    client = mock(addresses=[ring, other])
    assert client.vpn.get_addresses() == [ring, other] and client.vpn.get_own_address() == [ring, other]
    task = client.task.create({"method": "peers"}, organizations=[1])
    assert client.wait_for_results(task["id"]) == [[ring]]


def test_vantage6_decorated_methods_get_the_mock_keywords():
    client = mock()
    task = client.task.create({"method": "v6_style", "kwargs": {"x": 5}}, organizations=[1, 2])
    assert client.wait_for_results(task["id"]) == [{"org": 1, "rows": 2, "x": 5}, {"org": 2, "rows": 1, "x": 5}]


def test_mistakes_are_clear():
    client = mock()
    with pytest.raises(ValueError, match="at least one"):
        client.task.create({"method": "partial"}, organizations=[])
    with pytest.raises(ValueError, match=r"\[7\] have no datasets"):
        client.task.create({"method": "partial"}, organizations=[7])
    with pytest.raises(ValueError, match="'method'"):
        client.task.create({"kwargs": {}}, organizations=[0])
    with pytest.raises(TypeError, match="vantage6's order"):
        client.task.create([0], {"method": "partial"})
    with pytest.raises(TypeError, match="not JSON serializable"):  # the node could not report it either
        client.task.create({"method": "not_json"}, organizations=[0])
    failed = client.task.get(1)
    assert failed["status"] == "failed" and failed["runs"] == [{"id": 1, "organization_id": 0, "status": "failed"}]
    assert client.wait_for_results(1) == []
    with pytest.raises(ValueError, match="2 organization_ids for 3 datasets"):
        mock(organization_ids=[1, 2])
