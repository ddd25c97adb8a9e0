"""GET /vpn/algorithm/addresses: every flag and every bad combination, on a real task family."""
import pytest

from server_ext.addresses import AddressQuery, AddressQueryError, TaskFamily, selected_task_ids

FAM = TaskFamily(task_id=10, parent_id=1, child_ids=(20, 21), sibling_ids=(11, 12))


@pytest.mark.parametrize("flags, expected", [
    ({}, {10}),
    ({"include_children": True}, {10, 20, 21}),
    ({"include_parent": True}, {10, 1}),
    ({"include_children": True, "include_parent": True}, {10, 1, 20, 21}),
    ({"only_children": True}, {20, 21}),
    ({"only_parent": True}, {1}),
    ({"only_siblings": True}, {11, 12}),
    ({"only_self": True}, None),
])
def test_each_flag_selects_its_tasks(flags, expected):
    assert selected_task_ids(AddressQuery(**flags), FAM) == expected


def test_top_level_task_has_no_parent():
    top = TaskFamily(task_id=1, parent_id=None, child_ids=(10,), sibling_ids=())
    assert selected_task_ids(AddressQuery(only_parent=True), top) == set()
    assert selected_task_ids(AddressQuery(include_parent=True), top) == {1}


ONLY = ["only_children", "only_parent", "only_siblings", "only_self"]
BAD = [{a: True, b: True} for i, a in enumerate(ONLY) for b in ONLY[i + 1:]]
BAD += [{a: True, b: True} for a in ONLY for b in ("include_children", "include_parent")]


@pytest.mark.parametrize("flags", BAD, ids=lambda f: "+".join(f))
def test_bad_combinations_are_refused(flags):
    with pytest.raises(AddressQueryError):
        AddressQuery(**flags).validate()


# ----------------------------------------------------------------- through the API
def _register(world, node_index: int, run_id: int, port: int, label: str = "echo"):
    r = world.client.post("/api/port", headers=world.node_headers(node_index),
                          json={"run_id": run_id, "port": port, "label": label})
    assert r.status_code == 201, r.json


@pytest.fixture
def family(world):
    """parent P on org1; P creates child A on orgs 1+2 and child B on org3; every run has a port."""
    for i in range(3):  # VPN IPs are allocated when a node first fetches its config
        assert world.client.get("/api/vpn", headers=world.node_headers(i)).status_code == 200
    parent = world.create_task([world.orgs[0]])
    p_run = parent["runs"][0]["id"]
    _register(world, 0, p_run, 6000, "p")
    ph = world.container_headers(0, p_run)
    a = world.create_task([world.orgs[0], world.orgs[1]], headers=ph)
    b = world.create_task([world.orgs[2]], headers=ph)
    a1, a2 = (r["id"] for r in a["runs"])
    b1 = b["runs"][0]["id"]
    _register(world, 0, a1, 6001)
    _register(world, 1, a2, 6101)
    _register(world, 1, a2, 6102, "metrics")
    _register(world, 2, b1, 6201)
    return {"parent": parent, "a": a, "b": b, "p_run": p_run, "a1": a1, "a2": a2, "b1": b1,
            "a1h": world.container_headers(0, a1), "ph": ph}


def _get(world, headers, query=""):
    r = world.client.get(f"/api/vpn/algorithm/addresses{query}", headers=headers)
    return r.status_code, r.json


def _ports(addresses):
    return sorted(a["port"] for a in addresses)


@pytest.mark.parametrize("query, expected", [
    ("", [6001, 6101, 6102]),
    ("?label=echo", [6001, 6101]),
    ("?only_self=true", [6001]),
    ("?only_parent=1", [6000]),
    ("?only_siblings=true", [6201]),
    ("?only_children=true", []),
    ("?include_parent=true", [6000, 6001, 6101, 6102]),
    ("?include_parent=true&label=echo", [6001, 6101]),
])
def test_child_sees_what_each_flag_allows(world, family, query, expected):
    status, data = _get(world, family["a1h"], query)
    assert status == 200, data
    assert _ports(data["addresses"]) == expected


def test_parent_sees_its_children_with_ip_and_ids(world, family):
    status, data = _get(world, family["ph"], "?only_children=true&label=echo")
    assert status == 200
    assert _ports(data["addresses"]) == [6001, 6101, 6201]
    a = next(x for x in data["addresses"] if x["port"] == 6201)
    assert a["task_id"] == family["b"]["id"] and a["parent_id"] == family["parent"]["id"]
    assert a["organization_id"] == world.orgs[2] and a["ip"].startswith("10.76.")
    status, data = _get(world, family["ph"], "?include_children=1")
    assert _ports(data["addresses"]) == [6000, 6001, 6101, 6102, 6201]


def test_ips_are_the_server_allocated_ones_and_distinct(world, family):
    _, data = _get(world, family["ph"], "?only_children=true&label=echo")
    by_org = {a["organization_id"]: a["ip"] for a in data["addresses"]}
    assert len(set(by_org.values())) == 3
    for i in range(3):
        assert world.client.get("/api/node/self", headers=world.node_headers(i)).json["vpn_ip"] == by_org[world.orgs[i]]


@pytest.mark.parametrize("query", ["?only_children=1&only_parent=1", "?only_self=1&include_children=1",
                                   "?only_siblings=true&include_parent=true", "?only_children=maybe"])
def test_bad_combinations_through_the_api_are_400(world, family, query):
    status, data = _get(world, family["a1h"], query)
    assert status == 400 and data["msg"]


def test_finished_runs_disappear_from_the_address_book(world, family):
    r = world.client.patch(f"/api/run/{family['a2']}", headers=world.node_headers(1), json={"status": "completed"})
    assert r.status_code == 200
    _, data = _get(world, family["a1h"])
    assert _ports(data["addresses"]) == [6001]
