"""The VPN client container is started closed: its forwarding policy is DROP before it joins
the isolated network (where the holders route through it), and Docker never restarts it on
its own (a restarted container has a new namespace without rules). Driven against a fake
Docker client and namespace that record the order of what happens."""
from __future__ import annotations

import ipaddress

import pytest

from vpnagent import vpnclient
from vpnagent.config import parse_config
from vpnagent.vpnclient import FAIL_CLOSED, VPNClient

EVENTS: list[str] = []


class _Container:
    id, status, name = "c1", "running", "vpnagent-fc1-vpn"
    attrs = {"State": {"Pid": 4242}, "NetworkSettings": {"Networks": {"vpnagent-fc1-net": {"IPAddress": "172.30.0.2"}}}}

    def reload(self) -> None:
        pass


class _Docker:
    run_kwargs: dict = {}

    class containers:  # noqa: N801 - the docker SDK's shape
        @staticmethod
        def run(image, command, **kwargs):
            _Docker.run_kwargs = kwargs
            EVENTS.append("container started")
            return _Container()

        @staticmethod
        def get(name):
            import docker.errors
            raise docker.errors.NotFound("none yet")

    class networks:  # noqa: N801
        @staticmethod
        def get(name):
            class Net:
                def connect(self, container):
                    EVENTS.append(f"joined {name}")
            return Net()


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
    monkeypatch.setattr(vpnclient, "Netns", _Netns)
    EVENTS.clear()
    cfg = parse_config({"name": "fc1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path)})
    return VPNClient(cfg, _Docker(), api=None)


def test_forwarding_is_dropped_before_the_client_joins_the_isolated_network(client):
    state = client._start("vpnagent-fc1-net", ipaddress.IPv4Network("172.30.0.0/24"))
    assert EVENTS == ["container started", f"restore {FAIL_CLOSED!r}", "joined vpnagent-fc1-net"]
    assert ":FORWARD DROP" in FAIL_CLOSED
    assert state.vpn_ip == "10.76.0.9"
    assert (state.path.mtu, state.path.source) == (1500, "probed")


def test_docker_never_restarts_the_client_on_its_own(client):
    client._start("vpnagent-fc1-net", ipaddress.IPv4Network("172.30.0.0/24"))
    assert "restart_policy" not in _Docker.run_kwargs
