"""The endpoints and shapes vantage6 4.13.7's AlgorithmClient uses (issue 13), against the
real app: vantage6's task body with one base64 input per organisation, task contract and
databases, task status, results and runs in vantage6's paginated shape, organisations and
collaborations, and who may see what. tests/server/test_vantage6_client.py drives the same
endpoints with the real client."""
import base64
import json

import jwt
import pytest

from tests.server.test_api import rejected


def b64(value) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


@pytest.fixture
def job(world):
    """A researcher's top-level task T (orgs 1, 2) with databases, and a subtask S of T made
    by T's container at org 1 in vantage6's shape."""
    for i in range(3):
        world.client.get("/api/vpn", headers=world.node_headers(i))
    top = world.create_task([world.orgs[0], world.orgs[1]], contract="vantage6",
                            databases=[{"label": "default", "type": "csv"}], description="the study")
    t1 = top["runs"][0]["id"]
    ch = world.container_headers(0, t1)
    body = {"name": "subtask", "image": "img:1", "collaboration_id": world.collab, "description": "partials",
            "databases": [{"label": "default"}], "study_id": 5, "store_id": 7,
            "organizations": [{"id": world.orgs[1], "input": b64({"method": "partial", "kwargs": {"x": 2}})},
                              {"id": world.orgs[2], "input": b64({"method": "partial", "kwargs": {"x": 3}})}]}
    r = world.client.post("/api/task", headers=ch, json=body)
    assert r.status_code == 201, r.json
    return {"top": top, "sub": r.json, "ch": ch, "t1": t1}


def node_runs(world, i: int) -> dict:
    return {r["id"]: r for r in world.client.get("/api/run", headers=world.node_headers(i)).json["runs"]}


# ------------------------------------------------------------------ creating tasks
def test_vantage6_body_gives_each_organisation_its_own_input(world, job):
    sub = job["sub"]
    assert sub["parent_id"] == job["top"]["id"]
    assert (sub["name"], sub["description"], sub["databases"]) == ("subtask", "partials", [{"label": "default"}])
    assert [r["organization_id"] for r in sub["runs"]] == [world.orgs[1], world.orgs[2]]
    for i, x in ((1, 2), (2, 3)):
        run = next(r for r in node_runs(world, i).values() if r["task_id"] == sub["id"])
        assert run["input"] == {"method": "partial", "kwargs": {"x": x}}
        assert (run["contract"], run["databases"], run["parent_id"]) == ("vantage6", [{"label": "default"}],
                                                                        job["top"]["id"])


def test_our_body_keeps_the_task_input_and_the_vpnagent_contract(world, job):
    task = world.create_task([world.orgs[0]])
    assert (task["contract"], task["description"], task["databases"]) == ("vpnagent", None, [])
    run = node_runs(world, 0)[task["runs"][0]["id"]]
    assert (run["input"], run["contract"], run["databases"]) == ({"k": 1}, "vpnagent", [])
    # extra keys of a database are dropped, the label kept
    assert job["top"]["databases"] == [{"label": "default"}] and job["top"]["description"] == "the study"


def test_subtasks_inherit_the_contract_unless_they_name_one(world, job):
    assert (job["top"]["contract"], job["sub"]["contract"]) == ("vantage6", "vantage6")
    own = world.create_task([world.orgs[0]], headers=job["ch"], contract="vpnagent")
    assert own["contract"] == "vpnagent"
    plain = world.create_task([world.orgs[0]])
    sub = world.create_task([world.orgs[1]], headers=world.container_headers(0, plain["runs"][0]["id"]))
    assert sub["contract"] == "vpnagent"


def test_the_container_token_carries_the_tasks_databases(world, job):
    token = job["ch"]["Authorization"][7:]
    sub = jwt.decode(token, options={"verify_signature": False})["sub"]
    assert sub["databases"] == [{"label": "default"}]
    assert (sub["task_id"], sub["run_id"], sub["collaboration_id"]) == (job["top"]["id"], job["t1"], world.collab)


@pytest.mark.parametrize("org_input, words", [
    ("!!not base64!!", "not base64"),
    ("eyJhIjog", "not valid JSON"),  # base64 of '{"a": '
    (base64.b64encode(b"\xff\xfe").decode(), "not UTF-8"),
    (base64.b64encode(b'{"a": NaN}').decode(), "NaN"),
    (12, "must be a string"),
])
def test_vantage6_input_that_is_not_base64_json_is_400_and_creates_nothing(world, job, org_input, words):
    body = {"image": "img:1", "collaboration_id": world.collab,
            "organizations": [{"id": world.orgs[0], "input": b64({"ok": 1})}, {"id": world.orgs[1], "input": org_input}]}
    r = rejected(world, "post", "/api/task", 400, words, headers=job["ch"], json=body)
    assert f"organisation {world.orgs[1]}" in r.json["msg"]
    assert "encrypted input is not supported" in r.json["msg"]


@pytest.mark.parametrize("change, words", [
    ({"organizations": [1, {"id": 2, "input": "e30="}]}, "mixes shapes"),
    ({"organizations": [{"id": 2, "input": "e30="}], "input": {"k": 1}}, "top-level 'input'"),
    ({"organizations": [{"id": 2, "input": "e30=", "key": "x"}]}, "unknown key"),
    ({"organizations": [{"input": "e30="}]}, "integer 'id'"),
    ({"organizations": [{"id": 2**31, "input": "e30="}]}, "organizations[].id"),
    ({"organizations": [{"id": 2, "input": "e30="}, {"id": 2, "input": "e30="}]}, "twice"),
    ({"organizations": [{"id": 4, "input": "e30="}]}, "not in collaboration"),
    ({"contract": "docker"}, "contract must be one of"),
    ({"databases": [{"name": "x"}]}, "label"),
    ({"databases": "default"}, "wrong type"),
    ({"study_id": -1}, "study_id"),
    ({"description": "d" * 10_001}, "description too long"),
])
def test_bad_vantage6_task_bodies(world, job, change, words):
    body = {"image": "img:1", "collaboration_id": world.collab,
            "organizations": [{"id": world.orgs[1], "input": "e30="}], **change}
    rejected(world, "post", "/api/task", 400, words, headers=job["ch"], json=body)


# ------------------------------------------------------------------ reading tasks, runs and results
def test_task_status(world, job):
    r = world.client.get(f"/api/task/{job['sub']['id']}/status", headers=job["ch"])
    assert r.json == {"id": job["sub"]["id"], "status": "pending"}
    for run in job["sub"]["runs"]:
        i = world.orgs.index(run["organization_id"])
        assert world.client.patch(f"/api/run/{run['id']}", headers=world.node_headers(i),
                                  json={"status": "completed", "result": {"n": run["id"]}}).status_code == 200
    assert world.client.get(f"/api/task/{job['sub']['id']}/status", headers=world.user_headers()).json["status"] == \
        "completed"


def test_results_and_runs_in_vantage6s_shape(world, job):
    first, second = job["sub"]["runs"]
    world.client.patch(f"/api/run/{first['id']}", headers=world.node_headers(1),
                       json={"status": "completed", "result": {"sum": 5}, "log": "done"})
    for path in ("result", "run"):
        r = world.client.get(f"/api/{path}?task_id={job['sub']['id']}&page=1", headers=job["ch"])
        assert r.status_code == 200, r.json
        data, links = r.json["data"], r.json["links"]
        assert [d["id"] for d in data] == [first["id"], second["id"]]
        done = data[0]
        assert json.loads(base64.b64decode(done["result"])) == {"sum": 5}
        assert done["task"] == {"id": job["sub"]["id"]} and done["organization"] == {"id": world.orgs[1]}
        assert (done["run_id"], done["task_id"], done["organization_id"], done["status"], done["log"]) == \
            (first["id"], job["sub"]["id"], world.orgs[1], "completed", "done")
        assert done["started_at"] is None and done["finished_at"] is not None
        assert data[1]["result"] is None and data[1]["status"] == "pending"
        assert "input" not in done
        assert links["next"] is None and links["previous"] is None
        assert links["first"] == links["last"] == f"/api/{path}?task_id={job['sub']['id']}&page=1"
        page2 = world.client.get(f"/api/{path}?task_id={job['sub']['id']}&page=2", headers=job["ch"]).json
        assert page2["data"] == [] and page2["links"]["self"].endswith("page=2")
        rejected(world, "get", f"/api/{path}?task_id={job['sub']['id']}&page=0", 400, "page", headers=job["ch"])
        one = world.client.get(f"/api/{path}/{first['id']}", headers=world.user_headers()).json
        assert one == done


def test_a_completed_run_without_result_is_base64_null(world, job):
    run = job["sub"]["runs"][0]
    world.client.patch(f"/api/run/{run['id']}", headers=world.node_headers(1), json={"status": "completed"})
    assert base64.b64decode(world.client.get(f"/api/result/{run['id']}", headers=job["ch"]).json["result"]) == b"null"


def test_a_container_sees_only_its_own_job(world, job):
    """The job: everything under the caller's top-level task, subtasks of subtasks included.
    Another job in the same collaboration is closed to it."""
    sub_run = job["sub"]["runs"][0]["id"]
    grandchild = world.create_task([world.orgs[0]], headers=world.container_headers(1, sub_run))
    for task_id in (job["top"]["id"], job["sub"]["id"], grandchild["id"]):
        assert world.client.get(f"/api/task/{task_id}", headers=job["ch"]).status_code == 200
    # from deep inside the job, up to the top
    gh = world.container_headers(0, grandchild["runs"][0]["id"])
    assert world.client.get(f"/api/result?task_id={job['top']['id']}", headers=gh).status_code == 200
    other = world.create_task([world.orgs[0]])
    other_run = other["runs"][0]["id"]
    for url in (f"/api/task/{other['id']}", f"/api/task/{other['id']}/status", f"/api/result?task_id={other['id']}",
                f"/api/run?task_id={other['id']}", f"/api/result/{other_run}", f"/api/run/{other_run}"):
        rejected(world, "get", url, 403, "job", headers=job["ch"])
    rejected(world, "get", "/api/task/999", 404, "does not exist", headers=job["ch"])
    rejected(world, "get", "/api/result/999", 404, "does not exist", headers=job["ch"])
    # a researcher sees every task of the collaborations of their organisation
    assert world.client.get(f"/api/task/{other['id']}", headers=world.user_headers()).status_code == 200
    outsider = world.user_headers(world.other_user_key)
    rejected(world, "get", f"/api/result?task_id={other['id']}", 403, "not in", headers=outsider)
    rejected(world, "get", f"/api/run/{other_run}", 403, "not in", headers=outsider)


def test_node_tokens_keep_their_run_queue(world, job):
    """GET /run with a node token is unchanged: this node's runs in a state."""
    runs = world.client.get("/api/run?task_id=1&state=pending", headers=world.node_headers(1)).json["runs"]
    assert {r["task_id"] for r in runs} == {job["top"]["id"], job["sub"]["id"]}
    assert set(runs[0]) == {"id", "task_id", "organization_id", "node_id", "status", "image", "input", "parent_id",
                            "collaboration_id", "contract", "databases"}
    rejected(world, "get", f"/api/run/{runs[0]['id']}", 403, "node token", headers=world.node_headers(1))


# ------------------------------------------------------------------ organisations, collaborations, blob store
def test_organizations_and_collaborations(world, job):
    expected = [{"id": o, "name": f"org{o}", "public_key": ""} for o in world.orgs[:3]]
    listed = world.client.get("/api/organization?page=1", headers=job["ch"]).json  # container: its own collaboration
    assert listed["data"] == listed["organizations"] == expected and listed["links"]["next"] is None
    user = world.client.get(f"/api/organization?collaboration_id={world.collab}", headers=world.user_headers()).json
    assert user["data"] == expected
    rejected(world, "get", "/api/organization", 400, "collaboration_id", headers=world.user_headers())
    assert world.client.get(f"/api/organization/{world.orgs[2]}", headers=job["ch"]).json == expected[2]
    assert world.client.get(f"/api/organization/{world.orgs[1]}", headers=world.user_headers()).json == expected[1]
    rejected(world, "get", f"/api/organization/{world.orgs[3]}", 403, "shares no collaboration", headers=job["ch"])
    rejected(world, "get", f"/api/organization/{world.orgs[0]}", 403, "shares no collaboration",
             headers=world.user_headers(world.other_user_key))
    rejected(world, "get", "/api/organization/999", 404, "does not exist", headers=job["ch"])
    collab = world.client.get(f"/api/collaboration/{world.collab}", headers=job["ch"]).json
    assert collab == {"id": world.collab, "name": "C", "encrypted": False,
                      "organizations": [{"id": o} for o in world.orgs[:3]]}
    rejected(world, "get", f"/api/collaboration/{world.other_collab}", 403, "not in", headers=job["ch"])
    rejected(world, "get", "/api/collaboration/999", 404, "does not exist", headers=world.user_headers())


def test_blob_store_is_off_for_every_kind(world, job):
    for headers in (job["ch"], world.user_headers(), world.node_headers(0)):
        assert world.client.get("/api/blobstream/status", headers=headers).json == {"blob_store_enabled": False}
    rejected(world, "get", "/api/blobstream/status", 401, "Authorization")
