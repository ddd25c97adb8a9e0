"""ring_sum: a secure sum over a ring of peer runs that talk to each other directly.

The example of docs/algorithm-guide.md. `central` starts one `node` subtask per organisation
and returns the sum of their private values; no value ever reaches the server or central.
The nodes pass one number around a ring over the VPN: the first node adds a random mask to
its value and sends it to the next, every node adds its own value and passes it on, and when
the number is back at the first node it removes the mask. Each node sees only a masked
partial sum, and the traffic goes node to node, not through the server.

    central  ──POST /task──▶ node@org1 ─▶ node@org2 ─▶ node@org3 ─┐
        ▲                        ▲   (mask + v1)  (+ v2)    (+ v3) │
        └── results ◀── total ───┴────────────── over the VPN ─────┘

Standard library only, plus vpnagent's algorithm client `vpnagent_algorithm` (copied into
the image from clients/python).
Input (VPNAGENT_INPUT_FILE): {"method": "central"|"node", "kwargs": {...}}; the result goes
to VPNAGENT_OUTPUT_FILE as JSON.
"""
from __future__ import annotations

import json
import os
import queue
import secrets
import socket
import socketserver
import sys
import threading
import time
from typing import Any, Callable

from vpnagent_algorithm import AlgorithmClient, AlgorithmClientError

RING_PORT = 7777          # matches EXPOSE 7777 in the Dockerfile
RING_LABEL = "ring"       # matches LABEL p7777=ring
MODULUS = 2 ** 61 - 1     # sums are taken modulo this; values must be smaller
MAX_LINE = 1024
POLL_S = 0.25


class RingError(RuntimeError):
    """The ring could not be formed or a hop failed; the message says which and why."""


# --------------------------------------------------------------------------- network
class Inbox(socketserver.ThreadingTCPServer):
    """Receives the ring's numbers: one JSON line {"value": int} per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.messages: queue.Queue[int] = queue.Queue()
        super().__init__((host, port), _InboxHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def receive(self, timeout: float) -> int:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise RingError(f"nothing arrived on port {self.port} within {timeout:.0f} s") from None

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _InboxHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.connection.settimeout(10)
        line = self.rfile.readline(MAX_LINE)
        try:
            value = json.loads(line)["value"]
        except (ValueError, KeyError, TypeError):
            self.wfile.write(b"error\n")
            return
        if isinstance(value, int) and 0 <= value < MODULUS:
            self.server.messages.put(value)  # type: ignore[attr-defined]
            self.wfile.write(b"ok\n")
        else:
            self.wfile.write(b"error\n")


def send(ip: str, port: int, value: int, retry_for: float = 30.0) -> None:
    """Send one number and wait for the receiver's "ok". Retries the connection for a
    while: the next node's port is registered a moment before its code listens."""
    deadline = time.monotonic() + retry_for
    last = "no attempt"
    for _ in range(int(retry_for / POLL_S) + 1):
        try:
            with socket.create_connection((ip, int(port)), timeout=5) as sock:
                sock.sendall(json.dumps({"value": value}).encode() + b"\n")
                answer = sock.makefile("rb").readline(16)
            if answer == b"ok\n":
                return
            raise RingError(f"{ip}:{port} refused the value ({answer!r})")
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    raise RingError(f"cannot reach the next node at {ip}:{port} ({last})")


def wait_for_ring(fetch: Callable[[], list[dict]], task_id: int | None, n_nodes: int,
                  timeout: float) -> list[dict]:
    """The ring: one address per run of this task, ordered by organisation."""
    deadline = time.monotonic() + timeout
    found: dict[int, dict] = {}
    for _ in range(int(timeout / POLL_S) + 2):
        try:
            for a in fetch():
                if a.get("task_id") == task_id:
                    found.setdefault(int(a["run_id"]), a)
        except AlgorithmClientError as exc:
            print(f"get_addresses: {exc}", file=sys.stderr)
        if len(found) >= n_nodes or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if len(found) < n_nodes:
        raise RingError(f"only {len(found)} of {n_nodes} ring members registered within {timeout:.0f} s")
    return sorted(found.values(), key=lambda a: (a["organization_id"], a["run_id"]))


# --------------------------------------------------------------------------- methods
def node(client: AlgorithmClient, values: dict[str, int], n_nodes: int, timeout: float = 60,
         port: int = RING_PORT) -> dict:
    """One member of the ring. `values` maps organisation id (as a string: JSON keys) to
    that organisation's private number; a real algorithm would read its local data here."""
    me = client.organization_id
    value = int(values.get(str(me), 0)) % MODULUS
    inbox = Inbox(port)  # listen before anyone can look us up and send
    try:
        ring = wait_for_ring(lambda: client.vpn.get_addresses(label=RING_LABEL), client.task_id, n_nodes,
                             timeout)
        position = next(i for i, a in enumerate(ring) if a.get("run_id") == client.run_id)
        nxt = ring[(position + 1) % len(ring)]
        if position == 0:
            mask = secrets.randbelow(MODULUS)
            send(nxt["ip"], nxt["port"], (mask + value) % MODULUS)
            total = (inbox.receive(timeout) - mask) % MODULUS
            return {"organization_id": me, "position": 0, "total": total}
        partial = inbox.receive(timeout)
        send(nxt["ip"], nxt["port"], (partial + value) % MODULUS)
        return {"organization_id": me, "position": position}
    finally:
        inbox.close()


def central(client: AlgorithmClient, values: dict[str, int], organizations: list[int] | None = None,
            timeout: float = 120) -> dict:
    """Start the ring at `organizations` (default: all of the collaboration) and return the
    sum. `values` stands in for each organisation's local data in this example."""
    orgs = sorted(int(o) for o in organizations) if organizations else \
        sorted(int(o["id"]) for o in client.organization.list())
    task = client.task.create(input_={"method": "node", "kwargs": {"values": values, "n_nodes": len(orgs),
                                                                   "timeout": timeout}},
                              organizations=orgs, name="ring_sum nodes")
    results = client.wait_for_results(int(task["id"]), interval=POLL_S, timeout=timeout + 30)
    totals = [r["total"] for r in results if isinstance(r, dict) and "total" in r]
    if len(totals) != 1:
        # a run that failed has no result; its status and log say why
        failed = [f"run {r.get('id')} (org {r.get('organization_id')}) {r.get('status')}: {(r.get('log') or '')[-200:]}"
                  for r in client.run.from_task(int(task["id"])) if r.get("status") != "completed"]
        raise RingError(f"expected one total from the ring, got {len(totals)}: {results}"
                        + (f"; {'; '.join(failed)}" if failed else ""))
    return {"organizations": orgs, "total": totals[0]}


METHODS: dict[str, Callable[..., dict]] = {"central": central, "node": node}


def main() -> int:
    with open(os.environ.get("VPNAGENT_INPUT_FILE", "/mnt/run/input.json")) as f:
        task_input: Any = json.load(f)
    method = METHODS[task_input["method"]]
    try:
        result, code = method(AlgorithmClient(), **(task_input.get("kwargs") or {})), 0
    except (RingError, AlgorithmClientError) as exc:
        print(f"{task_input['method']} failed: {exc}", file=sys.stderr)
        result, code = {"error": str(exc)}, 1
    with open(os.environ.get("VPNAGENT_OUTPUT_FILE", "/mnt/run/output.json"), "w") as f:
        json.dump(result, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
