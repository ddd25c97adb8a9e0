"""The tunnel's path MTU: the search, the probe's pings and what the node settles on. The
real paths (fragments dropped at 1500 and 1400 bytes, one-port TCP) are in
tests/integration/test_paths.py."""
from __future__ import annotations

import ipaddress
import subprocess

import pytest

from vpnagent.dataplane import pathmtu
from vpnagent.dataplane.pathmtu import FALLBACK_MTU, PathMTU, largest_passing, settle


@pytest.mark.parametrize("limit", [576, 577, 1000, 1344, 1399, 1400, 1472, 1499])
def test_search_finds_the_limit_within_8_bytes_and_never_above_it(limit):
    tried = []

    def passes(size):
        tried.append(size)
        return size <= limit

    found = largest_passing(passes, 576, 1500)
    assert limit - 8 <= found <= limit
    assert len(tried) <= 2 + 8  # high, low, then a binary search


def test_an_open_path_costs_one_probe():
    tried = []
    assert largest_passing(lambda s: tried.append(s) or True, 576, 1500) == 1500
    assert tried == [1500]


def test_nothing_passing_is_none():
    assert largest_passing(lambda s: False, 576, 1500) is None


class FakeNs:
    """A VPN client namespace whose tunnel carries `limit` bytes; records the pings."""

    def __init__(self, limit: int | None, tun_mtu: int = 1500):
        self.limit, self.tun_mtu, self.pings, self.mtu_set = limit, tun_mtu, [], None

    def ipv4_addresses(self, ifname=None):
        return {"tun0": [ipaddress.IPv4Interface("10.76.0.9/16")]}

    def run(self, argv, stdin=None, check=True):
        if argv[:2] == ["ip", "-j"]:
            return subprocess.CompletedProcess(argv, 0, stdout=f'[{{"mtu": {self.tun_mtu}}}]', stderr="")
        if argv[:4] == ["ip", "link", "set", "dev"]:
            self.mtu_set = int(argv[-1])
            return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")
        assert argv[0] == "ping" and "-M" in argv and argv[argv.index("-M") + 1] == "do"  # don't fragment
        assert argv[-1] == "10.76.0.1"  # the server's tunnel address: first host of tun0's subnet
        size = int(argv[argv.index("-s") + 1]) + 28
        self.pings.append(size)
        ok = self.limit is not None and size <= self.limit
        return subprocess.CompletedProcess(argv, 0 if ok else 1, stdout="", stderr="")


def test_probe_settles_on_what_crosses_and_clamps_tun0():
    ns = FakeNs(limit=1344)
    path = settle(ns, configured=None)
    assert path.source == "probed" and 1336 <= path.mtu <= 1344 and path.mss == path.mtu - 40
    assert "10.76.0.1 answered up to" in path.detail
    pathmtu.apply_link_mtu(ns, path)
    assert ns.mtu_set == path.mtu


def test_a_full_path_keeps_tun0_as_it_is():
    ns = FakeNs(limit=1500)
    path = settle(ns, configured=None)
    assert (path.mtu, ns.pings) == (1500, [1500])
    pathmtu.apply_link_mtu(ns, path)
    assert ns.mtu_set is None


def test_no_answer_at_all_falls_back_to_a_safe_size():
    path = settle(FakeNs(limit=None), configured=None)
    assert (path.mtu, path.source) == (FALLBACK_MTU, "fallback") and "no answer" in path.detail


def test_a_configured_tunnel_mtu_is_taken_without_probing():
    ns = FakeNs(limit=1000)
    assert settle(ns, configured=9000) == PathMTU(9000, "configured", "tunnel_mtu 9000 from the node config")
    assert ns.pings == []
