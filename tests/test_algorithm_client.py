"""The algorithm client (clients/python/vpnagent_algorithm) against a real HTTP server on
127.0.0.1 that records what it gets and answers in the server's shapes: both container
contracts (vpnagent's and vantage6's environment), every call, and the errors."""
from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from vpnagent_algorithm import AlgorithmClient, AlgorithmClientError
from vpnagent_algorithm.environment import decode_env_value, token_claims

ADDRESSES = [
    {"ip": "10.76.0.2", "port": 40001, "label": "echo", "organization_id": 1, "task_id": 5, "parent_id": 4, "run_id": 11},
    {"ip": "10.76.0.3", "port": 40002, "label": "echo", "organization_id": 2, "task_id": 5, "parent_id": 4, "run_id": 12},
]

Route = Callable[[dict, Any], tuple[int, Any]]


def b64json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def jwt_with(sub: dict) -> str:
    """A token shaped like the server's container token (the signature is not checked)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'kind': 'container', 'sub': sub, 'exp': 2**40})}.c2ln"


def v6_encode(value: str) -> str:
    """How a vantage6 node writes an environment value."""
    return base64.b32encode(value.encode()).decode().replace("=", "!")


def result_row(run_id: int, org: int, result: Any, task_id: int = 9, status: str = "completed") -> dict:
    return {"id": run_id, "run_id": run_id, "task": {"id": task_id}, "organization": {"id": org},
            "task_id": task_id, "organization_id": org, "node_id": org, "status": status,
            "started_at": "2026-01-01T00:00:00", "finished_at": None, "log": f"log of {run_id}",
            "result": None if result is None else b64json(result)}


def paged(rows: list[dict], per_page: int) -> Route:
    """A listing split into pages of `per_page`, with `links` as the server sends them."""
    def answer(query: dict, body: Any) -> tuple[int, Any]:
        page = int(query.get("page", 1))
        last = max(1, -(-len(rows) // per_page))
        data = rows[(page - 1) * per_page:page * per_page]
        nxt = f"/api/x?page={page + 1}" if page < last else None
        return 200, {"data": data, "links": {"first": "/api/x?page=1", "self": f"/api/x?page={page}",
                                              "previous": None, "next": nxt, "last": f"/api/x?page={last}"}}
    return answer


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.routes: dict[tuple[str, str], Route | tuple[int, Any]] = {}
        self.url = ""

    def last(self, path: str) -> dict:
        return [r for r in self.requests if r["path"] == path][-1]


@pytest.fixture
def server():
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _answer(self, method: str) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
            rec.requests.append({"method": method, "path": parsed.path, "query": query,
                                 "auth": self.headers.get("Authorization"), "body": body})
            route = rec.routes.get((method, parsed.path), (404, {"msg": f"no route {method} {parsed.path}"}))
            code, payload = route(query, body) if callable(route) else route
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._answer("GET")

        def do_POST(self):
            self._answer("POST")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    rec.url = f"http://127.0.0.1:{httpd.server_address[1]}/api"
    rec.port = httpd.server_address[1]
    try:
        yield rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


CONTRACT_VARS = ("VPNAGENT_SERVER_URL", "VPNAGENT_TOKEN", "VPNAGENT_RUN_ID", "VPNAGENT_TASK_ID",
                 "VPNAGENT_ORGANIZATION_ID", "VPNAGENT_COLLABORATION_ID", "VPNAGENT_IMAGE",
                 "HOST", "PORT", "API_PATH", "TOKEN_FILE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in CONTRACT_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def env(clean_env, server):
    """What a vpnagent node gives a run: plain VPNAGENT_* values and an opaque token here."""
    clean_env.setenv("VPNAGENT_SERVER_URL", server.url)
    clean_env.setenv("VPNAGENT_TOKEN", "tok123")
    clean_env.setenv("VPNAGENT_RUN_ID", "11")
    clean_env.setenv("VPNAGENT_TASK_ID", "5")
    clean_env.setenv("VPNAGENT_ORGANIZATION_ID", "1")
    clean_env.setenv("VPNAGENT_COLLABORATION_ID", "3")
    clean_env.setenv("VPNAGENT_IMAGE", "vpnagent/echo:latest")
    return server


# ------------------------------------------------------------------ environment and identity
def test_vpnagent_contract_from_env(env):
    c = AlgorithmClient()
    assert c.server_url == env.url and c.token == "tok123"
    assert (c.run_id, c.task_id, c.organization_id, c.collaboration_id) == (11, 5, 1, 3)
    assert c.image == "vpnagent/echo:latest" and c.databases == [] and c.node_id is None


def test_identity_comes_from_the_token_with_env_as_fallback(env, clean_env):
    sub = {"client_type": "container", "node_id": 4, "organization_id": 2, "collaboration_id": 8, "task_id": 6,
           "image": "org/algo:1", "databases": [{"label": "default"}]}
    clean_env.setenv("VPNAGENT_TOKEN", jwt_with(sub))
    c = AlgorithmClient()
    assert (c.node_id, c.organization_id, c.collaboration_id, c.task_id) == (4, 2, 8, 6)
    assert c.image == "org/algo:1" and c.databases == [{"label": "default"}]
    assert c.run_id == 11  # not in this token: VPNAGENT_RUN_ID


def test_token_claims_without_verification():
    assert token_claims(jwt_with({"task_id": 1}))["task_id"] == 1
    for not_a_jwt in ("tok123", "a.b.c", "a.!!!.c", jwt_with({}).split(".")[0] + ".bnVsbA.x"):
        assert token_claims(not_a_jwt) == {}


def test_vantage6_env_values_decode_like_the_node_encodes():
    assert v6_encode("abc") == "MFRGG!!!" and decode_env_value("MFRGG!!!") == "abc"
    assert decode_env_value(v6_encode("http://proxy:8080/x")) == "http://proxy:8080/x"
    # already decoded (vantage6's wrapper decodes in place) or never encoded: used as is
    for plain in ("http://proxyserver", "8080", "/api", "/mnt/data/task-1/token", ""):
        assert decode_env_value(plain) == plain


@pytest.mark.parametrize("encode", [v6_encode, str], ids=["encoded", "already-decoded"])
def test_vantage6_contract_host_port_api_path_token_file(clean_env, server, tmp_path, encode):
    token_file = tmp_path / "token"
    token_file.write_text(jwt_with({"organization_id": 7, "collaboration_id": 2, "task_id": 3, "node_id": 5,
                                    "image": "v6/algo", "databases": []}) + "\n")
    clean_env.setenv("HOST", encode("http://127.0.0.1"))
    clean_env.setenv("PORT", encode(str(server.port)))
    clean_env.setenv("API_PATH", encode("/api"))
    clean_env.setenv("TOKEN_FILE", encode(str(token_file)))
    server.routes[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": ADDRESSES})
    c = AlgorithmClient()
    assert c.server_url == server.url and c.token == token_file.read_text().strip()
    assert (c.organization_id, c.collaboration_id, c.task_id, c.node_id, c.image) == (7, 2, 3, 5, "v6/algo")
    assert c.vpn.get_addresses() == ADDRESSES
    assert server.requests[-1]["auth"] == f"Bearer {c.token}"


def test_vantage6_contract_empty_api_path_is_the_root(clean_env, server, tmp_path):
    """A vantage6 node sets API_PATH to "" (its proxy serves at the root)."""
    (tmp_path / "token").write_text(jwt_with({"collaboration_id": 2}))
    clean_env.setenv("HOST", v6_encode("http://127.0.0.1"))
    clean_env.setenv("PORT", v6_encode(str(server.port)))
    clean_env.setenv("API_PATH", v6_encode(""))
    clean_env.setenv("TOKEN_FILE", v6_encode(str(tmp_path / "token")))
    server.routes[("GET", "/collaboration/2")] = (200, {"id": 2})
    c = AlgorithmClient()
    assert c.server_url == f"http://127.0.0.1:{server.port}"
    assert c.collaboration.get() == {"id": 2}


def test_vantage6_constructor_and_server_url_argument(clean_env, server):
    c = AlgorithmClient(token="t", host="http://127.0.0.1", port=server.port, path="/api")
    assert c.server_url == server.url
    assert AlgorithmClient(token="t", host="http://127.0.0.1", port=server.port).server_url == server.url
    assert AlgorithmClient(token="t", server_url=server.url + "/").server_url == server.url


def test_missing_environment_is_a_clear_error(clean_env, tmp_path):
    with pytest.raises(AlgorithmClientError, match="VPNAGENT_SERVER_URL .*HOST, PORT and API_PATH"):
        AlgorithmClient()
    clean_env.setenv("VPNAGENT_SERVER_URL", "http://127.0.0.1:1/api")
    with pytest.raises(AlgorithmClientError, match="VPNAGENT_TOKEN .*TOKEN_FILE"):
        AlgorithmClient()
    clean_env.setenv("TOKEN_FILE", v6_encode(str(tmp_path / "nope")))
    with pytest.raises(AlgorithmClientError, match=r"cannot read the token file .*nope"):
        AlgorithmClient()
    (tmp_path / "empty").write_text("\n")
    clean_env.setenv("TOKEN_FILE", str(tmp_path / "empty"))
    with pytest.raises(AlgorithmClientError, match="is empty"):
        AlgorithmClient()


# ------------------------------------------------------------------ vpn
def test_get_addresses_sends_only_true_flags_as_1(env):
    env.routes[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": ADDRESSES})
    c = AlgorithmClient()
    assert c.vpn.get_addresses() == ADDRESSES
    assert env.requests[-1]["query"] == {} and env.requests[-1]["auth"] == "Bearer tok123"
    assert c.vpn.get_addresses(only_children=True, include_parent=True, label="echo") == ADDRESSES
    assert env.requests[-1]["query"] == {"only_children": "1", "include_parent": "1", "label": "echo"}
    c.vpn.get_addresses(only_parent=False, only_siblings=True, include_children=True, label="")
    assert env.requests[-1]["query"] == {"only_siblings": "1", "include_children": "1"}


@pytest.mark.parametrize("helper,flag", [("get_own_address", "only_self"), ("get_parent_address", "only_parent"),
                                         ("get_child_addresses", "only_children"),
                                         ("get_sibling_addresses", "only_siblings")])
def test_address_helpers_return_lists(env, helper, flag):
    env.routes[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": ADDRESSES[1:]})
    assert getattr(AlgorithmClient().vpn, helper)() == ADDRESSES[1:]
    assert env.requests[-1]["query"] == {flag: "1"}
    env.routes[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": []})
    assert getattr(AlgorithmClient().vpn, helper)() == []  # empty is an answer, not an error


def test_answer_without_addresses_is_vantage6s_message(env):
    env.routes[("GET", "/api/vpn/algorithm/addresses")] = (200, {"something": "else"})
    assert AlgorithmClient().vpn.get_addresses() == {"message": "Obtaining VPN addresses failed!"}


# ------------------------------------------------------------------ errors
def test_http_error_raises_with_status_and_server_msg(env):
    env.routes[("GET", "/api/vpn/algorithm/addresses")] = (400, {"msg": "use at most one of only_children, ..."})
    with pytest.raises(AlgorithmClientError) as info:
        AlgorithmClient().vpn.get_addresses(only_children=True, only_parent=True)
    assert info.value.status == 400 and info.value.msg == "use at most one of only_children, ..."
    assert str(info.value) == "GET vpn/algorithm/addresses failed with HTTP 400: use at most one of only_children, ..."
    assert (info.value.method, info.value.path) == ("GET", "vpn/algorithm/addresses")


def test_non_json_answers_and_unreachable_server(env):
    env.routes[("GET", "/api/organization/1")] = (502, b"bad gateway")
    with pytest.raises(AlgorithmClientError) as info:
        AlgorithmClient().organization.get(1)
    assert info.value.status == 502 and info.value.msg == "bad gateway"
    env.routes[("GET", "/api/organization/2")] = (200, b"<html>")
    with pytest.raises(AlgorithmClientError, match="not JSON"):
        AlgorithmClient().organization.get(2)
    with socket.socket() as s:  # a port nothing listens on: a bounded, typed error without status
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AlgorithmClientError) as info:
        AlgorithmClient(token="t", server_url=f"http://127.0.0.1:{port}/api", timeout=2).organization.get(1)
    assert info.value.status is None and "no answer" in str(info.value) and "node proxy" in str(info.value)


def test_request_has_vantage6s_signature(env):
    env.routes[("POST", "/api/thing")] = (201, {"ok": 1})
    c = AlgorithmClient()
    assert c.request("thing", json={"a": 1}, method="post", params={"x": 1, "y": None}) == {"ok": 1}
    assert env.requests[-1]["body"] == {"a": 1} and env.requests[-1]["query"] == {"x": "1"}
    with pytest.raises(TypeError, match=r"request\('thing', method='post'"):
        c.request("POST", "thing")


# ------------------------------------------------------------------ task
def test_task_create_sends_vantage6s_body(env, clean_env):
    sub = {"node_id": 4, "organization_id": 1, "collaboration_id": 3, "task_id": 5, "image": "vpnagent/echo:latest",
           "databases": [{"label": "default", "type": "csv"}]}
    clean_env.setenv("VPNAGENT_TOKEN", jwt_with(sub))
    created = {"id": 7, "name": "peers", "image": "vpnagent/echo:latest", "collaboration_id": 3, "parent_id": 5,
               "status": "pending", "runs": []}
    env.routes[("POST", "/api/task")] = (201, created)
    c = AlgorithmClient()
    assert c.task.create({"method": "peer", "kwargs": {"n": 2}}, organizations=[1, 2], name="peers") == created
    body = env.last("/api/task")["body"]
    assert body == {"name": "peers", "image": "vpnagent/echo:latest", "collaboration_id": 3,
                    "description": "task from container on node_id=4",
                    "organizations": [{"id": 1, "input": b64json({"method": "peer", "kwargs": {"n": 2}})},
                                      {"id": 2, "input": b64json({"method": "peer", "kwargs": {"n": 2}})}],
                    "databases": [{"label": "default", "type": "csv"}]}
    assert json.loads(base64.b64decode(body["organizations"][0]["input"])) == {"method": "peer", "kwargs": {"n": 2}}
    c.task.create({"m": 1}, [2], description="mine")
    body = env.last("/api/task")["body"]
    assert body["name"] == "subtask" and body["description"] == "mine" and [o["id"] for o in body["organizations"]] == [2]


def test_task_create_refuses_the_old_order_and_a_missing_image(env, clean_env):
    c = AlgorithmClient()
    with pytest.raises(TypeError, match=r"create\(input_, organizations="):
        c.task.create([1, 2], {"method": "peer"})
    clean_env.delenv("VPNAGENT_IMAGE")
    with pytest.raises(AlgorithmClientError, match="VPNAGENT_IMAGE"):
        AlgorithmClient().task.create({"method": "peer"}, organizations=[1])
    assert not [r for r in env.requests if r["method"] == "POST"]


def test_task_get(env):
    env.routes[("GET", "/api/task/7")] = (200, {"id": 7, "status": "active"})
    assert AlgorithmClient().task.get(7) == {"id": 7, "status": "active"}


# ------------------------------------------------------------------ results and runs
def status_sequence(*statuses: str) -> Route:
    seen = list(statuses)

    def answer(query: dict, body: Any) -> tuple[int, Any]:
        return 200, {"id": 9, "status": seen.pop(0) if len(seen) > 1 else seen[0]}
    return answer


RESULTS = [result_row(21, 1, {"n": 1}), result_row(22, 2, None, status="failed"), result_row(23, 3, [1, 2]),
           result_row(24, 4, {"n": 4})]


def test_wait_for_results_polls_status_then_collects_all_pages(env):
    env.routes[("GET", "/api/task/9/status")] = status_sequence("pending", "initializing", "active", "completed")
    env.routes[("GET", "/api/result")] = paged(RESULTS, per_page=2)
    assert AlgorithmClient().wait_for_results(9, interval=0.01) == [{"n": 1}, [1, 2], {"n": 4}]
    assert [r["path"] for r in env.requests].count("/api/task/9/status") == 4
    pages = [r["query"] for r in env.requests if r["path"] == "/api/result"]
    assert pages == [{"task_id": "9", "page": "1"}, {"task_id": "9", "page": "2"}]


def test_wait_for_results_ends_on_a_failed_task_and_can_time_out(env):
    env.routes[("GET", "/api/task/9/status")] = status_sequence("active", "failed")
    env.routes[("GET", "/api/result")] = paged(RESULTS[:2], per_page=10)
    assert AlgorithmClient().wait_for_results(9, interval=0.01) == [{"n": 1}]  # the failed run has none
    env.routes[("GET", "/api/task/9/status")] = status_sequence("active")
    with pytest.raises(AlgorithmClientError, match="task 9 is still active after 0.3 s"):
        AlgorithmClient().wait_for_results(9, interval=0.05, timeout=0.3)


def test_result_get_and_from_task(env):
    env.routes[("GET", "/api/result/21")] = (200, RESULTS[0])
    env.routes[("GET", "/api/result/22")] = (200, RESULTS[1])
    env.routes[("GET", "/api/result/25")] = (200, {**RESULTS[0], "result": "bm90IGpzb24="})  # "not json"
    env.routes[("GET", "/api/result")] = paged(RESULTS, per_page=3)
    c = AlgorithmClient()
    assert c.result.get(21) == {"n": 1}
    assert c.result.get(22) is None and c.result.get(25) is None
    assert c.result.from_task(9) == [{"n": 1}, [1, 2], {"n": 4}]


def test_run_get_and_from_task(env):
    runs = [{k: v for k, v in row.items() if k != "result"} for row in RESULTS]
    env.routes[("GET", "/api/run/22")] = (200, runs[1])
    env.routes[("GET", "/api/run")] = paged(runs, per_page=3)
    c = AlgorithmClient()
    assert c.run.get(22)["status"] == "failed"
    assert c.run.from_task(9) == runs
    assert env.last("/api/run")["query"] == {"task_id": "9", "page": "2"}


def test_a_listing_without_end_is_bounded(env, monkeypatch):
    from vpnagent_algorithm import client as client_module

    monkeypatch.setattr(client_module, "MAX_PAGES", 3)
    env.routes[("GET", "/api/run")] = (200, {"data": [{"id": 1}], "links": {"next": "/api/run?page=again"}})
    with pytest.raises(AlgorithmClientError, match="more than 3 pages"):
        AlgorithmClient().run.from_task(9)
    assert [r["path"] for r in env.requests].count("/api/run") == 3


# ------------------------------------------------------------------ organisations, collaboration
def test_organization_list_get_and_collaboration(env):
    orgs = [{"id": i, "name": f"org{i}", "public_key": ""} for i in (1, 2, 3)]

    def listing(query: dict, body: Any) -> tuple[int, Any]:
        code, page = paged(orgs, per_page=2)(query, body)
        return code, {"organizations": page["data"], **page}
    env.routes[("GET", "/api/organization")] = listing
    env.routes[("GET", "/api/organization/2")] = (200, orgs[1])
    env.routes[("GET", "/api/collaboration/3")] = (200, {"id": 3, "name": "c", "organizations": [{"id": 1}],
                                                         "encrypted": False})
    c = AlgorithmClient()
    assert c.organization.list() == orgs
    assert env.last("/api/organization")["query"] == {"collaboration_id": "3", "page": "2"}
    assert c.organization.get(2) == orgs[1]
    assert c.collaboration.get()["encrypted"] is False


def test_the_old_import_path_is_the_same_client():
    from vpnagent import algorithm_client
    import vpnagent_algorithm

    assert algorithm_client.AlgorithmClient is vpnagent_algorithm.AlgorithmClient
    assert algorithm_client.AlgorithmClientError is vpnagent_algorithm.AlgorithmClientError
    assert algorithm_client.MockAlgorithmClient is vpnagent_algorithm.MockAlgorithmClient
