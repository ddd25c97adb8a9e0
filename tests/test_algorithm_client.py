"""The algorithm client against a real HTTP server on 127.0.0.1 that records what it gets."""
from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vpnagent.algorithm_client import AlgorithmClient, AlgorithmClientError

ADDRESSES = [
    {"ip": "10.76.0.2", "port": 40001, "label": "echo", "organization_id": 1, "task_id": 5, "parent_id": 4, "run_id": 11},
    {"ip": "10.76.0.3", "port": 40002, "label": "echo", "organization_id": 2, "task_id": 5, "parent_id": 4, "run_id": 12},
]


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.responses: dict[tuple[str, str], tuple[int, object]] = {}
        self.task_statuses: list[str] = []


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
            rec.requests.append({"method": method, "path": parsed.path,
                                 "query": dict(urllib.parse.parse_qsl(parsed.query)),
                                 "auth": self.headers.get("Authorization"), "body": body})
            if parsed.path.startswith("/api/task/") and method == "GET" and rec.task_statuses:
                status = rec.task_statuses.pop(0) if len(rec.task_statuses) > 1 else rec.task_statuses[0]
                code, payload = 200, {"id": 7, "status": status,
                                      "runs": [{"id": 1, "organization_id": 1, "status": status,
                                                "result": {"n": 1}, "log": "boom" if status == "failed" else ""}]}
            else:
                code, payload = rec.responses.get((method, parsed.path), (404, {"msg": "no such thing"}))
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
    try:
        yield rec
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def env(monkeypatch, server):
    monkeypatch.setenv("VPNAGENT_SERVER_URL", server.url)
    monkeypatch.setenv("VPNAGENT_TOKEN", "tok123")
    monkeypatch.setenv("VPNAGENT_RUN_ID", "11")
    monkeypatch.setenv("VPNAGENT_TASK_ID", "5")
    monkeypatch.setenv("VPNAGENT_ORGANIZATION_ID", "1")
    monkeypatch.setenv("VPNAGENT_COLLABORATION_ID", "3")
    monkeypatch.setenv("VPNAGENT_IMAGE", "vpnagent/echo:latest")
    return server


def test_defaults_come_from_env(env):
    c = AlgorithmClient()
    assert c.server_url == env.url and c.token == "tok123"
    assert (c.run_id, c.task_id, c.organization_id, c.collaboration_id) == (11, 5, 1, 3)


def test_missing_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("VPNAGENT_SERVER_URL", raising=False)
    monkeypatch.delenv("VPNAGENT_TOKEN", raising=False)
    with pytest.raises(AlgorithmClientError, match="VPNAGENT_SERVER_URL"):
        AlgorithmClient()
    with pytest.raises(AlgorithmClientError, match="VPNAGENT_TOKEN"):
        AlgorithmClient(server_url="http://127.0.0.1:1/api")


def test_get_addresses_sends_flags_label_and_token(env):
    env.responses[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": ADDRESSES})
    c = AlgorithmClient()
    assert c.vpn.get_addresses() == ADDRESSES
    assert c.vpn.get_addresses(only_children=True, include_parent=True, label="echo") == ADDRESSES
    first, second = env.requests
    assert first["path"] == "/api/vpn/algorithm/addresses" and first["query"] == {}
    assert first["auth"] == "Bearer tok123"
    assert second["query"] == {"only_children": "true", "include_parent": "true", "label": "echo"}


@pytest.mark.parametrize("helper,flag", [("get_child_addresses", "only_children"),
                                         ("get_sibling_addresses", "only_siblings")])
def test_list_helpers(env, helper, flag):
    env.responses[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": ADDRESSES})
    assert getattr(AlgorithmClient().vpn, helper)() == ADDRESSES
    assert env.requests[-1]["query"] == {flag: "true"}


@pytest.mark.parametrize("helper,flag", [("get_own_address", "only_self"), ("get_parent_address", "only_parent")])
def test_single_helpers_return_one_dict(env, helper, flag):
    env.responses[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": ADDRESSES[1:]})
    assert getattr(AlgorithmClient().vpn, helper)() == ADDRESSES[1]
    assert env.requests[-1]["query"] == {flag: "true"}
    env.responses[("GET", "/api/vpn/algorithm/addresses")] = (200, {"addresses": []})
    with pytest.raises(AlgorithmClientError, match="no .* address"):
        getattr(AlgorithmClient().vpn, helper)()


def test_http_error_carries_status_and_server_msg(env):
    env.responses[("GET", "/api/vpn/algorithm/addresses")] = (400, {"msg": "only_children and only_parent together"})
    with pytest.raises(AlgorithmClientError) as info:
        AlgorithmClient().vpn.get_addresses(only_children=True, only_parent=True)
    assert info.value.status == 400
    assert info.value.msg == "only_children and only_parent together"
    assert "only_children and only_parent together" in str(info.value)


def test_non_json_error_body_and_unreachable_server(env):
    env.responses[("GET", "/api/organization")] = (502, b"bad gateway")
    with pytest.raises(AlgorithmClientError) as info:
        AlgorithmClient().organization.list()
    assert info.value.status == 502 and "bad gateway" in info.value.msg
    # a port nothing listens on: a bounded, typed error without status
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AlgorithmClientError) as info:
        AlgorithmClient(server_url=f"http://127.0.0.1:{port}/api", token="t", timeout=2).organization.list()
    assert info.value.status is None and "no answer" in str(info.value)


def test_task_create_uses_env_defaults(env):
    env.responses[("POST", "/api/task")] = (201, {"id": 7})
    env.responses[("GET", "/api/organization")] = (200, {"organizations": [{"id": 1, "name": "a"}]})
    c = AlgorithmClient()
    assert c.task.create([1, 2], {"method": "peer"}, name="sub") == {"id": 7}
    req = env.requests[-1]
    assert req["body"] == {"collaboration_id": 3, "organizations": [1, 2], "image": "vpnagent/echo:latest",
                           "input": {"method": "peer"}, "name": "sub"}
    assert c.organization.list() == [{"id": 1, "name": "a"}]
    assert env.requests[-1]["query"] == {"collaboration_id": "3"}


def test_wait_for_results(env):
    env.task_statuses[:] = ["active", "active", "completed"]
    assert AlgorithmClient().task.wait_for_results(7, timeout=5, interval=0.01) == [{"n": 1}]
    env.task_statuses[:] = ["failed"]
    with pytest.raises(AlgorithmClientError, match="boom"):
        AlgorithmClient().task.wait_for_results(7, timeout=5, interval=0.01)
    env.task_statuses[:] = ["active"]
    with pytest.raises(AlgorithmClientError, match="did not complete"):
        AlgorithmClient().task.wait_for_results(7, timeout=0.3, interval=0.05)
