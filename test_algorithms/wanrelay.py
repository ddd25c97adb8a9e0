"""A UDP relay that adds delay and loss, standing in for an internet path between nodes and
the OpenVPN server where the kernel's netem qdisc is not available (these machines have no
kernel modules: `tc qdisc add ... netem` says "Specified qdisc kind is unknown").

Each client address gets its own upstream socket, so the server sees one peer per client,
as it would behind NAT. Every datagram waits `delay` seconds in each direction and is
dropped with probability `loss`. One thread, one event loop: at the rates a lossy 20 ms
path allows TCP (tens of Mbit/s) it is far from its own limit, which the benchmark reports
beside its figures (datagrams relayed, relay CPU seconds).

    python -m test_algorithms.wanrelay --listen 172.18.0.1:1194 --upstream 172.18.0.2:1194 \\
        --delay-ms 10 --loss 0.001
"""
from __future__ import annotations

import argparse
import heapq
import random
import selectors
import signal
import socket
import sys
import threading
import time

MAX_DATAGRAM = 65535
IDLE_S = 300.0  # a client silent this long loses its upstream socket


def relay(listen: tuple[str, int], upstream: tuple[str, int], delay: float, loss: float, seed: int = 1,
          stop: threading.Event | None = None, ready: threading.Event | None = None) -> dict[str, int]:
    """Relay until `stop` is set; `ready` is set once it listens."""
    stop = stop or threading.Event()
    rng = random.Random(seed)
    sel = selectors.DefaultSelector()
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    front.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    front.bind(listen)
    front.setblocking(False)
    sel.register(front, selectors.EVENT_READ, None)
    if ready is not None:
        ready.set()
    clients: dict[tuple[str, int], socket.socket] = {}
    last_seen: dict[tuple[str, int], float] = {}
    queue: list[tuple[float, int, socket.socket, bytes, tuple[str, int] | None]] = []
    counts = {"relayed": 0, "dropped": 0}
    seq = 0

    def later(sock: socket.socket, data: bytes, to: tuple[str, int] | None) -> None:
        nonlocal seq
        if rng.random() < loss:
            counts["dropped"] += 1
            return
        seq += 1
        heapq.heappush(queue, (time.monotonic() + delay, seq, sock, data, to))

    while not stop.is_set():
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.2
        for key, _ in sel.select(timeout):
            sock = key.fileobj
            while True:
                try:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                if sock is front:  # client -> server
                    up = clients.get(addr)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                        up.connect(upstream)
                        up.setblocking(False)
                        sel.register(up, selectors.EVENT_READ, addr)
                        clients[addr] = up
                    last_seen[addr] = time.monotonic()
                    later(up, data, None)
                else:  # server -> the client this socket belongs to
                    later(front, data, key.data)
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, sock, data, to = heapq.heappop(queue)
            try:
                sock.send(data) if to is None else sock.sendto(data, to)
                counts["relayed"] += 1
            except OSError:
                counts["dropped"] += 1
        for addr in [a for a, t in last_seen.items() if now - t > IDLE_S]:
            sel.unregister(clients[addr])
            clients.pop(addr).close()
            del last_seen[addr]
    for sock in [front, *clients.values()]:
        sock.close()
    return counts


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=_address, required=True)
    ap.add_argument("--upstream", type=_address, required=True)
    ap.add_argument("--delay-ms", type=float, default=10.0, help="one way, each direction")
    ap.add_argument("--loss", type=float, default=0.001, help="probability per datagram, each direction")
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    counts = relay(args.listen, args.upstream, args.delay_ms / 1000, args.loss, stop=stop)
    print(f"relayed {counts['relayed']}, dropped {counts['dropped']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
