"""Real OpenVPN handshakes without Docker: the host's openvpn binary in two network
namespaces the test creates, joined by a veth pair (192.0.2.0/24, a documentation range
that exists only between them). Both namespaces, and with them the veth and any tun
device, are deleted afterwards, also when the test fails; every wait is bounded."""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.waiting import wait_for

SERVER_IP, CLIENT_IP = "192.0.2.1", "192.0.2.2"
CONNECTED = "Initialization Sequence Completed"


def skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    for tool in ("openvpn", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install openvpn iproute2)")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Link:
    server_ns: str
    client_ns: str


@contextmanager
def veth_link() -> Iterator[Link]:
    """Two fresh namespaces, server side SERVER_IP and client side CLIENT_IP."""
    tag = uuid.uuid4().hex[:6]
    link = Link(f"vat-ovs-{tag}", f"vat-ovc-{tag}")
    try:
        for ns in (link.server_ns, link.client_ns):
            _ip("netns", "add", ns)
        _ip("link", "add", f"vas{tag}", "netns", link.server_ns, "type", "veth",
            "peer", "name", f"vac{tag}", "netns", link.client_ns)
        for ns, dev, addr in ((link.server_ns, f"vas{tag}", SERVER_IP), (link.client_ns, f"vac{tag}", CLIENT_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield link
    finally:
        for ns in (link.server_ns, link.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


class OpenVPN:
    """One openvpn process in a namespace, its output (and its scripts') in a log file."""

    def __init__(self, ns: str, config: Path, log: Path, args: tuple[str, ...] = ()) -> None:
        """`args`: more command-line options after --config (another client's flags)."""
        self.log_path = log
        with open(log, "wb") as out:
            # `ip netns exec` execs openvpn, so the pid is openvpn's own
            self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "openvpn", "--config", str(config), *args],
                                         stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        def observe() -> str:
            if self.proc.poll() is not None:
                raise AssertionError(f"openvpn exited ({self.proc.returncode}) before '{text}':\n{self.log()[-2000:]}")
            return self.log()
        return wait_for(observe, f"openvpn to log '{text}'", timeout, 0.05, until=lambda log: text in log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextmanager
def running(ns: str, config: Path, log: Path, args: tuple[str, ...] = ()) -> Iterator[OpenVPN]:
    process = OpenVPN(ns, config, log, args)
    try:
        yield process
    finally:
        process.stop()


def host_config(conf: str) -> str:
    """A server config as rendered for the container, minus what only the container has
    (its management socket directory and status file): irrelevant to a handshake."""
    return "\n".join(line for line in conf.splitlines() if not line.startswith(("management ", "status "))) + "\n"
