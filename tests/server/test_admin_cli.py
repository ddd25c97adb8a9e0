"""The admin lifecycle through `vpnagent-server`, against the store a real app serves:
list and show every kind of object, rotate a node's key, admins, --json on every admin
command (a new key in it exactly once), and bad input (unknown id, bad or taken name) as one
line on stderr, exit 2, nothing changed."""
from __future__ import annotations

import json

import pytest
import yaml
from sqlalchemy import text





def as_json(result: tuple[int, str, str]):
    status, out, err = result
    assert status == 0, err
    return json.loads(out)


def test_list_and_show_organizations_and_collaborations(world, cli):
    status, out, _ = cli("list-organizations")
    assert status == 0 and out.splitlines()[0] == "organization 1 org1 (collaborations: 1)"
    orgs = as_json(cli("list-organizations", "--json"))
    assert [(o["id"], o["name"], [c["id"] for c in o["collaborations"]]) for o in orgs] == \
        [(1, "org1", [1]), (2, "org2", [1]), (3, "org3", [1]), (4, "org4", [2])]
    org = as_json(cli("show-organization", "1", "--json"))
    assert [n["name"] for n in org["nodes"]] == ["n1"] and [u["name"] for u in org["users"]] == ["alice"]
    assert yaml.safe_load(cli("show-organization", "1")[1]) == org, "the text form is the same data as YAML"
    assert cli("list-collaborations")[1].splitlines() == [
        "collaboration 1 C (organizations: 1, 2, 3) data plane openvpn (server default)",
        "collaboration 2 D (organizations: 4) data plane openvpn (server default)"]
    collab = as_json(cli("show-collaboration", str(world.collab), "--json"))
    assert [n["name"] for n in collab["nodes"]] == ["n1", "n2", "n3"] and collab["tasks"] == 0


def test_list_and_show_nodes_with_vpn_ip_last_seen_and_certificates(world, cli):
    world.client.get("/api/vpn", headers=world.node_headers(0))  # a token (last seen), an IP and a certificate
    nodes = as_json(cli("list-nodes", "--json", "--collaboration", str(world.collab)))
    assert [n["name"] for n in nodes] == ["n1", "n2", "n3"]
    assert nodes[0]["vpn_ip"] and nodes[0]["last_seen_at"].endswith("Z") and nodes[1]["last_seen_at"] is None
    lines = cli("list-nodes", "--org", "1")[1].splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"node 1 n1 (organization 1, collaboration 1) VPN IP "
                                                   f"{nodes[0]['vpn_ip']}, last seen ")
    node = as_json(cli("show-node", "1", "--json"))
    assert node["organization"] == {"id": 1, "name": "org1"} and node["collaboration"] == {"id": 1, "name": "C"}
    assert [c["state"] for c in node["certificates"]] == ["valid"] and node["common_name"] == "node-1"
    world.client.get("/api/vpn", headers=world.node_headers(0))  # a fresh one revokes the first
    assert [c["state"] for c in as_json(cli("show-node", "1", "--json"))["certificates"]] == ["valid", "revoked"]


def test_list_and_show_tasks_with_their_runs(world, cli):
    assert cli("list-tasks")[1] == "no tasks\n"
    task = world.create_task([world.orgs[0], world.orgs[1]], name="sum")
    world.client.patch(f"/api/run/{task['runs'][0]['id']}", headers=world.node_headers(0), json={"status": "active"})
    status, out, _ = cli("list-tasks", "--collaboration", str(world.collab))
    assert status == 0 and out == "task 1 sum img:1 (collaboration 1) active: 1 pending, 1 active\n"
    shown = as_json(cli("show-task", "1", "--json"))
    assert [(r["node_id"], r["status"]) for r in shown["runs"]] == [(1, "active"), (2, "pending")]
    assert shown["subtasks"] == [] and "input" not in shown, "a researcher's data stays out"
    assert as_json(cli("list-tasks", "--json", "--collaboration", str(world.other_collab))) == []


def test_show_user(world, cli):
    assert as_json(cli("show-user", "1", "--json")) == {"id": 1, "name": "alice", "organization_id": 1,
                                                        "removed_at": None, "organization": {"id": 1, "name": "org1"}}


def test_rotating_a_node_key_ends_the_old_key_and_its_tokens_at_once(world, cli):
    old = world.node_headers(0)
    assert world.client.get("/api/node/self", headers=old).status_code == 200
    status, out, _ = cli("rotate-node-key", "1")
    lines = out.splitlines()
    assert status == 0 and lines[0] == "node 1 n1" and lines[1].startswith("api_key ") and "old key" in lines[2]
    r = world.client.get("/api/node/self", headers=old)
    assert r.status_code == 401 and "replaced" in r.json["msg"] and "api_key" in r.json["msg"]
    assert world.client.post("/api/token/node", json={"api_key": world.node_keys[0]}).status_code == 401
    token = world.client.post("/api/token/node", json={"api_key": lines[1].split()[1]}).json["access_token"]
    assert world.client.get("/api/node/self", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert world.client.get("/api/node/self", headers=world.node_headers(1)).status_code == 200, "another node"


def test_admins_are_added_listed_rotated_and_removed(world, cli):
    status, out, _ = cli("add-admin", "robot@example.org")
    assert status == 0 and out.startswith("admin 2 robot@example.org\napi_key ")
    key = out.splitlines()[1].split()[1]
    headers = world.admin_headers(key)
    assert world.client.get("/api/admin/node", headers=headers).status_code == 200
    assert cli("list-admins")[1].splitlines() == ["admin 1 ops", "admin 2 robot@example.org"]
    rotated = as_json(cli("rotate-admin-key", "2", "--json"))
    assert world.client.get("/api/admin/node", headers=headers).status_code == 401
    headers = world.admin_headers(rotated["api_key"])
    assert as_json(cli("remove-admin", "2", "--json"))["removed_at"]
    r = world.client.get("/api/admin/node", headers=headers)
    assert r.status_code == 401 and "removed" in r.json["msg"]
    assert "removed " in cli("list-admins")[1].splitlines()[1]


KEYED = [("add-node", ["n9", "--org", "4", "--collaboration", "3", "--api-key"]), ("add-user", ["bob", "--org", "1"]),
         ("rotate-user-key", ["1"]), ("rotate-node-key", ["2"]), ("add-admin", ["robot"]), ("rotate-admin-key", ["1"])]
UNKEYED = [("add-organization", ["org5"]), ("add-collaboration", ["E", "--org", "1", "--org", "4"]),
           ("remove-user", ["2"]), ("remove-node", ["3"]), ("remove-organization", ["3"]), ("remove-admin", ["1"]),
           ("list-users", []), ("list-admins", []), ("list-nodes", []), ("list-tasks", []),
           ("list-organizations", []), ("list-collaborations", []), ("show-node", ["1"]), ("show-user", ["1"]),
           ("show-organization", ["1"]), ("show-collaboration", ["1"])]


@pytest.mark.parametrize("command, rest", KEYED + UNKEYED)
def test_every_admin_command_prints_json_and_a_new_key_exactly_once(world, cli, command, rest):
    world.store.create_collaboration("F", [world.orgs[3]])  # 3: where org 4 has no node yet
    status, out, err = cli(command, *rest, "--json")
    assert status == 0, err
    data = json.loads(out)
    if (command, rest) in KEYED:
        key = data["api_key"]
        assert len(key) >= 40 and out.count(key) == 1
    else:
        assert "api_key" not in out


def test_add_node_json_carries_the_join_string_and_no_key(world, cli):
    """By default a new node gets a join string, not a key (the key is made when it joins)."""
    world.store.create_collaboration("F", [world.orgs[3]])
    status, out, err = cli("add-node", "n9", "--org", "4", "--collaboration", "3", "--json")
    assert status == 0, err
    data = json.loads(out)
    assert data["join_string"].startswith("vpnagent-join-1.") and data["name"] == "n9" and "api_key" not in out


def test_names_made_before_the_rules_are_still_listed_shown_and_removed(world, cli):
    with world.store.engine.begin() as conn:
        conn.execute(text("UPDATE node SET name = 'Old Node_1' WHERE id = 1"))
        conn.execute(text("UPDATE organization SET name = 'Hospital A (old)' WHERE id = 1"))
    assert as_json(cli("show-node", "1", "--json"))["organization"]["name"] == "Hospital A (old)"
    assert "node 1 Old Node_1 " in cli("list-nodes")[1]
    assert cli("rotate-node-key", "1")[0] == 0
    assert cli("remove-organization", "1")[0] == 0


@pytest.mark.parametrize("argv, words", [
    (["show-node", "99"], "node 99 does not exist"),
    (["show-task", "99"], "task 99 does not exist"),
    (["show-user", "99"], "user 99 does not exist"),
    (["show-organization", "99"], "organization 99 does not exist"),
    (["show-collaboration", "99"], "collaboration 99 does not exist"),
    (["list-nodes", "--org", "99"], "organization 99 does not exist"),
    (["list-nodes", "--collaboration", "99"], "collaboration 99 does not exist"),
    (["list-tasks", "--collaboration", "99", "--json"], "collaboration 99 does not exist"),
    (["rotate-node-key", "99", "--json"], "node 99 does not exist"),
    (["remove-admin", "99"], "admin 99 does not exist"),
    (["rotate-admin-key", "99"], "admin 99 does not exist"),
    (["add-node", "Node_9", "--org", "4", "--collaboration", "2"], "node name 'Node_9' must be 1-16 of a-z"),
    (["add-node", "n1", "--org", "4", "--collaboration", "2", "--json"], "node name 'n1' is taken"),
    (["add-node", "a" * 17, "--org", "4", "--collaboration", "2"], "for example 'node-a'"),
    (["add-organization", "bad name"], "organisation name 'bad name' must be"),
    (["add-organization", "org1", "--json"], "organisation name 'org1' is taken by organisation 1"),
    (["add-collaboration", "_study", "--org", "1"], "collaboration name '_study' must be"),
    (["add-collaboration", "C", "--org", "1"], "collaboration name 'C' is taken by collaboration"),
    (["add-collaboration", "E", "--org", "1", "--org", "99"], "organization 99 does not exist"),
    (["add-user", "bob smith", "--org", "1"], "user name 'bob smith' must be"),
    (["add-admin", ""], "admin name '' must be"),
])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(world, cli, argv, words):
    before = world.snapshot()
    status, out, err = cli(*argv)
    assert status == 2 and out == ""
    assert err.startswith("vpnagent-server: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert world.snapshot() == before


@pytest.mark.parametrize("command", ["rotate-node-key", "remove-admin", "rotate-admin-key"])
def test_removed_ones_stay_removed(world, cli, command):
    assert cli("remove-node", "1")[0] == 0 and cli("remove-admin", "1")[0] == 0
    before = world.snapshot()
    status, _, err = cli(command, "1")
    assert status == 2 and "was removed on" in err and "stays removed" in err
    assert world.snapshot() == before
