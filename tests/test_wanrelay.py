"""The delay-and-loss UDP relay the data-plane benchmark uses in place of netem (which this
kernel does not have): on loopback, round trips take twice the delay each way, and the loss
rate is the one asked for."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from test_algorithms.wanrelay import relay


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def echo_and_relay(request):
    delay, loss = request.param
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, addr = echo.recvfrom(65535)
            except OSError:
                continue
            echo.sendto(data, addr)

    port = _free_udp_port()
    ready, counts = threading.Event(), {}
    threads = [threading.Thread(target=serve, daemon=True),
               threading.Thread(target=lambda: counts.update(relay(("127.0.0.1", port), echo.getsockname(), delay,
                                                                   loss, stop=stop, ready=ready)), daemon=True)]
    for t in threads:
        t.start()
    assert ready.wait(5)
    yield ("127.0.0.1", port), counts
    stop.set()
    for t in threads:
        t.join(5)
    echo.close()


@pytest.mark.parametrize("echo_and_relay", [(0.02, 0.0)], indirect=True)
def test_round_trips_take_the_delay_both_ways(echo_and_relay):
    relay_addr, _ = echo_and_relay
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(2)
        rtts = []
        for i in range(10):
            t0 = time.monotonic()
            c.sendto(b"x%d" % i, relay_addr)
            assert c.recvfrom(100)[0] == b"x%d" % i
            rtts.append(time.monotonic() - t0)
    assert 0.04 <= min(rtts) and sorted(rtts)[5] < 0.2  # 2 x 20 ms, plus scheduling


@pytest.mark.parametrize("echo_and_relay", [(0.0, 0.2)], indirect=True)
def test_loss_is_the_rate_asked_for(echo_and_relay):
    relay_addr, counts = echo_and_relay
    n, got = 1000, []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(1.0)

        def receive() -> None:  # read while sending: the socket buffer must not be what drops
            try:
                while True:
                    got.append(c.recvfrom(100)[0])
            except OSError:
                pass

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        for i in range(n):
            c.sendto(b"%d" % i, relay_addr)
            if i % 25 == 24:
                time.sleep(0.005)
        reader.join(10)
    # each datagram crosses the relay twice: it comes back with probability 0.8^2 = 0.64
    assert 0.55 * n < len(got) < 0.73 * n, (len(got), counts)
