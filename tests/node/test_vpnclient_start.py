"""The VPN client container is started closed: its forwarding policy is DROP before it joins
the isolated network (where the holders route through it), and Docker never restarts it on
its own (a restarted container has a new namespace without rules). Driven against a fake
runtime and namespace that record the order of what happens."""
from __future__ import annotations

import ipaddress

import pytest

from tests.fakes import FakeRuntime
from vpnagent.config import parse_config
from vpnagent.dataplane import openvpn
from vpnagent.dataplane.openvpn import FAIL_CLOSED, OpenVPN
from vpnagent.runtime import Network

NET = Network("vpnagent-fc1-net", "172.30.0.0/24", "172.30.0.1")


class _Runtime(FakeRuntime):
    """Records the order of the steps in EVENTS, with the namespace's."""

    def start_holder(self, spec):
        EVENTS.append("container started")
        return super().start_holder(spec)

    def connect(self, network, container_id):
        EVENTS.append(f"joined {network}")
        super().connect(network, container_id)

EVENTS: list[str] = []


class _Netns:
    def __init__(self, pid):
        self.pid = pid

    def iptables_restore(self, batch: str) -> None:
        EVENTS.append(f"restore {batch!r}")

    def ipv4_addresses(self, ifname=None):
        return {"tun0": [ipaddress.IPv4Interface("10.76.0.9/16")]}

    def interface_in(self, subnet):
        return "eth1"

    def run(self, argv, stdin=None, check=True):
        """`ip -j link` and the path MTU probe's pings: a path that carries 1500 bytes."""
        import subprocess
        out = '[{"mtu": 1500}]' if argv[:2] == ["ip", "-j"] else ""
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setattr(openvpn, "Netns", _Netns)
    EVENTS.clear()
    cfg = parse_config({"name": "fc1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path)})
    return OpenVPN(cfg, _Runtime(), api=None)


def test_forwarding_is_dropped_before_the_client_joins_the_isolated_network(client):
    state = client._start(NET)
    assert EVENTS == ["container started", f"restore {FAIL_CLOSED!r}", "joined vpnagent-fc1-net"]
    assert ":FORWARD DROP" in FAIL_CLOSED
    assert state.vpn_ip == "10.76.0.9"
    assert (state.path.mtu, state.path.source) == (1500, "probed")


def DockerRuntimeKwargs(spec) -> dict:
    from vpnagent.runtime.dockerengine import _run_kwargs
    return _run_kwargs(spec)


def test_docker_never_restarts_the_client_on_its_own(client):
    client._start(NET)
    spec = next(iter(client.runtime.specs.values()))
    # the seam has no restart policy at all; the Docker side sets none (dockerengine._run_kwargs)
    assert "restart_policy" not in DockerRuntimeKwargs(spec)
