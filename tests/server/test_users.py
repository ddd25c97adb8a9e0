"""Researchers as a credential lifecycle, through `vpnagent-server` against the store a
real app serves: list, rotate a key, remove one, remove an organisation. A refused
credential is always 401, at once; a refused command exits 2 with one line and changes
nothing."""
from __future__ import annotations

import json

import pytest





def user_ids(world) -> dict[str, int]:
    return {u.name: u.id for u in world.store.list_users()}


def can_list_organizations(world, headers: dict) -> int:
    return world.client.get(f"/api/organization?collaboration_id={world.collab}", headers=headers).status_code


def test_list_users_as_lines_and_json(world, cli):
    status, out, _ = cli("list-users")
    assert status == 0
    assert out.splitlines() == [f"user 1 alice (organization {world.orgs[0]})",
                                f"user 2 mallory (organization {world.orgs[3]})"]
    status, out, _ = cli("list-users", "--json", "--org", str(world.orgs[3]))
    assert status == 0 and json.loads(out) == [{"id": 2, "name": "mallory", "organization_id": world.orgs[3],
                                                "removed_at": None}]
    assert cli("list-users", "--org", str(world.orgs[1]))[1] == "no users\n"


def test_rotating_a_key_prints_the_new_one_and_ends_the_old_key_and_its_tokens_at_once(world, cli):
    alice = world.user_headers()
    mallory = world.user_headers(world.other_user_key)
    assert can_list_organizations(world, alice) == 200
    status, out, _ = cli("rotate-user-key", str(user_ids(world)["alice"]))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "user 1 alice" and lines[1].startswith("api_key ") and "old key" in lines[2]
    new_key = lines[1].split()[1]
    r = world.client.post("/api/token/user", json={"api_key": world.user_key})
    assert r.status_code == 401 and "unknown" in r.json["msg"]
    r = world.client.get(f"/api/organization?collaboration_id={world.collab}", headers=alice)
    assert r.status_code == 401 and "replaced" in r.json["msg"]
    assert can_list_organizations(world, world.user_headers(new_key)) == 200
    assert world.client.get("/api/task/1", headers=mallory).status_code == 404, "another user's token still works"
    assert world.store.list_users()[0].removed_at is None


def test_a_removed_user_is_401_everywhere_at_once_and_stays_listed(world, cli):
    alice = world.user_headers()
    before = world.client.get(f"/api/organization?collaboration_id={world.collab}", headers=alice)
    assert before.status_code == 200
    status, out, _ = cli("remove-user", "1")
    assert status == 0 and out.startswith("user 1 (alice) removed")
    for method, url, body in [("get", f"/api/organization?collaboration_id={world.collab}", None),
                              ("get", "/api/task/1", None),
                              ("post", "/api/task", {"collaboration_id": world.collab, "organizations": [world.orgs[0]],
                                                     "image": "img:1"})]:
        r = getattr(world.client, method)(url, headers=alice, json=body)
        assert r.status_code == 401 and "removed" in r.json["msg"], (url, r.status_code, r.json)
    assert world.client.post("/api/token/user", json={"api_key": world.user_key}).status_code == 401
    listed = json.loads(cli("list-users", "--json")[1])
    assert listed[0]["removed_at"] and listed[1]["removed_at"] is None
    assert "removed " in cli("list-users")[1].splitlines()[0]


def test_removing_an_organisation_removes_its_users(world, cli):
    alice, mallory = world.user_headers(), world.user_headers(world.other_user_key)
    status, out, _ = cli("remove-organization", str(world.orgs[0]))
    assert status == 0
    assert "user 1 (alice) removed" in out and "1 node(s) and 1 user(s) removed" in out
    r = world.client.post("/api/task", headers=alice,
                          json={"collaboration_id": world.collab, "organizations": [world.orgs[1]], "image": "img:1"})
    assert r.status_code == 401, r.json
    assert world.client.post("/api/token/user", json={"api_key": world.user_key}).status_code == 401
    assert world.client.get("/api/task/1", headers=mallory).status_code == 404, "another organisation's user is in"
    status, out, _ = cli("remove-organization", str(world.orgs[0]))  # again: nothing left to remove, not an error
    assert status == 0 and "and 0 user(s) removed" in out.splitlines()[-1]


@pytest.mark.parametrize("argv, words", [
    (["remove-user", "99"], "user 99 does not exist"),
    (["rotate-user-key", "99"], "user 99 does not exist"),
    (["list-users", "--org", "99"], "organization 99 does not exist"),
    (["remove-organization", "99"], "organization 99 does not exist"),
])
def test_unknown_ids_exit_2_with_one_line_and_change_nothing(world, cli, argv, words):
    before = world.snapshot()
    status, out, err = cli(*argv)
    assert status == 2 and out == ""
    assert err.startswith("vpnagent-server: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert world.snapshot() == before


@pytest.mark.parametrize("command", ["remove-user", "rotate-user-key"])
def test_a_removed_user_cannot_be_removed_or_rotated_again(world, cli, command):
    assert cli("remove-user", "1")[0] == 0
    before = world.snapshot()
    status, _, err = cli(command, "1")
    assert status == 2 and "was removed on" in err and "add-user" in err and "Traceback" not in err
    assert world.snapshot() == before


@pytest.mark.parametrize("argv", [
    ["remove-user", str(2**70)], ["rotate-user-key", "-1"], ["remove-user", "x"], ["remove-node", str(2**31)],
    ["list-users", "--org", "\u00b2"], ["remove-organization", "99999999999"],
])
def test_ids_the_store_cannot_hold_are_usage_errors(world, cli, argv):
    before = world.snapshot()
    status, _, err = cli(*argv)  # argparse's usage error: SystemExit(2)
    assert status == 2
    assert "the id must be an integer from 0 to 2147483647" in err and "Traceback" not in err, err
    assert world.snapshot() == before
