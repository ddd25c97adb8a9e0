"""The node's end of the push (vpnagent/push.py) and what the agent's loop does with it.

- the stream's text is read as server-sent events (comments and junk skipped);
- reconnects wait with full jitter, so nodes that lost one server restart come back spread
  out, and a server's Retry-After is honoured;
- against a real loopback HTTP server: events reach the callback, a planned end reconnects
  at once, a server without the stream (404) makes the agent poll;
- the agent acts on an event at once and otherwise asks the server only at its resync.
The real thing end to end: tests/integration/test_push.py."""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.fakes import FakeRuntime
from tests.waiting import wait_for
from vpnagent import push
from vpnagent.agent import RESYNC, Agent
from vpnagent.config import parse_config
from vpnagent.runtime import Container
from vpnagent.serverapi import ServerAPI


def test_server_sent_events_are_parsed_and_comments_and_junk_skipped():
    lines = ["event: hello", 'data: {"keepalive": 15}', "", ": keepalive", "", "id: 7", "event: run",
             'data: {"seq": 7,', 'data:  "run_id": 3}', "", "event: run", "data: not json", "",
             "retry: 1000", "event: peers", "data: {}", ""]
    got = list(push.parse(lines))
    assert got == [push.Message("hello", {"keepalive": 15}), push.Message("run", {"seq": 7, "run_id": 3}),
                   push.Message("peers", {})]


def test_reconnects_are_spread_with_full_jitter():
    rng = random.Random(1)
    first = [push.backoff(0, rng.random) for _ in range(1000)]
    assert 0 <= min(first) and max(first) <= push.BACKOFF_BASE_S
    # a thousand nodes that lost the same server: no more than a few percent in any tenth
    buckets = [sum(1 for w in first if i / 10 <= w < (i + 1) / 10) for i in range(10)]
    assert max(buckets) < 150, buckets
    assert push.backoff(30, lambda: 1.0) == push.BACKOFF_CAP_S
    assert push.backoff(3, lambda: 1.0) == push.BACKOFF_BASE_S * 8


# ---------------------------------------------------------------- a real loopback server
class Script:
    """What the loopback server answers to each GET /node/events, in turn."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.opened = 0
        self.times: list[float] = []


def _server(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # /token/node
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the connection is kept alive
            body = json.dumps({"access_token": "t"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            script.times.append(time.monotonic())
            answer = script.answers[min(script.opened, len(script.answers) - 1)]
            script.opened += 1
            if isinstance(answer, tuple):  # (status, headers)
                body = json.dumps({"msg": "no"}).encode()
                self.send_response(answer[0])
                for k, v in answer[1].items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in answer:  # each a chunk, sent as it comes
                if isinstance(part, float):
                    time.sleep(part)
                    continue
                data = part.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


@pytest.fixture
def loopback() -> Iterator:
    servers: list[ThreadingHTTPServer] = []

    def make(answers: list) -> tuple[Script, ServerAPI]:
        script = Script(answers)
        servers.append(_server(script))
        return script, ServerAPI(f"http://127.0.0.1:{servers[-1].server_address[1]}/api", "key")

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


HELLO = 'event: hello\ndata: {"keepalive": 15}\n\n'
BYE = 'event: bye\ndata: {"reason": "token expires"}\n\n'


def test_events_reach_the_callback_as_they_come_and_a_planned_end_reconnects_at_once(loopback):
    run = 'id: 5\nevent: run\ndata: {"seq": 5, "run_id": 9}\n\n'
    script, api = loopback([[HELLO, 0.3, run, ": keepalive\n\n", BYE], [HELLO, 30.0]])
    got: list[tuple[str, dict, float]] = []
    stream = push.EventStream(api, lambda k, d: got.append((k, d, time.monotonic()))).start()
    try:
        wait_for(lambda: [k for k, _, _ in got], "hello, run, hello", 5, until=lambda ks: ks == ["hello", "run", "hello"])
        assert got[1][1] == {"seq": 5, "run_id": 9}
        assert got[1][2] - script.times[0] >= 0.3  # handed over when it came, not when the response ended
        assert script.times[1] - script.times[0] < 0.3 + push.BACKOFF_BASE_S + 0.5
        assert stream.state == push.CONNECTED and stream.connects == 2 and stream.events == 1
    finally:
        stream.stop()


def test_a_server_without_the_stream_makes_it_unsupported(loopback):
    script, api = loopback([(404, {})])
    stream = push.EventStream(api, lambda k, d: None).start()
    try:
        wait_for(lambda: stream.state, "unsupported", 5, until=lambda s: s == push.UNSUPPORTED)
        time.sleep(0.3)
        assert script.opened == 1, "asked again at once: it waits UNSUPPORTED_RETRY_S"
    finally:
        stream.stop()


def test_a_busy_server_is_asked_again_after_its_retry_after(loopback):
    script, api = loopback([(503, {"Retry-After": "1"}), [HELLO, 30.0]])
    stream = push.EventStream(api, lambda k, d: None, rng=lambda: 0.5).start()  # jitter factor 1.0
    try:
        wait_for(lambda: stream.state, "connected", 5, until=lambda s: s == push.CONNECTED)
        assert 0.9 <= script.times[1] - script.times[0] < 2.0
    finally:
        stream.stop()


def test_a_broken_connection_is_retried_with_backoff(loopback):
    script, api = loopback([[HELLO], [HELLO], [HELLO, 30.0]])  # two end without a bye
    stream = push.EventStream(api, lambda k, d: None, rng=lambda: 1.0).start()
    try:
        wait_for(lambda: script.opened, "the third connection", 10, until=lambda n: n >= 3)
        gaps = [b - a for a, b in zip(script.times, script.times[1:])]
        assert gaps[0] >= 0.9 * push.BACKOFF_BASE_S and gaps[1] >= 1.9 * push.BACKOFF_BASE_S, gaps
    finally:
        stream.stop()


# ---------------------------------------------------------------- the agent's loop
class _Connected:
    state = push.CONNECTED

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def summary(self) -> dict:
        return {"state": self.state}


def _looping_agent(tmp_path: Path, monkeypatch, **extra) -> tuple[Agent, dict[str, list[float]]]:
    cfg = parse_config({"name": "pl1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node"), **extra})
    agent = Agent(cfg, runtime=object(), api=object())
    calls: dict[str, list[float]] = {}
    for name in ("_admit", "sync_peers", "_tell_server", "check_vpn", "check_cert", "_check_runs", "reconcile",
                 "_renew_tokens", "_deliver_reports", "_write_status"):
        monkeypatch.setattr(agent, name, lambda *a, _n=name: calls.setdefault(_n, []).append(time.monotonic()))
    return agent, calls


def test_the_agent_acts_on_an_event_at_once_and_asks_nothing_else_between_resyncs(tmp_path, monkeypatch):
    agent, calls = _looping_agent(tmp_path, monkeypatch, resync_interval=600)
    agent.push = _Connected()
    loop = threading.Thread(target=agent.serve_forever, daemon=True)
    loop.start()
    try:
        wait_for(lambda: calls.get("_tell_server"), "the first resync", 5)
        assert {k: len(calls.get(k, [])) for k in ("_admit", "sync_peers", "_tell_server")} == \
            {"_admit": 1, "sync_peers": 1, "_tell_server": 1}
        t0 = time.monotonic()
        agent.on_event("run", {"seq": 1, "run_id": 4})
        wait_for(lambda: len(calls["_admit"]), "the run event's admit", 2, 0.005, until=lambda n: n == 2)
        assert calls["_admit"][1] - t0 < 0.1
        agent.on_event("peers", {"seq": 2})
        wait_for(lambda: len(calls["sync_peers"]), "the peers event's sync", 2, 0.005, until=lambda n: n == 2)
        time.sleep(2.5)  # local checks go on; the server is asked nothing more
        assert len(calls["_admit"]) == 2 and len(calls["sync_peers"]) == 2 and len(calls["_tell_server"]) == 1
        assert len(calls["check_vpn"]) >= 1  # every CHECK_S
        agent.on_event("hello", {})  # a new connection: resync it all
        wait_for(lambda: len(calls["_tell_server"]), "the resync after hello", 2, until=lambda n: n == 2)
        agent.on_event("revoked", {"seq": 3})
        assert agent.server["state"] == "refused" and "removed" in agent.server["error"]
    finally:
        agent.stop()
        loop.join(5)
    assert not loop.is_alive()


def test_without_a_stream_the_agent_polls(tmp_path, monkeypatch):
    agent, calls = _looping_agent(tmp_path, monkeypatch, push=False, poll_interval=0.1, resync_interval=600)
    assert agent.push is None
    loop = threading.Thread(target=agent.serve_forever, daemon=True)
    loop.start()
    try:
        time.sleep(1.0)
    finally:
        agent.stop()
        loop.join(5)
    assert 6 <= len(calls["_admit"]) <= 12, len(calls["_admit"])
    assert set(RESYNC) == {"runs", "peers", "report"}


# ---------------------------------------------------------------- a killed task's runs
class _Peers:
    def __init__(self, runs: list[int]) -> None:
        self.runs = runs

    def node_peers(self, run_id=None) -> list[dict]:
        return [{"run_id": r, "peers": []} for r in self.runs]

    def peers_view(self) -> dict:
        return {"runs": self.node_peers(), "data_plane": "openvpn"}


def _agent_with_a_live_run(tmp_path: Path, api) -> tuple[Agent, FakeRuntime, str]:
    from vpnagent.agent import LiveRun

    runtime = FakeRuntime()
    algo = runtime.add(Container("c5", "vpnagent-pk1-run5", "running", {"vpnagent.run": "5"}, pid=4300)).id
    cfg = parse_config({"name": "pk1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    agent = Agent(cfg, runtime=runtime, api=api)
    agent.runs[5] = LiveRun(5, 3, "img", "holder", "172.30.0.5", 4242, container_id=algo)
    return agent, runtime, algo


def test_a_stop_event_kills_the_runs_algorithm_and_says_why(tmp_path):
    agent, runtime, algo = _agent_with_a_live_run(tmp_path, api=object())
    agent.on_event("stop", {"seq": 9, "run_id": 6})  # not this node's: nothing
    assert not [c for c in runtime.calls if c.startswith("kill")]
    agent.on_event("stop", {"seq": 10, "run_id": 5})
    assert runtime.calls[-1] == "kill vpnagent-pk1-run5 SIGKILL"
    assert "killed" in agent.runs[5].lost  # reported with the run


def test_a_run_stopped_while_starting_is_stopped_once_it_runs(tmp_path):
    agent, runtime, _ = _agent_with_a_live_run(tmp_path, api=object())
    agent._admitted[7] = False  # taken, not live yet
    agent.on_event("stop", {"seq": 11, "run_id": 7})
    assert agent._stopping[7].startswith("the server stopped the run")


def test_the_resync_stops_a_run_the_server_no_longer_has_active(tmp_path, monkeypatch):
    """The safety net for a lost stop event: the families the server lists are those of its
    active runs; a live run missing from them was ended at the server."""
    api = _Peers([5])
    agent, runtime, _ = _agent_with_a_live_run(tmp_path, api)
    monkeypatch.setattr(agent, "apply_network", lambda *a, **k: None)
    agent.vpn.state = object()  # a VPN is up (sync_peers does nothing without one)
    agent.sync_peers()
    assert not [c for c in runtime.calls if c.startswith("kill")]
    api.runs = []
    agent.sync_peers()
    assert runtime.calls[-1] == "kill vpnagent-pk1-run5 SIGKILL"
    assert "no longer has this run active" in agent.runs[5].lost


# ---------------------------------------------------------------- the doctor's check
def _doctor_ctx(api: ServerAPI, **extra):
    from vpnagent.doctor import Context

    cfg = parse_config({"name": "pd1", "server_url": api.base_url, "api_key": "k", "data_dir": "/tmp/pd1",
                        "allow_insecure_http": True, **extra})
    return Context(cfg)


def test_doctor_passes_a_stream_whose_hello_comes_at_once(loopback):
    from vpnagent.doctor import check_event_stream

    _, api = loopback([[HELLO, 30.0]])
    assert check_event_stream(_doctor_ctx(api)).startswith("open; the server's first event arrived after ")


def test_doctor_fails_a_stream_held_back_by_a_buffering_proxy(loopback, monkeypatch):
    from vpnagent import doctor

    monkeypatch.setattr(doctor, "STREAM_WAIT_S", 0.5)
    _, api = loopback([[2.0, HELLO, 30.0]])  # what a buffering proxy looks like: nothing for a while
    with pytest.raises(doctor.CheckFailed) as failed:
        doctor.check_event_stream(_doctor_ctx(api))
    assert "buffering" in failed.value.fix and "X-Accel-Buffering" in failed.value.fix


def test_doctor_warns_without_a_stream_and_skips_with_push_off(loopback):
    from vpnagent import doctor

    _, api = loopback([(404, {})])
    with pytest.raises(doctor.CheckWarning, match="no event stream"):
        doctor.check_event_stream(_doctor_ctx(api))
    _, api = loopback([(503, {"Retry-After": "30"})])
    with pytest.raises(doctor.CheckWarning, match="as many event streams"):
        doctor.check_event_stream(_doctor_ctx(api))
    with pytest.raises(doctor.NotApplicable):
        doctor.check_event_stream(_doctor_ctx(api, push=False))


class _Reports:
    def __init__(self) -> None:
        self.sent: list[list[int]] = []

    def report_runs(self, ids: list[int]) -> list[int]:
        self.sent.append(ids)
        return []


def test_an_unchanged_run_list_is_not_sent_again_until_a_new_stream_or_ten_minutes(tmp_path, monkeypatch):
    """An idle node's resync is one request: the list of runs it holds goes to the server
    when it changed, on every new event stream (the server may have been restored), and
    at least every REPORT_AGAIN_S."""
    from vpnagent import agent as agent_module

    api = _Reports()
    cfg = parse_config({"name": "pr1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    agent = Agent(cfg, runtime=object(), api=api)
    agent._tell_server()
    agent._tell_server()
    assert api.sent == [[]]
    agent._admitted[4] = False
    agent._tell_server()
    assert api.sent == [[], [4]]
    agent.on_event("hello", {})
    agent._tell_server()
    assert api.sent == [[], [4], [4]]
    clock = time.monotonic() + agent_module.REPORT_AGAIN_S + 1
    monkeypatch.setattr(agent_module.time, "monotonic", lambda: clock)
    agent._tell_server()
    assert api.sent == [[], [4], [4], [4]]
