"""/api/admin: the admin commands over HTTP. Only an admin token gets in (a researcher, node
or container token gets 403); answers are what `vpnagent-server ... --json` prints; a new
key appears once; bad input is a 4xx JSON error that changes nothing."""
from __future__ import annotations

import json

import pytest

from server_ext.openapi import spec


def admin_paths() -> list[tuple[str, str]]:
    return [(path, method) for path, ops in spec()["paths"].items() if path.startswith("/admin/") for method in ops]


@pytest.mark.parametrize("path, method", admin_paths())
def test_researcher_node_and_container_tokens_get_403_and_change_nothing(world, path, method):
    task = world.create_task([world.orgs[0]])
    others = {"user": world.user_headers(), "node": world.node_headers(0),
              "container": world.container_headers(0, task["runs"][0]["id"])}
    url = "/api" + path.replace("{", "").replace("}", "").replace("organization_id", "1").replace(
        "collaboration_id", "1").replace("node_id", "1").replace("user_id", "1").replace("task_id", "1")
    before = world.snapshot()
    for kind, headers in others.items():
        r = getattr(world.client, method)(url, headers=headers, json={"name": "x", "organization_id": 1,
                                                                       "collaboration_id": 1, "organizations": [1]})
        assert r.status_code == 403 and f"a {kind} token cannot use this endpoint" in r.json["msg"], (kind, r.json)
    assert getattr(world.client, method)(url).status_code == 401
    assert world.snapshot() == before


def test_an_admin_token_cannot_use_researcher_or_node_endpoints(world):
    admin = world.admin_headers()
    assert world.client.get("/api/task/1", headers=admin).status_code == 403
    assert world.client.get("/api/vpn", headers=admin).status_code == 403
    assert world.client.post("/api/token/admin", json={"api_key": world.user_key}).status_code == 401


def test_the_whole_lifecycle_over_the_api_answers_what_the_cli_prints(world):
    admin = world.admin_headers()
    post = lambda url, body=None: world.client.post(url, headers=admin, json=body)  # noqa: E731
    r = post("/api/admin/organization", {"name": "org5"})
    assert r.status_code == 201 and r.json == {"id": 5, "name": "org5", "collaborations": [], "nodes": [], "users": []}
    r = post("/api/admin/collaboration", {"name": "E", "organizations": [5, 1]})
    assert r.status_code == 201 and [o["id"] for o in r.json["organizations"]] == [1, 5]
    r = post("/api/admin/node", {"name": "n5", "organization_id": 5, "collaboration_id": r.json["id"]})
    assert r.status_code == 201 and r.json["organization"]["name"] == "org5"
    node_key = r.json["api_key"]
    assert json.dumps(r.json).count(node_key) == 1
    node_id = r.json["id"]
    token = world.client.post("/api/token/node", json={"api_key": node_key}).json["access_token"]
    node_headers = {"Authorization": f"Bearer {token}"}
    assert world.client.get("/api/node/self", headers=node_headers).status_code == 200

    rotated = post(f"/api/admin/node/{node_id}/key")
    assert rotated.status_code == 200 and rotated.json["api_key"] != node_key
    assert world.client.get("/api/node/self", headers=node_headers).status_code == 401
    assert world.client.post("/api/token/node", json={"api_key": node_key}).status_code == 401

    r = post("/api/admin/user", {"name": "bob@example.org", "organization_id": 5})
    assert r.status_code == 201 and r.json["organization"] == {"id": 5, "name": "org5"}
    user_id = r.json["id"]
    bob = world.user_headers(r.json["api_key"])
    new = post(f"/api/admin/user/{user_id}/key").json["api_key"]
    assert world.client.get("/api/organization?collaboration_id=1", headers=bob).status_code == 401
    r = world.client.delete(f"/api/admin/user/{user_id}", headers=admin)
    assert r.status_code == 200 and r.json["removed_at"]
    assert world.client.post("/api/token/user", json={"api_key": new}).status_code == 401

    r = world.client.delete(f"/api/admin/node/{node_id}", headers=admin)
    assert r.status_code == 200 and r.json["removed_at"] and "note" in r.json
    r = world.client.delete("/api/admin/organization/5", headers=admin)
    assert r.status_code == 200 and r.json["removed_users"] == []

    listed = world.client.get("/api/admin/node?organization_id=5", headers=admin).json
    assert [(n["name"], bool(n["removed_at"])) for n in listed] == [("n5", True)]
    assert world.client.get(f"/api/admin/node/{node_id}", headers=admin).json["id"] == node_id
    assert [u["name"] for u in world.client.get("/api/admin/user", headers=admin).json] == \
        ["alice", "mallory", "bob@example.org"]
    assert world.client.get("/api/admin/user/1", headers=admin).json["organization"]["name"] == "org1"
    assert [c["name"] for c in world.client.get("/api/admin/collaboration", headers=admin).json] == ["C", "D", "E"]
    assert world.client.get("/api/admin/collaboration/1", headers=admin).json["tasks"] == 0
    assert len(world.client.get("/api/admin/organization", headers=admin).json) == 5
    assert world.client.get("/api/admin/organization/1", headers=admin).json["users"][0]["name"] == "alice"


def test_tasks_over_the_api(world):
    admin = world.admin_headers()
    task = world.create_task([world.orgs[0], world.orgs[1]])
    listed = world.client.get(f"/api/admin/task?collaboration_id={world.collab}", headers=admin).json
    assert [(t["id"], t["status"], t["run_states"]) for t in listed] == [(task["id"], "pending", {"pending": 2})]
    shown = world.client.get(f"/api/admin/task/{task['id']}", headers=admin).json
    assert [r["status"] for r in shown["runs"]] == ["pending", "pending"]


def test_a_removed_or_rotated_admin_key_ends_its_tokens(world):
    admin = world.admin_headers()
    new, _ = world.store.create_admin("second")
    world.store.rotate_admin_key(1)
    r = world.client.get("/api/admin/node", headers=admin)
    assert r.status_code == 401 and "replaced" in r.json["msg"]
    assert world.client.post("/api/token/admin", json={"api_key": world.admin_key}).status_code == 401


@pytest.mark.parametrize("method, url, body, status, words", [
    ("get", "/api/admin/node/99", None, 404, "node 99 does not exist"),
    ("get", "/api/admin/task/99", None, 404, "task 99 does not exist"),
    ("get", "/api/admin/user/99", None, 404, "user 99 does not exist"),
    ("get", "/api/admin/organization/99", None, 404, "organization 99 does not exist"),
    ("get", "/api/admin/collaboration/99", None, 404, "collaboration 99 does not exist"),
    ("get", "/api/admin/node?collaboration_id=99", None, 404, "collaboration 99 does not exist"),
    ("get", "/api/admin/user?organization_id=x", None, 400, "query parameter 'organization_id'"),
    ("delete", "/api/admin/node/99", None, 404, "node 99 does not exist"),
    ("delete", "/api/admin/organization/99", None, 404, "organization 99 does not exist"),
    ("delete", "/api/admin/user/99", None, 404, "user 99 does not exist"),
    ("post", "/api/admin/node/99/key", None, 404, "node 99 does not exist"),
    ("post", "/api/admin/user/99/key", None, 404, "user 99 does not exist"),
    ("post", "/api/admin/organization", {"name": "bad name"}, 400, "organisation name 'bad name' must be"),
    ("post", "/api/admin/organization", {"name": "org1"}, 409, "is taken by organisation 1"),
    ("post", "/api/admin/organization", {"name": 5}, 400, "field 'name' has the wrong type"),
    ("post", "/api/admin/organization", {"name": "x", "extra": 1}, 400, "unknown field(s): extra"),
    ("post", "/api/admin/collaboration", {"name": "E", "organizations": []}, 400, "at least one"),
    ("post", "/api/admin/collaboration", {"name": "E", "organizations": [1, 99]}, 404, "organization 99"),
    ("post", "/api/admin/collaboration", {"name": "E", "organizations": ["1"]}, 400, "list of integer ids"),
    ("post", "/api/admin/collaboration", {"name": "C", "organizations": [1]}, 409, "collaboration name 'C' is taken by collaboration"),
    ("post", "/api/admin/node", {"name": "N1", "organization_id": 4, "collaboration_id": 2}, 400,
     "node name 'N1' must be 1-16 of a-z"),
    ("post", "/api/admin/node", {"name": "n9", "organization_id": 4, "collaboration_id": 2}, 409,
     "has a node in collaboration 2 already"),
    ("post", "/api/admin/node", {"name": "n9", "organization_id": 4, "collaboration_id": 1}, 400,
     "organisation 4 is not in collaboration 1"),
    ("post", "/api/admin/user", {"name": "", "organization_id": 1}, 400, "user name '' must be"),
    ("post", "/api/admin/user", {"name": "bob", "organization_id": 2**31}, 400, "field 'organization_id'"),
])
def test_bad_input_is_a_4xx_json_error_and_changes_nothing(world, method, url, body, status, words):
    admin = world.admin_headers()
    before = world.snapshot()
    r = getattr(world.client, method)(url, headers=admin, json=body)
    assert r.status_code == status and words in r.json["msg"], r.json
    assert world.snapshot() == before


def test_removed_ones_are_409(world):
    admin = world.admin_headers()
    assert world.client.delete("/api/admin/user/1", headers=admin).status_code == 200
    assert world.client.delete("/api/admin/node/1", headers=admin).status_code == 200
    before = world.snapshot()
    for url in ["/api/admin/user/1/key", "/api/admin/node/1/key"]:
        r = world.client.post(url, headers=admin)
        assert r.status_code == 409 and "stays removed" in r.json["msg"], r.json
    assert world.client.delete("/api/admin/user/1", headers=admin).status_code == 409
    assert world.snapshot() == before


def test_a_node_token_from_before_key_versions_works_until_the_key_is_rotated(world):
    from server_ext.tokens import TokenService

    state = world.app.extensions["vpnagent"]
    old = TokenService(state.tokens.secret).issue("node", {"client_type": "node", "node_id": 1, "organization_id": 1,
                                                           "collaboration_id": 1})
    headers = {"Authorization": f"Bearer {old}"}
    assert world.client.get("/api/node/self", headers=headers).status_code == 200
    world.store.rotate_node_key(1)
    assert world.client.get("/api/node/self", headers=headers).status_code == 401
