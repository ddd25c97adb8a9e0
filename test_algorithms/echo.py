"""The echo algorithm: proves that every run can reach every other run over the VPN.

`central` creates one subtask ("peer") at every organisation of the collaboration, waits until
their echo ports are registered, sends each a payload and checks the echo, and collects the
peers' own measurements. Every `peer` serves a line-based TCP echo on port 8888, probes all
runs of its task (itself included: that goes out through the VPN and back) and keeps serving
until the central and every peer have reached it. Failures are reported per pair; one broken
pair never hides the others. Standard library only (runs in the plain python3 image).

Run as `python3 -m test_algorithms.echo`; input from VPNAGENT_INPUT_FILE
(`{"method": "central"|"peer", "kwargs": {...}}`), result to VPNAGENT_OUTPUT_FILE.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
from typing import Any, Callable

# Through the old import path on purpose: it finds the vpnagent_algorithm package in
# /app/clients/python of the echo image, whose PYTHONPATH is /app only.
from vpnagent.algorithm_client import AlgorithmClient, AlgorithmClientError

ECHO_PORT = 8888
ECHO_LABEL = "echo"
CONNECT_TIMEOUT_S = 5.0
MAX_LINE = 1 << 20  # a probe line is at most this long (payload is capped below it)
POLL_S = 0.2


class EchoTimeout(RuntimeError):
    """Something the echo test waits for did not happen in time; the message says what."""


def _log(msg: str) -> None:
    print(f"[echo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- echo server
class _EchoHandler(socketserver.StreamRequestHandler):
    timeout = 30  # an idle connection is dropped after this
    max_lines = 1000

    def handle(self) -> None:
        server: EchoServer = self.server  # type: ignore[assignment]
        for _ in range(self.max_lines):
            try:
                line = self.rfile.readline(MAX_LINE + 1)
            except OSError:
                return
            if not line:
                return
            try:
                sender = json.loads(line).get("from")
            except (ValueError, AttributeError):
                sender = None
            try:
                self.wfile.write(line)
                self.wfile.flush()
            except OSError:
                return
            # Counted only once its echo is out: the run ends as soon as its last awaited
            # sender is counted, and its exit would cut an echo still to be written.
            if isinstance(sender, str):
                server.record(sender)


class EchoServer(socketserver.ThreadingTCPServer):
    """Line-based TCP echo that remembers who (the probe's "from") reached it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "0.0.0.0", port: int = ECHO_PORT) -> None:
        super().__init__((host, port), _EchoHandler)
        self._senders: set[str] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def record(self, sender: str) -> None:
        with self._cond:
            self._senders.add(sender)
            self._cond.notify_all()

    def senders(self) -> set[str]:
        with self._cond:
            return set(self._senders)

    def wait_for_senders(self, count: int, timeout: float) -> set[str]:
        """Block until `count` distinct senders were seen or `timeout` passed; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._senders) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            return set(self._senders)

    def start(self) -> "EchoServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="echo-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# --------------------------------------------------------------------------- probing
def probe(host: str, port: int, sender: str, to: str, payload_size: int = 1024,
          connect_timeout: float = CONNECT_TIMEOUT_S, retry_for: float = 10.0,
          max_attempts: int = 20) -> dict:
    """Send one JSON line to an echo server and check it comes back byte for byte.

    Retries the connection (bounded) because a peer's port can be registered a moment before
    its server listens. Returns a pair {"from", "to", "ok", "error", "ms"}; never raises."""
    payload_size = max(0, min(int(payload_size), MAX_LINE - 200))
    line = json.dumps({"from": sender, "nonce": secrets.token_hex(8), "pad": "x" * payload_size}).encode() + b"\n"
    deadline = time.monotonic() + retry_for
    error = "no attempt made"
    for attempt in range(1, max_attempts + 1):
        t0 = time.perf_counter()
        try:
            with socket.create_connection((host, int(port)), timeout=connect_timeout) as sock:
                sock.settimeout(connect_timeout)
                sock.sendall(line)
                got = b""
                while not got.endswith(b"\n") and len(got) <= len(line):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            ms = (time.perf_counter() - t0) * 1e3
            if got == line:
                return {"from": sender, "to": to, "ok": True, "error": None, "ms": round(ms, 2)}
            # A wrong answer is not a race: report it at once.
            what = "connection closed before the echo" if not got.endswith(b"\n") else "echo differs from what was sent"
            return {"from": sender, "to": to, "ok": False, "ms": round(ms, 2),
                    "error": f"{what} ({len(got)} of {len(line)} bytes) from {host}:{port}"}
        except (socket.timeout, TimeoutError):
            error = f"timeout after {connect_timeout:.0f} s talking to {host}:{port}"
        except OSError as exc:
            error = f"{type(exc).__name__} {exc.strerror or exc} at {host}:{port}"
        if time.monotonic() >= deadline or attempt == max_attempts:
            break
        time.sleep(0.25)
    return {"from": sender, "to": to, "ok": False, "error": f"{error} (after {attempt} attempts)", "ms": None}


def wait_for_org_addresses(fetch: Callable[[], list[dict]], organizations: list[int], timeout: float,
                           interval: float = POLL_S, what: str = "echo") -> dict[int, dict]:
    """Poll `fetch()` until it holds one address per organisation; returns org id → address.
    On timeout, raises EchoTimeout naming the organisations still missing."""
    deadline = time.monotonic() + timeout
    found: dict[int, dict] = {}
    last_error = ""
    max_polls = int(timeout / max(interval, 0.01)) + 2
    for _ in range(max_polls):
        try:
            for addr in fetch():
                org = addr.get("organization_id")
                if org in organizations and org not in found:
                    found[org] = addr
            last_error = ""
        except AlgorithmClientError as exc:
            last_error = str(exc)
        if len(found) == len(set(organizations)) or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    missing = sorted(set(organizations) - set(found))
    if missing:
        names = ", ".join(f"org{o}" for o in missing)
        extra = f"; last error: {last_error}" if last_error else ""
        raise EchoTimeout(f"the {what} addresses of organisation(s) {names} did not appear within {timeout:.0f} s "
                          f"(found {len(found)} of {len(set(organizations))}){extra}")
    return found


# --------------------------------------------------------------------------- methods
def central(client: AlgorithmClient, timeout: float = 90, payload_size: int = 1024,
            organizations: list[int] | None = None) -> dict:
    """`organizations` defaults to all organisations of the collaboration."""
    t_end = time.monotonic() + timeout
    me = f"central@org{client.organization_id}"
    orgs = sorted({int(o) for o in organizations} if organizations
                  else {int(o["id"]) for o in client.organization.list()})
    if not orgs:
        raise EchoTimeout("the collaboration has no organisations")
    _log(f"{me}: creating the peer task for organisations {orgs}")
    sub = client.task.create(input_={"method": "peer", "kwargs": {"timeout": timeout, "n_peers": len(orgs),
                                                                  "payload_size": payload_size}},
                             organizations=orgs, name="echo peers")
    sub_id = int(sub["id"])

    def children() -> list[dict]:
        return [a for a in client.vpn.get_child_addresses()
                if a.get("label") == ECHO_LABEL and a.get("task_id") == sub_id]

    addresses = wait_for_org_addresses(children, orgs, timeout=max(1.0, t_end - time.monotonic()))
    _log(f"{me}: all {len(orgs)} peer addresses registered; probing")
    pairs = [probe(addresses[o]["ip"], addresses[o]["port"], me, f"org{o}", payload_size) for o in orgs]

    errors: list[str] = []
    try:
        results = client.wait_for_results(sub_id, interval=POLL_S, timeout=max(1.0, t_end - time.monotonic() + 15))
        if len(results) < len(orgs):  # a failed run has no result: say which and why
            errors.extend(failed_runs(client, sub_id))
    except AlgorithmClientError as exc:
        errors.append(f"peer task {sub_id}: {exc}")
        results = []
    for res in results:
        if isinstance(res, dict):
            pairs.extend(res.get("pairs") or [])
            errors.extend(res.get("errors") or [])
        else:
            errors.append(f"a peer run of task {sub_id} returned no result")
    expected = len(orgs) * len(orgs) + len(orgs)
    if len(pairs) != expected and not errors:
        errors.append(f"expected {expected} pairs, got {len(pairs)}")
    return {"organizations": orgs, "pairs": pairs, "errors": errors,
            "ok": bool(pairs) and all(p.get("ok") for p in pairs) and not errors and len(pairs) == expected}


def failed_runs(client: AlgorithmClient, task_id: int) -> list[str]:
    """One line per run of the task that did not complete: organisation, status, log tail."""
    try:
        runs = client.run.from_task(task_id)
    except AlgorithmClientError as exc:
        return [f"peer task {task_id}: cannot list its runs: {exc}"]
    return [f"peer task {task_id}: run {r.get('id')} (org{r.get('organization_id')}) is {r.get('status')}: "
            f"{(r.get('log') or '')[-300:]}" for r in runs if r.get("status") != "completed"]


def peer(client: AlgorithmClient, timeout: float = 90, n_peers: int | None = None,
         payload_size: int = 1024, port: int = ECHO_PORT) -> dict:
    t_end = time.monotonic() + timeout
    me = f"org{client.organization_id}"
    own_task = client.task_id
    server = EchoServer("0.0.0.0", port).start()
    _log(f"{me}: serving the echo on port {port}; waiting up to {timeout:.0f} s for "
         f"{n_peers if n_peers is not None else 'all'} peer addresses")
    errors: list[str] = []
    try:
        # Wait until all runs of this task have registered their echo port.
        entries: dict[int, dict] = {}
        stable_since = time.monotonic()
        for _ in range(int(timeout / POLL_S) + 2):
            try:
                for a in client.vpn.get_addresses(label=ECHO_LABEL):
                    if a.get("task_id") == own_task and a.get("organization_id") not in entries:
                        entries[a["organization_id"]] = a
                        stable_since = time.monotonic()
            except AlgorithmClientError as exc:
                _log(f"{me}: get_addresses: {exc}")
            if n_peers is not None and len(entries) >= n_peers:
                break
            # Without n_peers: take the set once it stopped growing for 3 s.
            if n_peers is None and entries and time.monotonic() - stable_since > 3:
                break
            if time.monotonic() >= t_end:
                break
            time.sleep(POLL_S)
        expected = n_peers if n_peers is not None else len(entries)
        if len(entries) < expected:
            errors.append(f"{me}: only {len(entries)} of {expected} peer addresses appeared within {timeout:.0f} s "
                          f"(have {sorted(f'org{o}' for o in entries)})")
        _log(f"{me}: probing {len(entries)} peers")
        pairs = [probe(entries[o]["ip"], entries[o]["port"], me, f"org{o}", payload_size) for o in sorted(entries)]
        # Keep serving until every peer and the central reached us.
        senders = server.wait_for_senders(expected + 1, max(0.0, t_end - time.monotonic()))
        if len(senders) < expected + 1:
            errors.append(f"{me}: reached by {len(senders)} of {expected + 1} senders ({sorted(senders)}) "
                          f"within {timeout:.0f} s")
        return {"pairs": pairs, "received_from": sorted(senders), "errors": errors}
    finally:
        server.stop()


def reach(client: AlgorithmClient, targets: list[dict], delay: float = 0.0, connect_timeout: float = 2.0,
          include_self: bool = True) -> dict:
    """Try to open a TCP connection to each target ({"what", "ip", "port"}), concurrently;
    used by the isolation test to show what an algorithm can and cannot reach. With
    `include_self`, its own address (hairpin through the VPN) is tried as a positive control."""
    server = None
    if include_self:
        server = EchoServer("0.0.0.0", ECHO_PORT).start()
        org = client.organization_id
        own = wait_for_org_addresses(lambda: client.vpn.get_addresses(only_self=True), [org], timeout=30)[org]
        targets = targets + [{"what": "own address (control)", "ip": own["ip"], "port": own["port"]}]
    time.sleep(delay)  # let the node's rules settle before probing

    def attempt(t: dict) -> dict:
        try:
            with socket.create_connection((str(t["ip"]), int(t["port"])), timeout=connect_timeout):
                return {**t, "ok": True, "error": None}
        except OSError as exc:
            return {**t, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}

    results: list[dict] = [{}] * len(targets)
    threads = []
    for i, t in enumerate(targets[:500]):
        th = threading.Thread(target=lambda i=i, t=t: results.__setitem__(i, attempt(t)), daemon=True)
        threads.append(th)
        th.start()
    for th in threads:
        th.join(connect_timeout + 5)
    if server is not None:
        server.stop()
    return {"probes": results}


def poll_api(client: AlgorithmClient, seconds: float = 10.0, interval: float = 0.5) -> dict:
    """Ask the server for this task's addresses through the node proxy every `interval` s
    for `seconds`: shows a run keeps its API access (past its first token's lifetime)."""
    t_end = time.monotonic() + seconds
    calls, errors = 0, []
    while time.monotonic() < t_end:
        calls += 1
        try:
            client.vpn.get_addresses(only_self=True)
        except AlgorithmClientError as exc:
            errors.append(f"{time.monotonic() - t_end + seconds:.1f} s: {exc}"[:300])
        time.sleep(interval)
    return {"calls": calls, "errors": errors}


METHODS: dict[str, Callable[..., dict]] = {"central": central, "peer": peer, "reach": reach, "poll_api": poll_api}


def main() -> int:
    in_path = os.environ.get("VPNAGENT_INPUT_FILE", "/mnt/run/input.json")
    out_path = os.environ.get("VPNAGENT_OUTPUT_FILE", "/mnt/run/output.json")
    try:
        with open(in_path) as f:
            task_input: Any = json.load(f)
    except (OSError, ValueError) as exc:
        _log(f"cannot read the input {in_path}: {exc}")
        return 2
    if not isinstance(task_input, dict) or task_input.get("method") not in METHODS:
        _log(f"input must be {{'method': one of {sorted(METHODS)}, 'kwargs': {{...}}}}, got {task_input!r}"[:500])
        return 2
    kwargs = task_input.get("kwargs") or {}
    try:
        result = METHODS[task_input["method"]](AlgorithmClient(), **kwargs)
        code = 0
    except (EchoTimeout, AlgorithmClientError, TypeError) as exc:
        _log(f"{task_input['method']} failed: {exc}")
        result = {"error": str(exc), "ok": False}
        code = 1
    with open(out_path, "w") as f:
        json.dump(result, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
