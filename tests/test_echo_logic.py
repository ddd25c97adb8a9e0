"""The echo algorithm's parts on 127.0.0.1 with real sockets: server, probe, the central/peer
choreography against an in-memory fake server, and the matrix printout."""
from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest

from test_algorithms import echo
from test_algorithms.echo import EchoServer, EchoTimeout, probe, wait_for_org_addresses
from test_algorithms.send_echo import format_matrix


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def echo_server():
    server = EchoServer("127.0.0.1", 0).start()
    try:
        yield server
    finally:
        server.stop()


def test_probe_against_echo_server(echo_server):
    pair = probe("127.0.0.1", echo_server.port, "org1", "org2", payload_size=4096)
    assert pair["ok"] is True and pair["error"] is None
    assert pair["from"] == "org1" and pair["to"] == "org2" and pair["ms"] >= 0
    probe("127.0.0.1", echo_server.port, "central@org1", "org2")
    # a sender is counted just after its echo went out: wait for it, do not race it
    assert echo_server.wait_for_senders(2, timeout=5) == {"org1", "central@org1"}
    assert echo_server.senders() == {"org1", "central@org1"}


def test_echo_server_echoes_several_lines_per_connection(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as s:
        f = s.makefile("rwb")
        for i in range(3):
            line = json.dumps({"from": f"org{i}", "nonce": str(i)}).encode() + b"\n"
            f.write(line)
            f.flush()
            assert f.readline() == line
    assert echo_server.wait_for_senders(3, timeout=2) == {"org0", "org1", "org2"}


def test_wait_for_senders_is_bounded(echo_server):
    t0 = time.monotonic()
    assert echo_server.wait_for_senders(1, timeout=0.3) == set()
    assert time.monotonic() - t0 < 2


def test_probe_to_closed_port_reports_error_bounded():
    t0 = time.monotonic()
    pair = probe("127.0.0.1", free_port(), "org1", "org3", retry_for=0.6, connect_timeout=1)
    assert pair["ok"] is False and pair["ms"] is None
    assert "ConnectionRefusedError" in pair["error"] and "attempts" in pair["error"]
    assert time.monotonic() - t0 < 5


def test_probe_retries_until_late_server_listens():
    port = free_port()
    holder: dict = {}

    def start_late():
        time.sleep(0.5)
        holder["server"] = EchoServer("127.0.0.1", port).start()

    t = threading.Thread(target=start_late)
    t.start()
    try:
        pair = probe("127.0.0.1", port, "org1", "org2", retry_for=5)
    finally:
        t.join()
        holder["server"].stop()
    assert pair["ok"] is True, pair


def test_probe_detects_a_wrong_echo():
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)

        def liar():
            conn, _ = lsock.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b'{"from": "someone else"}\n')

        t = threading.Thread(target=liar)
        t.start()
        pair = probe("127.0.0.1", lsock.getsockname()[1], "org1", "org2", payload_size=10)
        t.join()
    assert pair["ok"] is False and "differs" in pair["error"]


def test_missing_organisations_are_named_in_the_timeout():
    addrs = [{"organization_id": 1, "ip": "x", "port": 1}, {"organization_id": 3, "ip": "y", "port": 2}]
    with pytest.raises(EchoTimeout) as info:
        wait_for_org_addresses(lambda: addrs, [1, 2, 3, 4], timeout=0.3, interval=0.05)
    msg = str(info.value)
    assert "org2, org4" in msg and "org1" not in msg.split("found")[0] and "2 of 4" in msg
    assert set(wait_for_org_addresses(lambda: addrs, [1, 3], timeout=1)) == {1, 3}


# ----------------------------------------------------------- central + peers, in process
class FakeWorld:
    """What the server and nodes would do, in memory: subtask runs are threads on 127.0.0.1."""

    def __init__(self, orgs: list[int], broken_org: int | None = None) -> None:
        self.orgs = orgs
        self.broken_org = broken_org
        self.addresses: list[dict] = []
        self.threads: list[threading.Thread] = []
        self.results: dict[int, dict] = {}

    def client(self, org: int, task_id: int) -> "FakeClient":
        return FakeClient(self, org, task_id)


class FakeClient:
    def __init__(self, world: FakeWorld, org: int, task_id: int) -> None:
        self.world, self.organization_id, self.task_id = world, org, task_id
        self.vpn = self
        self.task = self
        self.organization = self
        self.run = self

    # organization.list
    def list(self):
        return [{"id": o, "name": f"o{o}"} for o in self.world.orgs]

    # vpn
    def get_addresses(self, label=None, **flags):
        return [a for a in self.world.addresses if label is None or a["label"] == label]

    def get_child_addresses(self):
        return [a for a in self.world.addresses if a["parent_id"] == self.task_id]

    # task (vantage6's order: input_ first)
    def create(self, input_, organizations=None, name="subtask", description=None):
        sub = 100
        for org in organizations:
            port = free_port()
            if org != self.world.broken_org:  # the broken one registers an address nobody serves
                def run(org=org, port=port):
                    self.world.results[org] = echo.peer(self.world.client(org, sub), port=port,
                                                        **input_["kwargs"])
                t = threading.Thread(target=run)
                t.start()
                self.world.threads.append(t)
            self.world.addresses.append({"ip": "127.0.0.1", "port": port, "label": "echo",
                                         "organization_id": org, "task_id": sub, "parent_id": self.task_id})
        return {"id": sub}

    def wait_for_results(self, task_id, interval=1, timeout=None):
        for t in self.world.threads:
            t.join(timeout)
        return [self.world.results[o] for o in sorted(self.world.results)]

    # run.from_task: the broken organisation's run failed
    def from_task(self, task_id):
        return [{"id": 200 + o, "organization_id": o, "status": "failed" if o == self.world.broken_org else "completed",
                 "log": "no echo server" if o == self.world.broken_org else ""} for o in self.world.orgs]


def test_central_and_peers_all_pairs_ok():
    world = FakeWorld([1, 2, 3])
    result = echo.central(world.client(1, 50), timeout=20, payload_size=100)
    assert result["organizations"] == [1, 2, 3]
    assert len(result["pairs"]) == 3 * 3 + 3
    assert result["ok"] is True, result
    assert {(p["from"], p["to"]) for p in result["pairs"]} >= {("central@org1", "org2"), ("org3", "org3")}
    assert world.results[2]["received_from"] == ["central@org1", "org1", "org2", "org3"]


def test_central_reports_a_dead_peer_per_pair():
    world = FakeWorld([1, 2, 3], broken_org=3)
    result = echo.central(world.client(1, 50), timeout=3, payload_size=10)
    assert result["ok"] is False
    bad = {(p["from"], p["to"]) for p in result["pairs"] if not p["ok"]}
    assert bad == {("central@org1", "org3"), ("org1", "org3"), ("org2", "org3")}
    # the run without a result is named with its status and log
    assert any("run 203 (org3) is failed: no echo server" in e for e in result["errors"]), result["errors"]
    good = [p for p in result["pairs"] if p["ok"]]
    assert len(good) == 2 * 2 + 2


# ----------------------------------------------------------- matrix
def _pairs(fail: set[tuple[str, str]] = frozenset()) -> list[dict]:
    out = []
    for src in ["central@org1", "org1", "org2", "org3"]:
        for dst in ["org1", "org2", "org3"]:
            ok = (src, dst) not in fail
            out.append({"from": src, "to": dst, "ok": ok, "error": None if ok else "timeout after 5 s", "ms": 1.5})
    return out


def test_matrix_all_ok():
    text = format_matrix({"organizations": [1, 2, 3], "pairs": _pairs(), "ok": True})
    lines = text.splitlines()
    assert lines[0].split()[-3:] == ["org1", "org2", "org3"]
    assert lines[1].startswith("central@org1") and lines[1].split()[1:] == ["ok", "ok", "ok"]
    assert "FAIL" not in text and "errors:" not in text
    assert lines[-1].startswith("all 12 pairs ok")


def test_matrix_partly_failed():
    fail = {("org1", "org3"), ("org2", "org3"), ("central@org1", "org3")}
    text = format_matrix({"organizations": [1, 2, 3], "pairs": _pairs(fail), "ok": False,
                          "errors": ["org3: reached by 1 of 4 senders"]})
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:5]}
    assert rows["org1"] == ["ok", "ok", "FAIL"] and rows["org3"] == ["ok", "ok", "ok"]
    assert "  org2 -> org3: timeout after 5 s" in text
    assert "org3: reached by 1 of 4 senders" in text
    assert text.splitlines()[-1].startswith("3 of 12 pairs failed")


# ----------------------------------------------------------- send_echo against a fake server
def _fake_server(task_runs: list[dict], statuses: list[str]):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posted: list[tuple[str, dict | None, str | None]] = []

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, payload):
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            posted.append((self.path, data, self.headers.get("Authorization")))
            if self.path == "/api/token/user":
                self._send(200 if data["api_key"] == "good" else 401,
                           {"access_token": "utok"} if data["api_key"] == "good" else {"msg": "unknown API key"})
            else:
                self._send(201, {"id": 42})

        def do_GET(self):
            posted.append((self.path, None, self.headers.get("Authorization")))
            if self.path.startswith("/api/organization"):
                self._send(200, {"organizations": [{"id": 2}, {"id": 1}, {"id": 3}]})
            else:
                status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                self._send(200, {"id": 42, "status": status, "runs": task_runs})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/api", posted


def test_send_echo_creates_one_central_task_and_returns_its_result():
    from test_algorithms.send_echo import send_echo

    result = {"organizations": [1, 2, 3], "pairs": _pairs(), "ok": True}
    httpd, url, posted = _fake_server([{"id": 1, "status": "completed", "result": result}],
                                      ["pending", "active", "completed"])
    try:
        lines: list[str] = []
        assert send_echo(url, "good", 7, timeout=10, progress=lines.append) == result
    finally:
        httpd.shutdown()
        httpd.server_close()
    task_post = [p for p in posted if p[0] == "/api/task"][0]
    assert task_post[2] == "Bearer utok"
    assert task_post[1]["organizations"] == [1] and task_post[1]["collaboration_id"] == 7
    assert task_post[1]["input"]["method"] == "central"
    assert any("completed" in line for line in lines)


def test_send_echo_errors_carry_the_server_message():
    from test_algorithms.send_echo import SendEchoError, send_echo

    httpd, url, _ = _fake_server([{"id": 1, "status": "failed", "result": {"error": "addresses of org3 missing"},
                                   "log": "trace"}], ["failed"])
    try:
        with pytest.raises(SendEchoError, match="unknown API key"):
            send_echo(url, "bad", 7, timeout=5, progress=lambda m: None)
        with pytest.raises(SendEchoError, match="org3 missing"):
            send_echo(url, "good", 7, timeout=5, progress=lambda m: None)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_sender_counts_only_once_its_echo_is_out(echo_server, monkeypatch):
    """A peer run ends as soon as its last awaited sender is recorded, and its process exit
    takes the echo server's threads with it: the echo must already be on its way then, or
    the last sender sees the connection closed with nothing echoed (seen in a stress run:
    "connection closed before the echo (0 of 1081 bytes)")."""
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as s:
        seen_at_record: list[bool] = []
        recorded = echo_server.record

        def record(sender: str) -> None:
            readable, _, _ = select.select([s], [], [], 0.5)  # has the echo reached the client?
            seen_at_record.append(bool(readable))
            recorded(sender)

        monkeypatch.setattr(echo_server, "record", record)
        line = json.dumps({"from": "org9", "nonce": "n"}).encode() + b"\n"
        s.sendall(line)
        assert echo_server.wait_for_senders(1, timeout=5) == {"org9"}
        assert seen_at_record == [True]
        assert s.makefile("rb").readline() == line
