"""Simulated nodes against a real `vpnagent-server serve` on loopback: what the push figures
of benchmarks/controlplane.py are measured with.

Why simulated: what the server pays for an idle node is the node's HTTP traffic (one open
event stream, a resync now and then), not its VPN or its containers. So a simulated node is
the agent's own client code (ServerAPI, EventStream, NodeTLSAdapter: HTTPS checked against
the server's CA) driven the way the agent loop drives it when idle, and nothing else. Each
node's stream holds a thread, as in the agent; the nodes' requests (resyncs, taking runs,
the polls of the old behaviour) share one small pool.

Everything here talks to 127.0.0.1 only, and every process it starts is ended by `close()`.
"""
from __future__ import annotations

import heapq
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

from vpnagent.agent import REPORT_AGAIN_S, SERVER_BACKOFF_MAX_S
from vpnagent.push import CONNECTED, EventStream
from vpnagent.serverapi import ServerAPI, ServerError, never_sent
from vpnagent.tls import NodeTLSAdapter

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc
def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of one process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- the server
ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) ')
PROBLEM = re.compile(r"Traceback|\[ERROR\]|\[CRITICAL\]| ERROR | CRITICAL |Exception")


@dataclass
class Served:
    """One `vpnagent-server serve` (gunicorn master and its worker) on 127.0.0.1, HTTPS
    with the CA it made, SQLite in its data dir; its output goes to `log`. Started again
    on the same port and data dir by calling start() after stop()."""
    workdir: Path
    config: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    url: str = ""
    started_at: float = 0.0  # monotonic, when this process said where it listens
    _offset: int = 0  # where this process's output starts in the log
    _scanned: int = 0  # how far workers() has read it
    _booted: list[int] = field(default_factory=list)
    _scan_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def ca(self) -> str:
        return str(self.data_dir / "pki" / "ca.crt")

    @property
    def log(self) -> Path:
        return self.workdir / "serve.log"

    def output(self, since: int = 0) -> str:
        with open(self.log, "rb") as fh:
            fh.seek(since)
            return fh.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def start(self, timeout: float = 90) -> float:
        """Start serving; seconds until it listened and its worker booted."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "server.yaml"
        cfg.write_text(yaml.safe_dump({"data_dir": str(self.data_dir), "host": "127.0.0.1", "port": self.port,
                                       **self.config}))
        self._offset = self.log_size()
        t0 = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "server_ext.cli", "serve", "--config", str(cfg)],
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + timeout
        listening = None
        while time.monotonic() < deadline:
            found = re.search(r"serving on (https://127\.0\.0\.1:(\d+)/api)", self.output(self._offset))
            if found and listening is None:
                listening = self.started_at = time.monotonic()
                self.url, self.port = found.group(1), int(found.group(2))
            if found and self.workers():
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve ended with {self.proc.returncode}:\n{self.output(self._offset)[-3000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"serve did not come up within {timeout} s:\n{self.output(self._offset)[-3000:]}")

    def workers(self) -> list[int]:
        """This process's live gunicorn workers (the log is read on from where the last look
        stopped: with the access log of a thousand nodes it grows by megabytes)."""
        with self._scan_lock:
            if self._scanned < self._offset:
                self._scanned, self._booted = self._offset, []
            with open(self.log, "rb") as fh:
                fh.seek(self._scanned)
                chunk = fh.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written is read next time
            self._scanned += len(complete)
            self._booted += [int(p) for p in re.findall(rb"Booting worker with pid: (\d+)", complete)]
            booted = list(self._booted)
        return [p for p in booted if Path(f"/proc/{p}").exists()]

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid, *self.workers()]

    def cpu_seconds(self) -> dict[int, float]:
        out = {}
        for pid in self.pids():
            try:
                out[pid] = cpu_seconds(pid)
            except FileNotFoundError:
                pass
        return out

    def rss_mb(self) -> float:
        return sum(rss_mb(p) for p in self.pids())

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM (a graceful stop); seconds until the master exited."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"serve did not stop within {timeout} s of SIGTERM (killed)") from None
        if status != 0:
            raise RuntimeError(f"serve exited with {status} after SIGTERM")
        return time.monotonic() - t0

    def kill(self) -> None:
        """The master and its workers (a session of their own), at once."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def statuses(self, since: int, until: int | None = None) -> Counter:
        """HTTP statuses in the access log between two log offsets."""
        text = self.output(since)
        if until is not None:
            text = text[:max(0, until - since)]
        return Counter(int(m.group(3)) for m in ACCESS.finditer(text))

    def problems(self) -> list[str]:
        """Log lines that say something went wrong (all processes started on this log)."""
        return [line for line in self.output().splitlines() if PROBLEM.search(line)]


# ---------------------------------------------------------------- counting what the nodes ask
def endpoint(method: str, url: str) -> str:
    path = re.sub(r"/\d+", "/<id>", url.split("/api", 1)[-1].split("?", 1)[0])
    return f"{method} {path}"


class Tally:
    """Requests the simulated nodes made, by endpoint and outcome (an HTTP status, or
    'refused' when the connection never completed, 'broken' for any other failure)."""

    TIMED = "GET /node/events"  # when each attempt to open a stream was made is kept too

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self.stream_attempts: list[float] = []  # monotonic, when each GET /node/events was sent

    def add(self, key: tuple[str, Any]) -> None:
        with self._lock:
            self._counts[key] += 1

    def attempt(self, ep: str, at: float) -> None:
        if ep == self.TIMED:
            with self._lock:
                self.stream_attempts.append(at)

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self._counts)


def summarise(counts: Counter) -> dict[str, Any]:
    """{"total", "by_endpoint": {ep: n}, "failed": {"ep outcome": n}} of a tally (difference)."""
    by_ep: Counter = Counter()
    failed: Counter = Counter()
    for (ep, outcome), n in counts.items():
        if n <= 0:
            continue
        by_ep[ep] += n
        if not (isinstance(outcome, int) and outcome < 400):
            failed[f"{ep} {outcome}"] += n
    return {"total": sum(by_ep.values()), "by_endpoint": dict(sorted(by_ep.items())),
            "failed": dict(sorted(failed.items()))}


class CountingSession(requests.Session):
    """vpnagent.tls.make_session's session (the node's TLS checks against the server's CA),
    counting every request's outcome."""

    def __init__(self, ca: str, tally: Tally) -> None:
        super().__init__()
        self.mount("https://", NodeTLSAdapter(ca))
        self.tally = tally

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        ep = endpoint(method, url)
        self.tally.attempt(ep, time.monotonic())
        try:
            resp = super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            self.tally.add((ep, "refused" if never_sent(exc) else "broken"))
            raise
        self.tally.add((ep, resp.status_code))
        return resp


# ---------------------------------------------------------------- the shared pool
class Scheduler:
    """Runs callables at their time on a small pool: 1,000 nodes' resyncs need a few
    threads, not 1,000."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="sim-node")
        self.errors: Counter = Counter()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sim-scheduler", daemon=True)
        self._thread.start()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            self._cond.notify()

    def soon(self, fn: Callable[[], None]) -> None:
        if not self._stopped:
            try:
                self.pool.submit(self._call, fn)
            except RuntimeError:  # shut down meanwhile
                pass

    def _call(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - counted and shown in the report, never silent
            self.errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            self.soon(fn)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- nodes


class Taken:
    """When each task's run was taken by its node (PATCH .../initializing returned), and
    when its "run" event reached the node."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.by_task: dict[int, tuple[float, int]] = {}
        self.events: dict[int, float] = {}  # run id -> perf_counter at arrival

    def event(self, run_id: int) -> None:
        with self._cond:
            self.events.setdefault(run_id, time.perf_counter())

    def taken(self, task_id: int, run_id: int, at: float) -> None:
        with self._cond:
            self.by_task[task_id] = (at, run_id)
            self._cond.notify_all()

    def wait(self, task_id: int, timeout: float) -> tuple[float, int] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while task_id not in self.by_task:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self.by_task[task_id]


class SimNode:
    """One node as the agent is when idle (vpnagent/agent.py serve_forever with push on):
    its event stream held open by EventStream; a resync (GET /run?state=pending, then POST
    /node/runs with the runs it holds, skipped as the agent skips it while that list is
    unchanged and younger than REPORT_AGAIN_S; GET /node/peers only matters with live runs,
    and it has none) every resync_interval x U(1.0, 1.1) and after every hello (which always
    reports); a "run" event answered by taking the pending runs (PATCH /run/<id> {"status":
    "initializing"})."""

    def __init__(self, node_id: int, api_key: str, url: str, ca: str, tally: Tally, sched: Scheduler,
                 taken: Taken, resync_interval: float) -> None:
        self.node_id = node_id
        self.session = CountingSession(ca, tally)
        self.api = ServerAPI(url, api_key, session=self.session)
        self.stream = EventStream(self.api, self.on_event)
        self.sched = sched
        self.taken = taken
        self.resync_interval = resync_interval
        self.hellos: list[float] = []  # monotonic
        self.kinds: Counter = Counter()
        self.held: set[int] = set()
        self.last_report: tuple[list[int], float] | None = None
        self.failures = 0
        self.periodic = True  # False: the resync every resync_interval pauses (hellos still resync)
        self._lock = threading.Lock()
        self._due: set[str] = set()
        self._queued = False
        self._stopped = False

    def start(self, first_resync_in: float) -> None:
        """Open the stream; the periodic resync first runs `first_resync_in` s from now
        (a node that has run for a while is at any phase of its interval)."""
        self.stream.start()
        self.sched.at(time.monotonic() + first_resync_in, self._periodic)

    def stop(self) -> None:
        self._stopped = True
        self.stream.stop()

    @property
    def connected(self) -> bool:
        return self.stream.state == CONNECTED

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        self.kinds[kind] += 1
        if kind == "hello":
            self.hellos.append(time.monotonic())
            self.last_report = None
            self.want("runs", "report")
        elif kind == "run":
            if isinstance(data.get("run_id"), int):
                self.taken.event(data["run_id"])
            self.want("runs")

    def want(self, *what: str) -> None:
        with self._lock:
            self._due.update(what)
            if self._queued or self._stopped or not self._due:
                return
            self._queued = True
        self.sched.soon(self._work)

    def _periodic(self) -> None:
        if self._stopped:
            return
        if self.periodic:
            self.want("runs", "report")
        self.sched.at(time.monotonic() + self.resync_interval * random.uniform(1.0, 1.1), self._periodic)

    def _work(self) -> None:
        with self._lock:
            due, self._due, self._queued = self._due, set(), False
        if self._stopped or not due:
            return
        try:
            if "runs" in due:
                for run in self.api.pending_runs():
                    self.api.update_run(int(run["id"]), "initializing")
                    at = time.perf_counter()
                    self.held.add(int(run["id"]))
                    self.taken.taken(int(run["task_id"]), int(run["id"]), at)
            ids = sorted(self.held)
            last = self.last_report
            if "report" in due and not (last and last[0] == ids and time.monotonic() - last[1] < REPORT_AGAIN_S):
                self.api.report_runs(ids)
                self.last_report = (ids, time.monotonic())
            self.failures = 0
        except ServerError:
            self.failures += 1
            with self._lock:
                self._due |= due
            wait = min(SERVER_BACKOFF_MAX_S, 0.5 * 2 ** min(self.failures, 8)) * random.uniform(0.8, 1.2)
            self.sched.at(time.monotonic() + wait, lambda: self.want())

    def finish(self, run_id: int) -> None:
        """The run is over (the benchmark says so, outside any timing)."""
        self.api.update_run(run_id, "completed")
        self.held.discard(run_id)

    def close(self) -> None:
        self.stop()
        self.session.close()


class PollingNode:
    """The agent before the push (the issue's baseline): GET /run?state=pending and GET
    /node/peers, then wait poll_interval (0.5 s), for ever."""

    def __init__(self, api_key: str, url: str, ca: str, tally: Tally, sched: Scheduler,
                 poll_interval: float = 0.5) -> None:
        self.session = CountingSession(ca, tally)
        self.api = ServerAPI(url, api_key, session=self.session)
        self.sched = sched
        self.poll_interval = poll_interval
        self.polls = 0
        self._stopped = False

    def start(self, first_in: float) -> None:
        self.sched.at(time.monotonic() + first_in, self._poll)

    def _poll(self) -> None:
        if self._stopped:
            return
        try:
            self.api.pending_runs()
            self.api.node_peers()
            self.polls += 1
        except ServerError:
            pass  # counted by the session
        self.sched.at(time.monotonic() + self.poll_interval, self._poll)

    def stop(self) -> None:
        self._stopped = True

    def close(self) -> None:
        self.stop()
        self.session.close()


# The sampler runs in a process of its own: in this one, 1,000 reconnecting streams hold the
# GIL for seconds at a time, and a thread here would miss exactly the seconds that matter.
SAMPLER = r"""
import os, sys, time
bench, interval = int(sys.argv[1]), float(sys.argv[2])
tck, me = os.sysconf("SC_CLK_TCK"), os.getpid()

def cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            st = fh.read()
    except OSError:
        return None
    f = st[st.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / tck

def children(pid):
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as fh:
                out += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out

def server():
    masters = [p for p in children(bench) if p != me]
    pids = masters + [w for m in masters for w in children(m)]
    return {p: c for p in pids if (c := cpu(p)) is not None}

last, lb, t = server(), cpu(bench), time.monotonic()
while lb is not None:
    time.sleep(interval)
    now, nb, tn = server(), cpu(bench), time.monotonic()
    if nb is None:
        break
    used = sum(c - last.get(p, 0.0) for p, c in now.items())  # a new process: all it used since it was born
    print(f"{t:.4f} {tn:.4f} {100 * used / (tn - t):.2f} {100 * (nb - lb) / (tn - t):.2f}", flush=True)
    last, lb, t = now, nb, tn
"""


class CpuSampler:
    """CPU use of the server's processes (this process's children and theirs: whichever are
    alive, as a restart replaces them) and of this process, every `interval` s, as % of
    one core, measured by a separate sampler process."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float, float]] = []  # (from, to (monotonic), server %, this %)
        self._proc: subprocess.Popen | None = None

    def start(self) -> CpuSampler:
        self._proc = subprocess.Popen([sys.executable, "-c", SAMPLER, str(os.getpid()), str(self.interval)],
                                      stdout=subprocess.PIPE, text=True)
        return self

    def stop(self) -> list[tuple[float, float, float, float]]:
        if self._proc is None:
            return self.samples
        self._proc.terminate()
        try:
            out, _ = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        self._proc = None
        self.samples = [tuple(float(x) for x in line.split()) for line in out.splitlines()  # type: ignore[misc]
                        if len(line.split()) == 4]
        return self.samples


def start_spread(nodes: list, rate: float, start: Callable[[Any, int], None]) -> None:
    """Start `nodes` at `rate` per second (a fleet comes up over time, not in one instant)."""
    t0 = time.monotonic()
    for i, node in enumerate(nodes):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        start(node, i)


def wait_until(check: Callable[[], bool], what: str, timeout: float, interval: float = 0.05) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - t0
