"""The node proxy against a real upstream HTTP server on loopback."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from vpnagent.proxy import NodeProxy


@pytest.fixture
def upstream():
    seen = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _any(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            seen.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"),
                         "cookie": self.headers.get("Cookie"), "body": body})
            out = json.dumps({"ok": True, "path": self.path}).encode()
            if self.path.startswith("/api/vpn/algorithm/addresses"):
                out = json.dumps({"addresses": [{"ip": "10.76.0.2", "port": 6000, "label": "echo"}]}).encode()
            self.send_response(418 if self.path.startswith("/api/teapot") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PATCH = do_DELETE = _any

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/api", seen
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def proxy(upstream):
    p = NodeProxy("127.0.0.1", 0, upstream[0]).start()
    yield p
    p.stop()


def test_forwards_path_query_body_and_the_containers_own_token(proxy, upstream):
    _, seen = upstream
    r = requests.post(f"{proxy.url}/task?x=1", json={"a": 1},
                      headers={"Authorization": "Bearer ctr", "Cookie": "secret=1"}, timeout=5)
    assert r.status_code == 200 and r.json()["path"] == "/api/task?x=1"
    assert seen[-1]["auth"] == "Bearer ctr"
    assert seen[-1]["cookie"] is None  # only the headers the API needs pass
    assert json.loads(seen[-1]["body"]) == {"a": 1}


def test_passes_upstream_status_through(proxy):
    assert requests.get(f"{proxy.url}/teapot", timeout=5).status_code == 418


def test_rejects_other_paths_and_oversized_bodies(proxy, upstream):
    _, seen = upstream
    base = proxy.url[: -len("/api")]
    assert requests.get(f"{base}/etc/passwd", timeout=5).status_code == 404
    r = requests.post(f"{proxy.url}/task", data=b"x" * (65 * 1024), timeout=5)
    assert r.status_code == 413 and "64 KiB" in r.json()["msg"]
    assert seen == []


def test_unreachable_server_is_502(upstream):
    p = NodeProxy("127.0.0.1", 0, "http://127.0.0.1:1/api").start()
    try:
        r = requests.get(f"{p.url}/vpn/algorithm/addresses", timeout=10)
        assert r.status_code == 502 and "cannot reach" in r.json()["msg"]
    finally:
        p.stop()


def test_address_lists_reach_the_agent_before_the_algorithm(upstream):
    """The agent opens its sending-side rules for every address an algorithm learns, before
    the algorithm can connect (else the first SYN is dropped and retried 1 s later)."""
    events = []
    p = NodeProxy("127.0.0.1", 0, upstream[0], on_addresses=lambda a: events.append(("hook", a))).start()
    try:
        r = requests.get(f"{p.url}/vpn/algorithm/addresses?label=echo", timeout=5)
        events.append(("reply", r.json()))
        assert events[0] == ("hook", [{"ip": "10.76.0.2", "port": 6000, "label": "echo"}])
        assert events[1][0] == "reply"
        requests.get(f"{p.url}/organization", timeout=5)
        assert len(events) == 2  # other paths do not call it
    finally:
        p.stop()


def test_a_failing_address_hook_does_not_cost_the_algorithm_its_answer(upstream):
    def broken(_addresses):
        raise RuntimeError("agent busy")

    p = NodeProxy("127.0.0.1", 0, upstream[0], on_addresses=broken).start()
    try:
        r = requests.get(f"{p.url}/vpn/algorithm/addresses", timeout=5)
        assert r.status_code == 200 and r.json()["addresses"][0]["port"] == 6000
    finally:
        p.stop()
