"""The published OpenAPI document matches the served one and the real routes, and a
bounded property-based fuzz run against the app finds no 5xx, only JSON errors that
change nothing — also with integers past every column's range (path, query and body),
NaN/Infinity, NUL characters and bodies nested tens of thousands of levels deep."""
import base64
import json
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server_ext.openapi import spec

ROOT = Path(__file__).resolve().parents[2]


def test_docs_copy_is_the_served_document(world):
    served = world.client.get("/api/openapi.json").json
    assert served == json.loads((ROOT / "docs" / "openapi.json").read_text()), \
        "docs/openapi.json is stale: regenerate it from server_ext.openapi.spec()"


def test_every_route_is_documented_and_every_documented_path_exists(world):
    routes = set()
    for rule in world.app.url_map.iter_rules():
        # _unmatched: the catch-all under the prefix that answers the API's own JSON 404/405
        if rule.endpoint.startswith("vpnagent.") and rule.endpoint != "vpnagent._unmatched":
            path = re.sub(r"<(?:int:)?(\w+)>", r"{\1}", rule.rule)[len("/api"):]
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
    documented = {(path, method) for path, ops in spec()["paths"].items() for method in ops}
    assert routes == documented


# Integers at and past the edges: PostgreSQL's integer (2**31 - 1), SQLite's (2**63 - 1), beyond.
EDGES = [2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**70, -2**31 - 1]
INTEGERS = st.integers(-2**40, 2**40) | st.integers(-2**80, 2**80) | st.sampled_from(EDGES)
JSON = st.recursive(st.none() | st.booleans() | INTEGERS | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)
FIELDS = ["api_key", "run_id", "vpn_config", "status", "result", "log", "port", "label", "collaboration_id",
          "organizations", "image", "input", "name", "description", "databases", "contract", "study_id", "store_id",
          "runs", "organization_id", "public_key", "endpoints", "data_plane"]
# Nesting past the parser's recursion limit, alone or as a field's value (sent as raw text).
DEEP = st.one_of(st.integers(1, 30000).map(lambda d: "[" * d + "]" * d),
                 st.tuples(st.sampled_from(FIELDS), st.integers(1, 30000))
                 .map(lambda fd: f'{{"{fd[0]}": {"[" * fd[1] + "]" * fd[1]}}}'))
# vantage6's task body: per-organisation input as base64 of JSON, of other bytes, or not base64 at all.
B64 = st.one_of(JSON.map(lambda v: base64.b64encode(json.dumps(v).encode()).decode()),
                st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
                st.text(max_size=20))
V6_BODY = st.fixed_dictionaries(
    {"collaboration_id": st.sampled_from([1, 2]) | INTEGERS,
     "organizations": st.lists(st.fixed_dictionaries({"id": st.sampled_from([1, 2, 3, 4]) | INTEGERS, "input": B64},
                                                     optional={"extra": JSON}), max_size=3),
     "image": st.sampled_from(["img:1", "other"])},
    optional={"databases": JSON | st.lists(st.fixed_dictionaries({"label": st.text(max_size=5)}), max_size=2),
              "contract": st.sampled_from(["vpnagent", "vantage6", "x"]), "input": JSON, "description": JSON,
              "study_id": INTEGERS, "name": JSON})
BODY = st.one_of(JSON.map(lambda v: {"json": v}), V6_BODY.map(lambda v: {"json": v}),
                 st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5).map(lambda v: {"json": v}),
                 DEEP.map(lambda text: {"data": text, "content_type": "application/json"}))
QUERY = st.dictionaries(st.sampled_from(["run_id", "state", "label", "only_children", "only_parent", "only_self",
                                         "only_siblings", "include_children", "include_parent", "collaboration_id",
                                         "task_id", "page", "organization_id"]),
                        st.text(max_size=8) | st.sampled_from(["1", "true", "0", "-1", "99999999999999", "\u00b2",
                                                               "a\x00b", *map(str, EDGES)]), max_size=4)
PATHS = [(p, m) for p, ops in spec()["paths"].items() for m in ops]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(target=st.sampled_from(PATHS), who=st.sampled_from(["none", "node", "user", "container", "garbage", "admin"]),
       body=BODY, query=QUERY, path_id=st.integers(0, 2**31) | st.integers(0, 2**80) | st.sampled_from(EDGES[:-1]))
def test_fuzz_finds_no_server_error(fuzz_world, target, who, body, query, path_id):
    world, headers = fuzz_world
    path, method = target
    url = "/api" + re.sub(r"\{\w+\}", str(path_id), path)
    before = world.snapshot()
    r = getattr(world.client, method)(url, query_string=query, headers=headers[who], **body)
    assert r.status_code < 500, (method, url, r.status_code, r.get_data(as_text=True)[:300])
    if r.status_code >= 400:
        assert r.is_json and r.json.get("msg"), (method, url, r.status_code)
        assert world.snapshot() == before, f"rejected {method} {url} changed the store"


import pytest  # noqa: E402

from tests.server.conftest import BACKENDS  # noqa: E402


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_world(request, tmp_path_factory):
    from tests.server.conftest import build_world, fresh_database

    directory = tmp_path_factory.mktemp("fuzz")
    with fresh_database(request.param, directory, request) as url:
        world = build_world(directory, url)
        yield world, _headers_after_setup(world)
        world.store.close()


def _headers_after_setup(world) -> dict:
    for i in range(3):
        world.client.get("/api/vpn", headers=world.node_headers(i))
    task = world.create_task([world.orgs[0], world.orgs[1]])
    headers = {"none": {}, "garbage": {"Authorization": "Bearer not.a.token"},
               "node": world.node_headers(0), "user": world.user_headers(),
               "container": world.container_headers(0, task["runs"][0]["id"]), "admin": world.admin_headers()}
    return headers
