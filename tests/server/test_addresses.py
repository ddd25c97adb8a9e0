"""GET /vpn/algorithm/addresses against vantage6 4.13.7's rules, on a real store.

The table is generated: every one of the 64 combinations of the six flags, with no label,
a matching one and one that matches nothing, asked by callers at three positions in a task
tree, through the Flask test client. Each answer is compared with an oracle written here
from vantage6's code (vantage6 4.13.7, server/resource/port.py, VPNAddress.get), not from
server_ext/addresses.py."""
import itertools
from urllib.parse import urlencode

import pytest

from tests.server.conftest import BACKENDS

ONLY = ["only_children", "only_parent", "only_siblings", "only_self"]
INCLUDE = ["include_children", "include_parent"]
FLAGS = ONLY + INCLUDE
# Values a flag may carry. vantage6 reads `True if args.get(flag) else False`: every
# non-empty string is on, "false" and "0" too; an empty value is off, like a missing one.
ON_VALUES = ["1", "true", "false", "0", "yes", "False"]


# ----------------------------------------------------------------- the oracle
def oracle(args: dict[str, str], caller: dict, tree: dict) -> int | list[dict]:
    """vantage6 4.13.7's VPNAddress.get, step by step: the status (400) or the addresses.
    `tree` holds tasks {id: {"parent", "runs": {run_id: org}}}, ports [(run_id, port, label)]
    and the VPN IP of each organisation's node."""
    on = {f: True if args.get(f) else False for f in FLAGS}
    if [on[f] for f in ONLY].count(True) > 1:
        return 400
    # vantage6's second check pairs include_children/only_children and include_parent/
    # only_parent and refuses when more than one pair is on: that needs two only_ flags,
    # which the first check refused already. So it never fires.
    pairs = [on["include_children"] and on["only_children"], on["include_parent"] and on["only_parent"]]
    assert pairs.count(True) <= 1
    task_id = caller["task"]
    task_ids = [task_id]
    if on["include_children"] or on["only_children"]:
        subtasks = [t for t, info in tree["tasks"].items() if info["parent"] == task_id]
        task_ids = subtasks if on["only_children"] else task_ids + subtasks
    if on["include_parent"] or on["only_parent"]:
        parent = tree["tasks"][task_id]["parent"]
        if parent is not None:
            task_ids = [parent] if on["only_parent"] else task_ids + [parent]
    if on["only_siblings"] or on["only_self"]:
        task_ids = [task_id]
    out = []
    for run_id, port, label in tree["ports"]:
        task = next(t for t, info in tree["tasks"].items() if run_id in info["runs"])
        org = tree["tasks"][task]["runs"][run_id]
        if task not in task_ids:
            continue
        if on["only_siblings"] and org == caller["org"]:
            continue
        if not on["only_siblings"] and on["only_self"] and org != caller["org"]:
            continue
        if args.get("label") and label != args["label"]:
            continue
        out.append({"ip": tree["ips"][org], "port": port, "label": label, "organization_id": org, "task_id": task,
                    "parent_id": tree["tasks"][task]["parent"], "run_id": run_id})
    return sorted(out, key=lambda a: a["port"])


# ----------------------------------------------------------------- the tree
@pytest.fixture(scope="module", params=BACKENDS)
def tree(request, tmp_path_factory):
    """Tasks made through the API, as an algorithm makes them:
        R  (top-level, by a researcher)  orgs 1, 2
        ├─ A  (subtask of R)             orgs 1, 2, 3
        │  └─ G  (subtask of A)          orgs 1, 3
        └─ B  (subtask of R)             orgs 2, 3
        U  (unrelated top-level task)    org 1
    Every run has an "echo" port; runs at org 1 also a "metrics" port, runs at org 3 also
    an unlabelled one."""
    from tests.server.conftest import build_world, fresh_database

    directory = tmp_path_factory.mktemp("addresses")
    with fresh_database(request.param, directory, request) as url:
        world = build_world(directory, url)
        try:
            yield _grow(world)
        finally:
            world.store.close()


def _grow(world) -> dict:
    o1, o2, o3 = world.orgs[:3]
    node_of = {o1: 0, o2: 1, o3: 2}
    ips = {}
    for org, i in node_of.items():  # VPN IPs are allocated when a node first fetches its config
        assert world.client.get("/api/vpn", headers=world.node_headers(i)).status_code == 200
        ips[org] = world.client.get("/api/node/self", headers=world.node_headers(i)).json["vpn_ip"]
    tasks: dict[int, dict] = {}
    names: dict[str, int] = {}

    def add(name: str, task: dict) -> dict:
        tasks[task["id"]] = {"parent": task["parent_id"], "runs": {r["id"]: r["organization_id"] for r in task["runs"]}}
        names[name] = task["id"]
        return task

    def run_of(name: str, org: int) -> int:
        return next(r for r, o in tasks[names[name]]["runs"].items() if o == org)

    def as_container(name: str, org: int) -> dict:
        return world.container_headers(node_of[org], run_of(name, org))

    add("R", world.create_task([o1, o2]))
    add("U", world.create_task([o1]))
    add("A", world.create_task([o1, o2, o3], headers=as_container("R", o1)))
    add("B", world.create_task([o2, o3], headers=as_container("R", o1)))
    add("G", world.create_task([o1, o3], headers=as_container("A", o1)))
    ports = []
    number = itertools.count(7000)
    for info in tasks.values():
        for run_id, org in info["runs"].items():
            for label in ["echo"] + (["metrics"] if org == o1 else []) + ([None] if org == o3 else []):
                port = next(number)
                r = world.client.post("/api/port", headers=world.node_headers(node_of[org]),
                                      json={"run_id": run_id, "port": port, "label": label})
                assert r.status_code == 201, r.json
                ports.append((run_id, port, label))
    callers = {
        # a top-level task with children
        "top": {"task": names["R"], "org": o1},
        # a subtask with a parent, siblings (B at org 2) and a sibling task (A), no children
        "child": {"task": names["B"], "org": o3},
        # a subtask with a parent and children
        "middle": {"task": names["A"], "org": o2},
    }
    for caller in callers.values():
        caller["headers"] = world.container_headers(node_of[caller["org"]], run_of_task(tasks, caller))
    return {"world": world, "tasks": tasks, "names": names, "ports": ports, "ips": ips, "callers": callers,
            "orgs": (o1, o2, o3), "node_of": node_of}


def run_of_task(tasks: dict, caller: dict) -> int:
    return next(r for r, o in tasks[caller["task"]]["runs"].items() if o == caller["org"])


def ask(tree: dict, caller: str, params: list[tuple[str, str]]):
    query = f"?{urlencode(params)}" if params else ""
    r = tree["world"].client.get(f"/api/vpn/algorithm/addresses{query}", headers=tree["callers"][caller]["headers"])
    return r.status_code, r.json


def combinations() -> list[tuple[int, dict[str, bool]]]:
    return [(k, dict(zip(FLAGS, bits))) for k, bits in enumerate(itertools.product([False, True], repeat=6))]


def query_for(k: int, flags: dict[str, bool], label: str | None) -> list[tuple[str, str]]:
    """The flags as a query: an "on" flag with one of ON_VALUES ("false" and "0" among them),
    an "off" flag left out or sent empty, in turn."""
    params = []
    for i, name in enumerate(FLAGS):
        if flags[name]:
            params.append((name, ON_VALUES[(k + i) % len(ON_VALUES)]))
        elif (k + i) % 2:
            params.append((name, ""))
    if label is not None:
        params.append(("label", label))
    elif k % 3 == 0:
        params.append(("label", ""))  # an empty label filters nothing
    return params


# ----------------------------------------------------------------- the generated table
@pytest.mark.parametrize("label", [None, "echo", "nope"], ids=["no-label", "matching-label", "other-label"])
@pytest.mark.parametrize("caller", ["top", "child", "middle"])
def test_all_64_flag_combinations_answer_as_vantage6(tree, caller, label):
    wrong = []
    statuses = {200: 0, 400: 0}
    for k, flags in combinations():
        params = query_for(k, flags, label)
        expected = oracle(dict(params), tree["callers"][caller], tree)
        status, data = ask(tree, caller, params)
        statuses[status] = statuses.get(status, 0) + 1
        if expected == 400:
            if status != 400 or not data.get("msg"):
                wrong.append((params, "expected 400", status, data))
            continue
        got = sorted(data["addresses"], key=lambda a: a["port"]) if status == 200 else (status, data)
        if got != expected:
            wrong.append((params, [a["port"] for a in expected], got))
    assert not wrong, "\n".join(map(str, wrong))
    # 64 combinations: 5 with at most one only_ flag, times 4 settings of the include_ flags
    assert statuses == {200: 20, 400: 44}


def test_the_table_is_not_trivial(tree):
    """The oracle itself tells the positions apart: the table compares something."""
    caller = tree["callers"]
    answers = {name: {tuple(a["run_id"] for a in oracle({f: "1" for f in flags if flags[f]}, caller[name], tree))
                      for _k, flags in combinations()
                      if oracle({f: "1" for f in flags if flags[f]}, caller[name], tree) != 400}
               for name in caller}
    assert all(len(a) >= 3 for a in answers.values()), answers
    assert oracle({"only_children": "1"}, caller["child"], tree) == []


# ----------------------------------------------------------------- the quirks, spelled out
def _runs(data) -> set[int]:
    return {a["run_id"] for a in data["addresses"]}


def _runs_of(tree, name: str, orgs=None) -> set[int]:
    return {r for r, o in tree["tasks"][tree["names"][name]]["runs"].items() if orgs is None or o in orgs}


def test_two_only_flags_are_400_even_when_one_says_false(tree):
    status, data = ask(tree, "middle", [("only_children", "1"), ("only_parent", "false")])
    assert status == 400 and "only_" in data["msg"] and "'false'" in data["msg"]


def test_false_and_0_turn_a_flag_on(tree):
    _, own = ask(tree, "middle", [("only_self", "1")])
    _, with_false = ask(tree, "middle", [("only_self", "false")])
    assert _runs(with_false) == _runs(own) == {run_of_task(tree["tasks"], tree["callers"]["middle"])}
    _, zero = ask(tree, "middle", [("include_children", "0")])
    assert _runs(zero) == _runs_of(tree, "A") | _runs_of(tree, "G")
    _, empty = ask(tree, "middle", [("include_children", "")])
    assert _runs(empty) == _runs_of(tree, "A")


def test_only_parent_on_a_top_level_task_gives_its_own_tasks_runs(tree):
    status, data = ask(tree, "top", [("only_parent", "1")])
    assert status == 200 and _runs(data) == _runs_of(tree, "R")


def test_siblings_are_the_same_task_at_the_other_organisations(tree):
    o1, o2, o3 = tree["orgs"]
    _, data = ask(tree, "child", [("only_siblings", "1")])
    assert _runs(data) == _runs_of(tree, "B", {o2}), "not task A, which only shares the parent"
    _, data = ask(tree, "middle", [("only_siblings", "1"), ("label", "echo")])
    assert _runs(data) == _runs_of(tree, "A", {o1, o3})


def test_an_only_flag_with_an_include_flag_is_accepted(tree):
    status, data = ask(tree, "middle", [("only_children", "1"), ("include_parent", "1")])
    assert status == 200 and _runs(data) == _runs_of(tree, "G") | _runs_of(tree, "R")
    status, data = ask(tree, "middle", [("only_self", "1"), ("include_children", "1")])
    assert status == 200 and _runs(data) == {run_of_task(tree["tasks"], tree["callers"]["middle"])}


def test_addresses_carry_the_server_allocated_ip_and_the_ids(tree):
    _, data = ask(tree, "top", [("only_children", "1"), ("label", "echo")])
    assert {a["task_id"] for a in data["addresses"]} == {tree["names"]["A"], tree["names"]["B"]}
    assert all(a["parent_id"] == tree["names"]["R"] for a in data["addresses"])
    assert {a["organization_id"]: a["ip"] for a in data["addresses"]} == tree["ips"]
    assert len(set(tree["ips"].values())) == 3


# ----------------------------------------------------------------- isolation follows the same family
def test_peers_are_own_task_parent_and_children_not_sibling_tasks(tree):
    """GET /node/peers (the firewall's allow list) holds exactly what addresses can return."""
    world = tree["world"]
    o1, o2, o3 = tree["orgs"]
    node = tree["node_of"][o3]
    r = world.client.get("/api/node/peers", headers=world.node_headers(node))
    assert r.status_code == 200
    peers = {entry["run_id"]: {p["run_id"] for p in entry["peers"]} for entry in r.json["runs"]}
    b3 = next(iter(_runs_of(tree, "B", {o3})))
    assert peers[b3] == _runs_of(tree, "B") | _runs_of(tree, "R"), "B sees itself and its parent, not task A"
    a3 = next(iter(_runs_of(tree, "A", {o3})))
    assert peers[a3] == _runs_of(tree, "A") | _runs_of(tree, "R") | _runs_of(tree, "G")


def test_finished_runs_disappear_from_the_address_book(world):
    """vantage6 deletes a run's ports when it ends; so do we."""
    for i in range(2):
        assert world.client.get("/api/vpn", headers=world.node_headers(i)).status_code == 200
    task = world.create_task([world.orgs[0], world.orgs[1]])
    r1, r2 = (r["id"] for r in task["runs"])
    for i, run_id in enumerate((r1, r2)):
        assert world.client.post("/api/port", headers=world.node_headers(i),
                                 json={"run_id": run_id, "port": 6001 + i, "label": "echo"}).status_code == 201
    headers = world.container_headers(0, r1)
    assert len(world.client.get("/api/vpn/algorithm/addresses", headers=headers).json["addresses"]) == 2
    assert world.client.patch(f"/api/run/{r2}", headers=world.node_headers(1),
                              json={"status": "completed"}).status_code == 200
    assert [a["run_id"] for a in world.client.get("/api/vpn/algorithm/addresses", headers=headers).json["addresses"]] \
        == [r1]
