"""Node events: what a node must hear about at once, written with the change that caused it,
and the hub that pushes them down each node's open event stream (eventstream.py).

Written: a session hook looks at what a transaction changes, whoever changes it (API, admin
CLI, admin API), and adds node_event rows to the same transaction, so an event exists if and
only if its change was committed:
- run      a new run for the node (it should take it now)
- stop     a run of the node was killed (its task was: POST /task/<id>/kill)
- peers    a run, its status or its ports changed in a task family one of the node's
           active runs belongs to (its allow rules follow); or another node of such a
           family changed its WireGuard peer, was removed or had its key replaced (its
           WireGuard peers follow); or its collaboration's data plane changed (every node
           of the collaboration, so all switch planes)
- revoked  the node was removed, or its API key replaced (its tokens stop working)
- cert     one of the node's certificates was revoked (detail: the serial)

Read: one Hub per API process, while a stream is open, reads the rows every process and
host committed and hands each to the streams of its node. It reads when woken: by its own
process's commits, and on PostgreSQL by any commit's NOTIFY; else every POLL_S. The node still does a full resync now and then (vpnagent/push.py), so
an event lost on the way costs a delay, never a wrong state.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy import delete, event, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from .store import ACTIVE_STATES, KILLED, Certificate, Collaboration, Node, NodeEvent, Port, Run, Store, Task

log = logging.getLogger(__name__)

# A hub reads when told: at once after its own process commits events, and on PostgreSQL when
# any process's commit notifies it (LISTEN/NOTIFY). Else it looks every POLL_S: for events
# another process committed on SQLite (an admin command), and in case a notification was lost.
# Not faster: each wake-up of an idle thread cost this machine ~0.5 ms, and a hub that polled
# every 50 ms cost a worker 5 % of a core with a single stream open.
POLL_S = 1.0
CHANNEL = "vpnagent_node_events"
NEWEST_SQL = "SELECT max(seq) FROM node_event"
KEEP_S = 600  # rows older than this are deleted; a node away longer resyncs anyway
PRUNE_EVERY_S = 60
# Sequence numbers are taken at insert but seen at commit: on PostgreSQL a lower one can
# appear after a higher one was read. Gaps below the highest seen are read again this long
# (a transaction is short), then given up (a rolled-back insert leaves a gap for good).
GAP_WAIT_S = 5.0
MAX_GAP = 10_000
BATCH = 1000
# Fault injection for the tests: the hub reads events but hands none out, as if every
# push were lost on the way (tests/integration/test_push.py).
MUTE = bool(os.environ.get("VPNAGENT_FAULT_MUTE_EVENTS"))

_CHANGES = "vpnagent.events"  # the session.info key of what a transaction changed so far
_WROTE = "vpnagent.events.wrote"  # ... and that it wrote events (wake the hubs at commit)


@dataclass
class _Changes:
    new_runs: list[Run] = field(default_factory=list)
    tasks: set[int] = field(default_factory=set)
    port_runs: set[int] = field(default_factory=set)
    stopped: set[tuple[int, int]] = field(default_factory=set)  # (node, run)
    revoked: set[int] = field(default_factory=set)
    certs: list[tuple[int, str]] = field(default_factory=list)
    peer_nodes: set[int] = field(default_factory=set)  # nodes whose entry in others' GET /node/peers changed
    planes: set[int] = field(default_factory=set)  # collaborations whose data plane changed

    def __bool__(self) -> bool:
        return bool(self.new_runs or self.tasks or self.port_runs or self.stopped or self.revoked or self.certs
                    or self.peer_nodes or self.planes)


# What other nodes' WireGuard configs are made of (GET /node/peers); wg_updated_at is not.
WIREGUARD_FIELDS = ("wg_public_key", "wg_port", "wg_endpoints", "wg_seen_ip")


def _changed(obj: Any, attr: str) -> bool:
    return inspect(obj).attrs[attr].history.has_changes()


def _collect(session: Session, _flush_context: Any, _instances: Any) -> None:
    changes = session.info.setdefault(_CHANGES, _Changes())
    for obj in session.new:
        if isinstance(obj, Run):
            changes.new_runs.append(obj)
        elif isinstance(obj, Port):
            changes.port_runs.add(obj.run.id if obj.run is not None else obj.run_id)
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, Run) and (_changed(obj, "status") or _changed(obj, "ports")):
            changes.tasks.add(obj.task_id)
            if obj.status == KILLED and _changed(obj, "status"):
                changes.stopped.add((obj.node_id, obj.id))
        elif isinstance(obj, Port) and obj.run_id is not None:
            changes.port_runs.add(obj.run_id)
        elif isinstance(obj, Node):
            if _changed(obj, "removed_at") or _changed(obj, "key_version"):
                changes.revoked.add(obj.id)
                changes.peer_nodes.add(obj.id)
            elif any(_changed(obj, name) for name in WIREGUARD_FIELDS):
                changes.peer_nodes.add(obj.id)
        elif isinstance(obj, Collaboration) and _changed(obj, "data_plane"):
            changes.planes.add(obj.id)
        elif isinstance(obj, Certificate) and _changed(obj, "revoked_at") and obj.revoked_at is not None:
            changes.certs.append((obj.node_id, obj.serial))


def family_nodes(s: Session, task_ids: Iterable[int]) -> set[int]:
    """The nodes with an active run in the task family (the task, its parent, its children:
    the same relation GET /node/peers follows) of any of `task_ids`."""
    tasks = set(task_ids)
    if not tasks:
        return set()
    family = set(tasks)
    family |= set(s.scalars(select(Task.id).where(Task.parent_id.in_(tasks))))
    family |= {p for p in s.scalars(select(Task.parent_id).where(Task.id.in_(tasks))) if p is not None}
    return set(s.scalars(select(Run.node_id).where(Run.task_id.in_(family), Run.status.in_(ACTIVE_STATES))
                         .distinct()))


def family_peers(s: Session, node_id: int) -> set[int]:
    """The other nodes that share a task family with the node's active runs: the nodes
    whose GET /node/peers list it."""
    tasks = s.scalars(select(Run.task_id).where(Run.node_id == node_id, Run.status.in_(ACTIVE_STATES)))
    return family_nodes(s, tasks) - {node_id}


def collaboration_nodes(s: Session, collaboration_ids: Iterable[int]) -> set[int]:
    """Every node (not removed) of the collaborations, runs or not."""
    return set(s.scalars(select(Node.id).where(Node.collaboration_id.in_(set(collaboration_ids)),
                                               Node.removed_at.is_(None))))


def _write(session: Session) -> None:
    session.flush()  # commit flushes after this hook: what is still unflushed is collected now
    changes = session.info.pop(_CHANGES, None)
    if not changes:
        return
    rows: set[tuple[int, str, int | None, str | None]] = set()
    tasks = set(changes.tasks)
    for run in changes.new_runs:
        if run.id is not None:
            rows.add((run.node_id, "run", run.id, None))
            tasks.add(run.task_id)
    if changes.port_runs:
        tasks |= set(session.scalars(select(Run.task_id).where(Run.id.in_(changes.port_runs))))
    peers = family_nodes(session, tasks)
    for node in changes.peer_nodes:  # a removed node's runs were failed with it: `tasks` has those
        peers |= family_peers(session, node)
    if changes.planes:
        peers |= collaboration_nodes(session, changes.planes)
    rows |= {(node, "peers", None, None) for node in peers}
    rows |= {(node, "stop", run, None) for node, run in changes.stopped}
    rows |= {(node, "revoked", None, None) for node in changes.revoked}
    rows |= {(node, "cert", None, serial) for node, serial in changes.certs}
    if not rows:
        return
    session.add_all(NodeEvent(node_id=n, kind=k, run_id=r, detail=d) for n, k, r, d in sorted(rows, key=str))
    session.info[_WROTE] = True
    if session.get_bind().dialect.name == "postgresql":  # delivered to every listener at commit
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def _committed(session: Session) -> None:
    if session.info.pop(_WROTE, False):
        wake_all()


def _forget(session: Session, *_: Any) -> None:
    session.info.pop(_CHANGES, None)
    session.info.pop(_WROTE, None)


def record_events(sessions: sessionmaker) -> None:
    """Have every transaction of `sessions` write the node events its changes call for."""
    event.listen(sessions, "before_flush", _collect)
    event.listen(sessions, "before_commit", _write)
    event.listen(sessions, "after_commit", _committed)
    event.listen(sessions, "after_soft_rollback", _forget)


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class Event:
    seq: int
    node_id: int
    kind: str
    run_id: int | None = None
    detail: str | None = None

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq}
        if self.run_id is not None:
            out["run_id"] = self.run_id
        if self.detail is not None:
            out["detail"] = self.detail
        return out


class Cursor:
    """Which sequence numbers have been read: all up to `floor`, and `seen` above it. The
    next read asks for everything above the floor, so a gap is read again until it fills
    or GAP_WAIT_S has passed."""

    def __init__(self, start: int) -> None:
        self.floor = start
        self.seen: set[int] = set()
        self._gaps: dict[int, float] = {}

    def take(self, seqs: Iterable[int], now: float) -> list[int]:
        """The sequence numbers among `seqs` not taken before; moves the floor on."""
        new = sorted({q for q in seqs if q > self.floor and q not in self.seen})
        self.seen.update(new)
        top = max(self.seen, default=self.floor)
        if top - self.floor > MAX_GAP:  # a jump in the sequence, not transactions in flight
            self.floor, self.seen, self._gaps = top, set(), {}
            return new
        for q in range(self.floor + 1, top):
            if q not in self.seen:
                self._gaps.setdefault(q, now)
        self._gaps = {q: t for q, t in self._gaps.items() if q not in self.seen and now - t < GAP_WAIT_S}
        self.floor = min(self._gaps) - 1 if self._gaps else top
        self.seen = {q for q in self.seen if q > self.floor}
        return new


class Subscription:
    """One open event stream's queue."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.closed = False
        self._items: deque[Event] = deque()
        self._cond = threading.Condition()

    def put(self, ev: Event) -> None:
        with self._cond:
            self._items.append(ev)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()

    def get(self, timeout: float) -> list[Event]:
        """What arrived, waiting up to `timeout` for something; [] when nothing came (or
        the subscription was closed: see `closed`)."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items


_HUBS: "weakref.WeakSet[Hub]" = weakref.WeakSet()


def wake_all() -> None:
    """Have every hub of this process read now (this process committed events)."""
    for hub in list(_HUBS):
        hub.wake()


def close_all() -> None:
    """End every event stream of this process: the worker is stopping, and a stream would
    otherwise hold it for its whole shutdown timeout."""
    for hub in list(_HUBS):
        hub.close()


class Hub:
    """Reads the node_event rows every process commits and hands them to this process's
    subscriptions. Reads only while some stream is open."""

    def __init__(self, store: Store, poll: float = POLL_S) -> None:
        _HUBS.add(self)
        self.store = store
        self.poll = poll
        self._lock = threading.Lock()
        self._subs: dict[int, set[Subscription]] = {}
        self._cursor: Cursor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_prune = 0.0
        self._probe: Any = None  # a DBAPI connection (sqlite3 or psycopg), detached from the pool
        self._wake = threading.Event()
        self._listener: threading.Thread | None = None
        self.delivered = 0

    def subscribe(self, node_id: int) -> Subscription:
        sub = Subscription(node_id)
        with self._lock:
            if self._stop.is_set():
                sub.close()
                return sub
            if self._cursor is None:  # here, not in the thread: nothing committed after this is missed
                with self.store.session() as s:
                    self._cursor = Cursor(s.scalar(select(func.max(NodeEvent.seq))) or 0)
            self._subs.setdefault(node_id, set()).add(sub)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vpnagent-event-hub", daemon=True)
                self._thread.start()
            if self.store.engine.dialect.name == "postgresql" and (
                    self._listener is None or not self._listener.is_alive()):
                self._listener = threading.Thread(target=self._listen, name="vpnagent-event-listen", daemon=True)
                self._listener.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.node_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.node_id]

    @property
    def streams(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """End every stream of this process (the worker is stopping)."""
        self._wake.set()
        with self._lock:
            self._stop.set()
            subs = [sub for group in self._subs.values() for sub in group]
            self._subs.clear()
        for sub in subs:
            sub.close()

    def read_once(self) -> int:
        """Read what was committed since the last read and hand it out; the number of
        events read. Most polls find nothing: they cost one indexed max() on a connection
        kept for it (a session per poll cost a worker 5-7 % of a core, measured)."""
        now = time.monotonic()
        cursor = self._cursor
        if cursor is None:
            return 0
        if self._newest() <= cursor.floor:
            return 0
        with self.store.session() as s:
            rows = s.execute(select(NodeEvent.seq, NodeEvent.node_id, NodeEvent.kind, NodeEvent.run_id,
                                    NodeEvent.detail).where(NodeEvent.seq > cursor.floor)
                             .order_by(NodeEvent.seq).limit(BATCH)).all()
        by_seq = {r.seq: Event(r.seq, r.node_id, r.kind, r.run_id, r.detail) for r in rows}
        fresh = [by_seq[q] for q in cursor.take(by_seq, now)]
        if not MUTE:
            self._hand_out(fresh)
        return len(fresh)

    def _newest(self) -> int:
        """The highest sequence number committed, read on a database connection of the
        hub's own in autocommit (each read sees every commit before it, and no transaction
        stays open), as plain SQL: this runs every POLL_S on an idle thread, where every
        layer of Python above the driver showed up in the worker's CPU."""
        if self._probe is None:
            raw = self.store.engine.raw_connection()
            driver = raw.driver_connection
            raw.detach()  # held for good: not the pool's any more
            if self.store.engine.dialect.name == "sqlite":
                driver.isolation_level = None
            else:
                driver.autocommit = True
            self._probe = raw
        try:
            cur = self._probe.cursor()
            cur.execute(NEWEST_SQL)
            row = cur.fetchone()
            cur.close()
            return int(row[0] or 0)
        except Exception:
            self._drop_probe()  # a connection the database dropped: the next poll opens another
            raise

    def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                probe.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass

    def _prune(self) -> None:
        """Delete rows older than KEEP_S (any process may: the same rows either way)."""
        cutoff = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=KEEP_S)
        with self.store.session() as s:
            s.execute(delete(NodeEvent).where(NodeEvent.created_at < cutoff))

    def _hand_out(self, events: list[Event]) -> None:
        with self._lock:
            targets = [(sub, ev) for ev in events for sub in self._subs.get(ev.node_id, ())]
        for sub, ev in targets:
            sub.put(ev)
            self.delivered += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._subs:
                    self._thread = self._cursor = None  # the next stream starts from the newest row
                    self._drop_probe()
                    return
            self._wake.clear()  # before reading: a commit during the read wakes the next wait
            try:
                if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                    self._last_prune = time.monotonic()
                    self._prune()
                if self.read_once() >= BATCH:
                    continue
            except Exception as exc:  # noqa: BLE001 - the database may be away; streams stay open
                log.warning("node events: cannot read new events (%s); trying again", exc)
                self._stop.wait(1.0)
            self._wake.wait(self.poll)

    def _listen(self) -> None:
        """PostgreSQL: wake the hub when any process commits events (NOTIFY at commit).
        Waits on the connection's socket, so an idle hub costs nothing between events."""
        while not self._stop.is_set():
            raw = None
            try:
                raw = self.store.engine.raw_connection()
                conn = raw.driver_connection
                raw.detach()  # held for good: not the pool's any more
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                self._wake.set()  # what was committed before LISTEN is read now
                while not self._stop.is_set():
                    for _ in conn.notifies(timeout=5.0, stop_after=1):
                        self._wake.set()
            except Exception as exc:  # noqa: BLE001 - the database may be away; the hub polls meanwhile
                if not self._stop.is_set():
                    log.warning("node events: LISTEN failed (%s); polling every %g s until it works", exc, self.poll)
                    self._stop.wait(5.0)
            finally:
                if raw is not None:
                    try:
                        raw.close()
                    except Exception:  # noqa: BLE001
                        pass
