"""Node events (server_ext/events.py) and the stream that pushes them (eventstream.py).

What a node relies on: every change that concerns it leaves an event in the transaction that
made it (and none when that transaction is rolled back), whoever made it; a hub in any API
process hands each event to the streams of its node, also when another process (another
engine) committed it; a real `serve` pushes them to an open stream within moments, ends the
stream of a removed node after telling it, turns streams beyond its limit away with a
Retry-After, and does not let open streams hold up its stop."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from sqlalchemy import select

from server_ext.events import GAP_WAIT_S, Cursor, Hub
from server_ext.store import NodeEvent, Store
from tests.server.test_serve import serve  # noqa: F401 - the fixture
from tests.waiting import wait_for


def events_of(store, after: int = 0) -> list[tuple[int, str, int | None, str | None]]:
    with store.session() as s:
        return [(e.node_id, e.kind, e.run_id, e.detail)
                for e in s.scalars(select(NodeEvent).where(NodeEvent.seq > after).order_by(NodeEvent.seq))]


def last_seq(store) -> int:
    with store.session() as s:
        return max(s.scalars(select(NodeEvent.seq)), default=0)


def node_ids(world) -> list[int]:
    from server_ext.store import Node
    with world.store.session() as s:
        return [n.id for n in s.scalars(select(Node).order_by(Node.id))]


# ---------------------------------------------------------------- written with the change
def test_a_new_task_tells_each_of_its_nodes_of_its_run(world):
    n1, n2, n3, _ = node_ids(world)
    before = last_seq(world.store)
    task = world.create_task([world.orgs[0], world.orgs[1]])
    runs = {r["node_id"]: r["id"] for r in world.client.get(f"/api/task/{task['id']}",
                                                              headers=world.user_headers()).json["runs"]} \
        if "runs" in task else None
    got = events_of(world.store, before)
    run_events = sorted((n, r) for n, k, r, _ in got if k == "run")
    assert [n for n, _ in run_events] == [n1, n2]
    assert all(r is not None for _, r in run_events)
    if runs:
        assert dict(run_events) == runs
    assert not [e for e in got if e[0] == n3], "a node with no run in the task hears nothing"


def test_ports_and_run_ends_tell_every_node_of_the_task_family(world):
    n1, n2, n3, n4 = node_ids(world)
    task = world.create_task([world.orgs[0], world.orgs[1]])
    with world.store.session() as s:
        from server_ext.store import Run
        run1, run2 = [r.id for r in s.scalars(select(Run).where(Run.task_id == task["id"]).order_by(Run.id))]
    for node, run in ((0, run1), (1, run2)):  # the nodes need a VPN address to register ports
        assert world.client.get("/api/vpn", headers=world.node_headers(node)).status_code == 200
        assert world.client.patch(f"/api/run/{run}", headers=world.node_headers(node),
                                  json={"status": "active"}).status_code == 200
    before = last_seq(world.store)
    r = world.client.post("/api/port", headers=world.node_headers(0), json={"run_id": run1, "port": 8888})
    assert r.status_code == 201, r.json
    assert sorted(events_of(world.store, before)) == [(n1, "peers", None, None), (n2, "peers", None, None)]

    before = last_seq(world.store)
    r = world.client.patch(f"/api/run/{run1}", headers=world.node_headers(0), json={"status": "completed"})
    assert r.status_code == 200
    # run1 is over: its node has no active run in the family left; run2's node must drop it
    assert events_of(world.store, before) == [(n2, "peers", None, None)]
    assert n3 not in [e[0] for e in events_of(world.store)] and n4 not in [e[0] for e in events_of(world.store)]


def test_a_subtask_tells_the_parents_node(world):
    n1, n2, *_ = node_ids(world)
    task = world.create_task([world.orgs[0]])
    with world.store.session() as s:
        from server_ext.store import Run
        parent_run = s.scalar(select(Run.id).where(Run.task_id == task["id"]))
    assert world.client.patch(f"/api/run/{parent_run}", headers=world.node_headers(0),
                              json={"status": "active"}).status_code == 200
    before = last_seq(world.store)
    world.create_task([world.orgs[1]], headers=world.container_headers(0, parent_run), image="img:1")
    got = events_of(world.store, before)
    assert (n2, "run") in [(n, k) for n, k, _, _ in got]
    assert (n1, "peers", None, None) in got  # its family grew a run


def test_removing_a_node_or_replacing_its_key_tells_it(world, cli):
    n1, n2, n3, _ = node_ids(world)
    before = last_seq(world.store)
    world.store.rotate_node_key(n2)
    assert events_of(world.store, before) == [(n2, "revoked", None, None)]
    assert world.client.get("/api/vpn", headers=world.node_headers(0)).status_code == 200
    with world.store.session() as s:
        from server_ext.store import Certificate
        serial = s.scalar(select(Certificate.serial).where(Certificate.node_id == n1))
    before = last_seq(world.store)
    status, _, err = cli("remove-node", str(n1))
    assert status == 0, err
    got = events_of(world.store, before)
    assert (n1, "revoked", None, None) in got and (n1, "cert", None, serial) in got


def test_a_refused_change_leaves_no_event(world):
    before = last_seq(world.store)
    r = world.client.post("/api/task", headers=world.user_headers(),
                          json={"collaboration_id": world.collab, "organizations": [world.orgs[0], world.orgs[3]],
                                "image": "img:1", "input": {}})
    assert r.status_code == 400  # org 4 is not in the collaboration: the run for org 1 is rolled back
    assert events_of(world.store, before) == []


# ---------------------------------------------------------------- read by any process
def test_a_hub_hands_out_what_another_engine_committed(world):
    n1, n2, *_ = node_ids(world)
    other = Store(world.store.engine.url.render_as_string(hide_password=False), migrate=False)
    hub = Hub(other)
    try:
        mine, theirs = hub.subscribe(n1), hub.subscribe(n2)
        world.create_task([world.orgs[0]])  # committed through another engine, as another process would
        hub.read_once()
        got = {e.kind: e for e in mine.get(0.1)}
        assert "run" in got and got["run"].run_id is not None
        assert theirs.get(0.01) == []
        hub.unsubscribe(mine)
        world.create_task([world.orgs[0]])
        hub.read_once()
        assert mine.get(0.01) == [], "an unsubscribed stream gets nothing"
    finally:
        hub.close()
        other.close()


def test_a_hub_is_woken_by_its_own_process_and_on_postgresql_by_any(world):
    """A hub waits POLL_S between looks (1 s) unless told: this process's commits wake it at
    once, and on PostgreSQL so do other processes' (LISTEN/NOTIFY). Here its poll is 30 s,
    so only a wake-up can deliver within the test's bound."""
    import subprocess
    import sys

    n1, n2, *_ = node_ids(world)
    hub = Hub(world.store, poll=30.0)
    try:
        sub = hub.subscribe(n1)
        time.sleep(0.3)  # the hub's first look (and its LISTEN) are done
        t0 = time.monotonic()
        world.create_task([world.orgs[0]])
        got = wait_for(lambda: sub.get(0.05), "the run event", 2.0)
        assert got[0].kind in ("run", "peers") and time.monotonic() - t0 < 1.0
        if world.store.engine.dialect.name != "postgresql":
            return
        other = hub.subscribe(n2)
        t0 = time.monotonic()
        url = world.store.engine.url.render_as_string(hide_password=False)
        code = ("import sys; from server_ext.store import Store; "
                f"s = Store({url!r}, migrate=False); s.rotate_node_key({n2}); s.close()")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        got = wait_for(lambda: other.get(0.05), "the revoked event from another process", 5.0)
        assert [e.kind for e in got] == ["revoked"]
        print(f"another process's event arrived {time.monotonic() - t0:.2f} s after it started")
    finally:
        hub.close()


def test_the_cursor_reads_a_gap_again_until_it_fills_or_is_given_up():
    c = Cursor(10)
    assert c.take([11, 13], now=0.0) == [11, 13]
    assert c.floor == 11  # 12 is in flight: read again
    assert c.take([12, 13], now=1.0) == [12]  # committed late; 13 not handed out twice
    assert c.floor == 13
    assert c.take([15], now=2.0) == [15] and c.floor == 13
    assert c.take([15], now=2.0 + GAP_WAIT_S) == [] and c.floor == 15  # 14 rolled back: given up
    assert c.take([14], now=10.0) == []  # below the floor: too late, the resync covers it


# ---------------------------------------------------------------- pushed by a real server
class Stream:
    """An open GET /node/events, read on a thread into (kind, data) pairs."""

    def __init__(self, served, token: str) -> None:
        self.events: list[tuple[str, dict]] = []
        self.ended = threading.Event()
        self.resp = requests.get(served.url + "/node/events", headers={"Authorization": f"Bearer {token}"},
                                 verify=str(served.data_dir / "pki" / "ca.crt"), stream=True, timeout=(5, 60))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = None
        try:
            for line in self.resp.iter_lines(chunk_size=None, decode_unicode=True):
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))
        except (requests.RequestException, AttributeError):  # AttributeError: closed by the test under the read
            pass
        finally:
            self.ended.set()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


def served_world(served):
    store = Store(f"sqlite:///{served.data_dir / 'store.db'}", migrate=False)
    org = store.create_organization("o1").id
    org2 = store.create_organization("o2").id
    collab = store.create_collaboration("c", [org, org2]).id
    node, node_key = store.create_node(org, collab, "n1")
    node2, node2_key = store.create_node(org2, collab, "n2")
    _, user_key = store.create_user(org, "u")
    verify = str(served.data_dir / "pki" / "ca.crt")

    def token(kind: str, key: str) -> str:
        r = requests.post(f"{served.url}/token/{kind}", json={"api_key": key}, verify=verify, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    return store, collab, org, (node.id, token("node", node_key)), (node2.id, token("node", node2_key)), \
        token("user", user_key), verify


def test_serve_pushes_a_new_run_to_its_node_at_once(serve):
    served = serve()
    store, collab, org, (node, node_token), _, user_token, verify = served_world(served)
    try:
        stream = Stream(served, node_token)
        assert stream.resp.status_code == 200 and stream.resp.headers["Content-Type"].startswith("text/event-stream")
        wait_for(lambda: stream.kinds() == ["hello"], "the hello", 5)
        t0 = time.monotonic()
        r = requests.post(f"{served.url}/task", headers={"Authorization": f"Bearer {user_token}"}, verify=verify,
                          json={"collaboration_id": collab, "organizations": [org], "image": "img:1"}, timeout=10)
        assert r.status_code == 201, r.text
        wait_for(lambda: "run" in stream.kinds(), "the run event", 5)
        took = time.monotonic() - t0
        run_event = dict(stream.events)["run"]
        with store.session() as s:
            from server_ext.store import Run
            assert s.get(Run, run_event["run_id"]).node_id == node
        assert took < 2.0, f"the push took {took:.2f} s"
    finally:
        store.close()


def test_a_removed_node_is_told_and_its_stream_ends(serve):
    served = serve()
    store, *_rest = served_world(served)
    (node, node_token), (_, other_token) = _rest[2], _rest[3]
    try:
        mine, other = Stream(served, node_token), Stream(served, other_token)
        wait_for(lambda: mine.kinds() == ["hello"] and other.kinds() == ["hello"], "both hellos", 5)
        store.remove_node(node)
        assert mine.ended.wait(5), "the removed node's stream stays open"
        assert mine.kinds()[1:] == ["revoked", "bye"], mine.events
        assert not other.ended.is_set() and other.kinds() == ["hello"], "another node heard of it"
        r = requests.get(served.url + "/node/events", headers={"Authorization": f"Bearer {node_token}"},
                         verify=served.data_dir / "pki" / "ca.crt", timeout=5)
        assert r.status_code == 401  # and it cannot open another
    finally:
        store.close()


def test_streams_beyond_the_limit_get_retry_after_and_the_api_still_answers(serve):
    served = serve(api_event_streams=1, api_threads=2, api_max_connections=4)
    store, *_rest = served_world(served)
    node_token = _rest[2][1]
    try:
        first = Stream(served, node_token)
        wait_for(lambda: first.kinds() == ["hello"], "the hello", 5)
        r = requests.get(served.url + "/node/events", headers={"Authorization": f"Bearer {node_token}"},
                         verify=served.data_dir / "pki" / "ca.crt", timeout=5)
        assert r.status_code == 503 and 10 <= int(r.headers["Retry-After"]) <= 60
        assert "api_event_streams" in r.json()["msg"]
        assert served.get("/health").status_code == 200  # the stream holds no request thread
    finally:
        store.close()


def test_streams_off_is_a_clear_404(serve):
    served = serve(api_event_streams=0)
    store, *_rest = served_world(served)
    try:
        r = requests.get(served.url + "/node/events", headers={"Authorization": f"Bearer {_rest[2][1]}"},
                         verify=served.data_dir / "pki" / "ca.crt", timeout=5)
        assert r.status_code == 404 and "api_event_streams: 0" in r.json()["msg"]
    finally:
        store.close()


def test_open_streams_do_not_hold_up_a_stop(serve):
    served = serve()
    store, *_rest = served_world(served)
    try:
        streams = [Stream(served, _rest[2][1]) for _ in range(3)]
        wait_for(lambda: all(s.kinds() == ["hello"] for s in streams), "the hellos", 5)
        t0 = time.monotonic()
        assert served.stop() == 0, served.output
        took = time.monotonic() - t0
        assert took < 5, f"stopping took {took:.1f} s with streams open (shutdown timeout 10 s)"
        for s in streams:
            assert s.ended.wait(2) and s.kinds()[-1] == "bye", s.events
    finally:
        store.close()


# ---------------------------------------------------------------- killing a task
def test_killing_a_task_stops_its_runs_and_subtasks_and_tells_their_nodes(world):
    from server_ext.store import Run
    n1, n2, *_ = node_ids(world)
    task = world.create_task([world.orgs[0], world.orgs[1]])
    run1, run2 = [r["id"] for r in task["runs"]]
    assert world.client.patch(f"/api/run/{run1}", headers=world.node_headers(0),
                              json={"status": "active"}).status_code == 200
    sub = world.create_task([world.orgs[1]], headers=world.container_headers(0, run1), image="img:1")
    done = world.create_task([world.orgs[0]])  # another task, finished: untouched
    assert world.client.patch(f"/api/run/{done['runs'][0]['id']}", headers=world.node_headers(0),
                              json={"status": "completed"}).status_code == 200
    before = last_seq(world.store)
    r = world.client.post(f"/api/task/{task['id']}/kill", headers=world.user_headers())
    assert r.status_code == 200, r.json
    sub_run = sub["runs"][0]["id"]
    assert r.json["killed"] == sorted([run1, run2, sub_run]) and r.json["status"] == "killed by user"
    with world.store.session() as s:
        runs = {run.id: run for run in s.scalars(select(Run))}
        assert {runs[i].status for i in (run1, run2, sub_run)} == {"killed by user"}
        assert all(runs[i].finished_at is not None and "killed by user" in runs[i].log for i in (run1, run2, sub_run))
        assert runs[done["runs"][0]["id"]].status == "completed"
    stops = sorted((n, r) for n, k, r, _ in events_of(world.store, before) if k == "stop")
    assert stops == sorted([(n1, run1), (n2, run2), (n2, sub_run)])
    status = world.client.get(f"/api/task/{task['id']}/status", headers=world.user_headers()).json["status"]
    assert status == "killed by user"  # vantage6's client counts it as finished

    # the node's late report changes nothing; a second kill is a no-op
    r = world.client.patch(f"/api/run/{run1}", headers=world.node_headers(0), json={"status": "completed"})
    assert r.status_code == 409
    before = last_seq(world.store)
    r = world.client.post(f"/api/task/{task['id']}/kill", headers=world.user_headers())
    assert r.status_code == 200 and r.json["killed"] == []
    assert events_of(world.store, before) == []


def test_only_a_researcher_who_sees_the_task_may_kill_it(world):
    task = world.create_task([world.orgs[0]])
    run = task["runs"][0]["id"]
    tries = ((world.user_headers(world.other_user_key), 403), (world.node_headers(0), 403),
             (world.container_headers(0, run), 403), ({}, 401))  # tokens first: issuing one notes the node seen
    before = world.snapshot()
    for headers, status in tries:
        r = world.client.post(f"/api/task/{task['id']}/kill", headers=headers)
        assert r.status_code == status, r.json
    assert world.client.post("/api/task/99999/kill", headers=world.user_headers()).status_code == 404
    assert world.snapshot() == before


def test_a_node_cannot_report_a_run_killed(world):
    task = world.create_task([world.orgs[0]])
    r = world.client.patch(f"/api/run/{task['runs'][0]['id']}", headers=world.node_headers(0),
                           json={"status": "killed by user"})
    assert r.status_code == 400 and "initializing, active, completed, failed" in r.json["msg"]
