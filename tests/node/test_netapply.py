"""The one apply path, driven like Tailscale's wgengine/router TestRouterStates: a sequence
of desired node networks against a fake runner, asserting the exact calls and batches of
each step, and after each step that the rules reached (fast batches included) equal what
a full render from scratch produces. The fake runner interprets the batches over parsed
tables (tests/fake_iptables.py), strict where iptables is strict. One root test does the
same comparison with real iptables in scratch namespaces."""
from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_iptables import FakeRunner, Tables
from tests.waiting import wait_for
from vpnagent import firewall as fw
from vpnagent.netapply import (HostRules, NetnsRunner, NetworkApplier, NodeNetwork, RouteFailure,
                               VpnClientNet, remove_host)
from vpnagent.netns import Netns, NetnsError

HOST = HostRules("VA-HOST-n1", "va-n1", "10.76.0.0/16", gateway="172.30.0.1", proxy_port=8765)
VPN_IP, ISO_IF, ISO_SUBNET = "10.76.0.3", "eth1", "172.30.0.0/24"
CLIENT, CLIENT_IP = 4242, "172.30.0.2"
NEW_CLIENT, NEW_CLIENT_IP = 5252, "172.30.0.5"
# Docker's embedded DNS puts these into every container on a user-defined network: our
# batches must leave them alone (--noflush), and the full render must not depend on them.
DOCKER_DNS = """*nat
:DOCKER_OUTPUT - [0:0]
:DOCKER_POSTROUTING - [0:0]
-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
-A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING
-A DOCKER_OUTPUT -d 127.0.0.11/32 -p tcp -m tcp --dport 44321 -j DNAT --to-destination 127.0.0.11:44321
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p tcp -m tcp --sport 44321 -j SNAT --to-source :53
COMMIT
"""
DOCKER_HOST = "*filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
# One jump per run, each into an accept-only chain: their order carries no meaning (fast
# batches append, a full render sorts by run id), every other chain is compared in order.
UNORDERED = frozenset({fw.PRE, fw.FWD})
BASE_FIX = "installed the base rules (FORWARD policy DROP, dispatch chains, MSS clamp)"


def run1(local: tuple[str, ...] = (), peers: tuple[str, ...] = ("10.76.0.9",),
         dests: tuple[tuple[str, int], ...] = (("10.76.0.9", 6100),), port: int = 6001) -> fw.RunRules:
    return fw.RunRules(1, "172.30.0.11", (fw.Forward(port, 8888),), peer_ips=peers, local_peers=local,
                       destinations=dests)


def run2(local: tuple[str, ...] = (), peers: tuple[str, ...] = ("10.76.0.9",),
         dests: tuple[tuple[str, int], ...] = (("10.76.0.9", 6100),)) -> fw.RunRules:
    return fw.RunRules(2, "172.30.0.12", (fw.Forward(6002, 8888),), peer_ips=peers, local_peers=local,
                       destinations=dests)


HOLDER = {1: 101, 2: 102, 3: 103, 4: 104}  # run id -> holder pid


def node(*runs: fw.RunRules, pid: int = CLIENT, iso_ip: str = CLIENT_IP, mss: int | None = 1300,
         holders: dict[int, int] = HOLDER) -> NodeNetwork:
    rules = fw.VpnClientRules(VPN_IP, ISO_IF, ISO_SUBNET, runs=tuple(sorted(runs, key=lambda r: r.run_id)), mss=mss)
    return NodeNetwork(HOST, VpnClientNet(pid, iso_ip, rules, {r.run_id: holders[r.run_id] for r in runs}))


def fresh_runner() -> FakeRunner:
    """A node as Docker leaves it: DOCKER-USER on the host, embedded DNS in the clients."""
    runner = FakeRunner()
    runner.ns(None).restore(DOCKER_HOST)
    for pid in (CLIENT, NEW_CLIENT):
        runner.ns(pid).restore(DOCKER_DNS)
    return runner


def assert_converged(runner: FakeRunner, desired: NodeNetwork) -> None:
    """What the runner's namespaces hold equals a full render of `desired` from scratch."""
    scratch = fresh_runner()
    NetworkApplier(scratch).apply(desired)
    assert runner.ns(None).view() == scratch.ns(None).view()
    if desired.vpn is not None:
        pid = desired.vpn.pid
        assert runner.ns(pid).view(UNORDERED) == scratch.ns(pid).view(UNORDERED)
        assert {h: runner.routes.get(h) for h in desired.vpn.holders.values()} == \
            {h: desired.vpn.iso_ip for h in desired.vpn.holders.values()}


def host_batch(host_ns: Tables, vpn_client_ip: str | None) -> str:
    """The host batch expected now: rendered against what the host holds before the step."""
    return fw.render_host(HOST.chain, HOST.bridge, HOST.vpn_subnet, fw.parse_save(host_ns.save("filter")),
                          gateway=HOST.gateway, proxy_port=HOST.proxy_port, vpn_client_ip=vpn_client_ip)


def test_router_states():
    runner = fresh_runner()
    applier = NetworkApplier(runner)

    # 1. no VPN yet: only the host's exception for the bridge
    desired = NodeNetwork(HOST)
    expected_host = host_batch(runner.ns(None), None)
    result = applier.apply(desired)
    assert runner.take_calls() == [("save", None, "filter"), ("restore", None, expected_host)]
    assert (result.path, result.host_applied) == ("no-vpn", True)
    assert_converged(runner, desired)

    # 2. VPN up, no runs: the host part names the client now; its namespace gets the full render
    desired = node()
    expected_host = host_batch(runner.ns(None), CLIENT_IP)
    expected_full = fw.render_vpn_client(desired.vpn.rules, fw.parse_save(runner.ns(CLIENT).save()))
    result = applier.apply(desired)
    assert runner.take_calls() == [("save", None, "filter"), ("restore", None, expected_host),
                                   ("save", CLIENT, None), ("restore", CLIENT, expected_full)]
    assert (result.path, result.pid, result.fixes) == ("full", CLIENT, ())
    assert result.reason.startswith("no namespace in sync")
    assert_converged(runner, desired)

    # 3. run 1 added: its two chains and their jumps, and its holder's route; nothing else
    desired = node(run1())
    result = applier.apply(desired)
    assert runner.take_calls() == [("restore", CLIENT, """*nat
:VA-1-N - [0:0]
-A VPNAGENT-PRE -d 10.76.0.3/32 -j VA-1-N
-A VA-1-N -d 10.76.0.3/32 -p tcp -m tcp --dport 6001 -j DNAT --to-destination 172.30.0.11:8888
COMMIT
*filter
:VA-1-F - [0:0]
-A VPNAGENT-FWD -j VA-1-F
-A VA-1-F -s 10.76.0.9/32 -d 172.30.0.11/32 -i tun0 -p tcp -m tcp --dport 8888 -j ACCEPT
-A VA-1-F -s 172.30.0.11/32 -d 10.76.0.9/32 -i eth1 -o tun0 -p tcp -m tcp --dport 6100 -j ACCEPT
COMMIT
"""), ("route", 101, CLIENT_IP)]
    assert (result.path, result.added, result.routed, result.host_applied) == ("fast", (1,), (1,), False)
    assert result.batch_lines == 11
    assert_converged(runner, desired)

    # 4. run 2 added in run 1's family on this node: run 1 must now admit run 2's holder
    #    (hairpin), in the same batch
    desired = node(run1(local=("172.30.0.12",)), run2(local=("172.30.0.11",)))
    result = applier.apply(desired)
    assert runner.take_calls() == [("restore", CLIENT, """*nat
:VA-2-N - [0:0]
-A VPNAGENT-PRE -d 10.76.0.3/32 -j VA-2-N
-A VA-2-N -d 10.76.0.3/32 -p tcp -m tcp --dport 6002 -j DNAT --to-destination 172.30.0.12:8888
COMMIT
*filter
:VA-2-F - [0:0]
-A VPNAGENT-FWD -j VA-2-F
-A VA-2-F -s 10.76.0.9/32 -d 172.30.0.12/32 -i tun0 -p tcp -m tcp --dport 8888 -j ACCEPT
-A VA-2-F -s 172.30.0.11/32 -d 172.30.0.12/32 -i eth1 -p tcp -m tcp --dport 8888 -j ACCEPT
-A VA-2-F -s 172.30.0.12/32 -d 10.76.0.9/32 -i eth1 -o tun0 -p tcp -m tcp --dport 6100 -j ACCEPT
COMMIT
*filter
:VA-1-F - [0:0]
-A VA-1-F -s 10.76.0.9/32 -d 172.30.0.11/32 -i tun0 -p tcp -m tcp --dport 8888 -j ACCEPT
-A VA-1-F -s 172.30.0.12/32 -d 172.30.0.11/32 -i eth1 -p tcp -m tcp --dport 8888 -j ACCEPT
-A VA-1-F -s 172.30.0.11/32 -d 10.76.0.9/32 -i eth1 -o tun0 -p tcp -m tcp --dport 6100 -j ACCEPT
COMMIT
"""), ("route", 102, CLIENT_IP)]
    assert (result.path, result.added, result.changed, result.routed) == ("fast", (2,), (1,), (2,))
    assert_converged(runner, desired)

    # 5. the family grows by a run on node 10.76.0.10: both filter chains, no route
    fam = {"peers": ("10.76.0.9", "10.76.0.10"), "dests": (("10.76.0.9", 6100), ("10.76.0.10", 6200))}
    desired = node(run1(local=("172.30.0.12",), **fam), run2(local=("172.30.0.11",), **fam))
    result = applier.apply(desired)
    d = desired.vpn.rules
    assert runner.take_calls() == [("restore", CLIENT, fw.render_run_refreshed(d, d.runs[0])
                                    + fw.render_run_refreshed(d, d.runs[1]))]
    assert (result.path, result.changed, result.routed) == ("fast", (1, 2), ())
    assert_converged(runner, desired)

    # 6. run 1 ends: its jumps and chains go, and run 2 stops admitting its holder address at
    #    once (a new holder may get it next), in one batch
    desired = node(run2(**fam))
    result = applier.apply(desired)
    assert runner.take_calls() == [("restore", CLIENT, """*nat
-D VPNAGENT-PRE -d 10.76.0.3/32 -j VA-1-N
:VA-1-N - [0:0]
-X VA-1-N
COMMIT
*filter
-D VPNAGENT-FWD -j VA-1-F
:VA-1-F - [0:0]
-X VA-1-F
COMMIT
*filter
:VA-2-F - [0:0]
-A VA-2-F -s 10.76.0.10/32 -d 172.30.0.12/32 -i tun0 -p tcp -m tcp --dport 8888 -j ACCEPT
-A VA-2-F -s 10.76.0.9/32 -d 172.30.0.12/32 -i tun0 -p tcp -m tcp --dport 8888 -j ACCEPT
-A VA-2-F -s 172.30.0.12/32 -d 10.76.0.10/32 -i eth1 -o tun0 -p tcp -m tcp --dport 6200 -j ACCEPT
-A VA-2-F -s 172.30.0.12/32 -d 10.76.0.9/32 -i eth1 -o tun0 -p tcp -m tcp --dport 6100 -j ACCEPT
COMMIT
""")]
    assert (result.path, result.removed, result.changed) == ("fast", (1,), (2,))
    assert_converged(runner, desired)

    # 7. the VPN client is replaced (new container, new namespace, new address): host part,
    #    full render in the new namespace, every holder's route; no drift (nothing believed there)
    desired = node(run2(**fam), pid=NEW_CLIENT, iso_ip=NEW_CLIENT_IP)
    expected_host = host_batch(runner.ns(None), NEW_CLIENT_IP)
    expected_full = fw.render_vpn_client(desired.vpn.rules, fw.parse_save(runner.ns(NEW_CLIENT).save()))
    result = applier.apply(desired)
    assert runner.take_calls() == [("save", None, "filter"), ("restore", None, expected_host),
                                   ("save", NEW_CLIENT, None), ("restore", NEW_CLIENT, expected_full),
                                   ("route", 102, NEW_CLIENT_IP)]
    assert (result.path, result.reason, result.fixes) == ("full", f"new VPN client namespace (pid {CLIENT} -> "
                                                          f"{NEW_CLIENT})", ())
    assert_converged(runner, desired)

    # 8. verify pass after someone deleted run 2's chains, the FORWARD jump and the host's
    #    INPUT jump: everything re-read and rewritten, the drift reported as fixes
    runner.ns(NEW_CLIENT).restore("*nat\n-D VPNAGENT-PRE -d 10.76.0.3/32 -j VA-2-N\n-F VA-2-N\n-X VA-2-N\nCOMMIT\n"
                                  "*filter\n-D FORWARD -j VPNAGENT-FWD\n-D VPNAGENT-FWD -j VA-2-F\n-F VA-2-F\n"
                                  "-X VA-2-F\nCOMMIT\n")
    runner.ns(None).restore("*filter\n-D INPUT -j VA-HOST-n1-IN\nCOMMIT\n")
    expected_host = host_batch(runner.ns(None), NEW_CLIENT_IP)
    expected_full = fw.render_vpn_client(desired.vpn.rules, fw.parse_save(runner.ns(NEW_CLIENT).save()))
    result = applier.apply(desired, verify=True)
    assert runner.take_calls() == [("save", None, "filter"), ("restore", None, expected_host),
                                   ("save", NEW_CLIENT, None), ("restore", NEW_CLIENT, expected_full),
                                   ("route", 102, NEW_CLIENT_IP)]
    assert (result.path, result.reason) == ("full", "verify pass")
    assert result.fixes == ("restored the host rules of the isolated bridge (INPUT -> VA-HOST-n1-IN)",
                            "restored missing rules of run(s) 2", BASE_FIX)
    assert_converged(runner, desired)

    # 9. the same picture again: nothing to do, nothing done
    result = applier.apply(desired)
    assert runner.take_calls() == []
    assert (result.path, result.host_applied, result.batch_lines, result.fixes) == ("unchanged", False, 0, ())
    assert_converged(runner, desired)


def _two_runs(runner: FakeRunner) -> tuple[NetworkApplier, NodeNetwork]:
    applier = NetworkApplier(runner)
    desired = node(run1(local=("172.30.0.12",)), run2(local=("172.30.0.11",)))
    applier.apply(desired)
    runner.take_calls()
    return applier, desired


def test_a_refused_fast_batch_falls_back_to_one_full_rewrite():
    runner = fresh_runner()
    applier, _ = _two_runs(runner)
    # someone removed run 1's rules: the fast removal's -D finds nothing and is refused
    runner.ns(CLIENT).restore("*nat\n-D VPNAGENT-PRE -d 10.76.0.3/32 -j VA-1-N\n-F VA-1-N\n-X VA-1-N\nCOMMIT\n")
    desired = node(run2())
    result = applier.apply(desired)
    calls = runner.take_calls()
    assert [c[:2] for c in calls] == [("restore", CLIENT), ("save", CLIENT), ("restore", CLIENT), ("route", 102)]
    assert calls[0][2].startswith("*nat\n-D VPNAGENT-PRE -d 10.76.0.3/32 -j VA-1-N\n")
    assert (result.path, result.reason) == ("full", "fast batch failed")
    assert "bad rule" in result.fast_error
    assert result.fixes == ()  # run 1 was leaving anyway: what was missing of it is no drift
    assert applier.synced_pid == CLIENT
    assert_converged(runner, desired)


def test_a_failed_full_rewrite_raises_and_believes_nothing():
    runner = fresh_runner()
    applier, desired = _two_runs(runner)
    runner.gone.add(CLIENT)  # the client container died under us
    with pytest.raises(NetnsError, match="No such file"):
        applier.apply(node(run2()))
    # the fast batch failed, its fall-back tried exactly once, then it gave up
    assert [c[:2] for c in runner.take_calls()] == [("restore", CLIENT), ("save", CLIENT)]
    assert applier.synced_pid is None
    runner.gone.clear()
    result = applier.apply(node(run2()))
    assert (result.path, result.host_applied, result.fixes) == ("full", True, ())
    assert [c[:2] for c in runner.take_calls()] == [("save", None), ("restore", None), ("save", CLIENT),
                                                    ("restore", CLIENT), ("route", 102)]
    assert_converged(runner, node(run2()))


def test_a_holder_that_is_gone_is_reported_not_raised_and_tried_again():
    runner = fresh_runner()
    applier = NetworkApplier(runner)
    applier.apply(node(run1()))
    runner.take_calls()
    runner.gone.add(102)
    desired = node(run1(), run2())
    result = applier.apply(desired)
    assert result.path == "fast" and result.routed == ()
    assert result.route_failures == (RouteFailure(2, 102, "nsenter: cannot open /proc/102/ns/net: No such file "
                                                  "or directory"),)
    runner.take_calls()
    # level-triggered: the next apply tries that route again, and only that
    assert applier.apply(desired).route_failures[0].run_id == 2
    assert runner.take_calls() == [("route", 102, CLIENT_IP)]
    # its run leaves the picture (the agent ended it): no more tries
    applier.apply(node(run1()))
    assert not [c for c in runner.take_calls() if c[0] == "route"]
    # a full rewrite reports it the same way
    runner.gone.add(101)
    result = applier.apply(node(run1()), verify=True)
    assert result.path == "full" and [f.run_id for f in result.route_failures] == [1]


def test_base_rules_changed_is_a_full_rewrite():
    runner = fresh_runner()
    applier, desired = _two_runs(runner)
    changed = node(*desired.vpn.rules.runs, mss=1200)  # the path MTU was probed again
    result = applier.apply(changed)
    assert (result.path, result.reason, result.fixes) == ("full", "base rules changed", ())
    assert [c[:2] for c in runner.take_calls()] == [("save", CLIENT), ("restore", CLIENT), ("route", 101),
                                                    ("route", 102)]
    assert_converged(runner, changed)


def test_changed_ports_rewrite_both_chains_of_the_run():
    runner = fresh_runner()
    applier, desired = _two_runs(runner)
    moved = node(run1(local=("172.30.0.12",), port=6011), run2(local=("172.30.0.11",)))
    result = applier.apply(moved)
    assert (result.path, result.changed) == ("fast", (1,))
    d = moved.vpn.rules
    assert runner.take_calls() == [("restore", CLIENT, fw.render_run_replaced(d, d.runs[0]))]
    assert_converged(runner, moved)


def test_the_host_part_alone_touches_only_the_host():
    runner = fresh_runner()
    applier, desired = _two_runs(runner)
    other = replace(desired, host=replace(HOST, proxy_port=8766))
    result = applier.apply(other)
    assert [c[:2] for c in runner.take_calls()] == [("save", None), ("restore", None)]
    assert (result.path, result.host_applied) == ("unchanged", True)
    assert_converged(runner, other)


def test_vpn_gone_then_back_in_the_same_namespace_is_rewritten_in_full():
    runner = fresh_runner()
    applier, desired = _two_runs(runner)
    result = applier.apply(NodeNetwork(HOST))
    assert (result.path, result.host_applied) == ("no-vpn", True)
    assert [c[:2] for c in runner.take_calls()] == [("save", None), ("restore", None)]
    result = applier.apply(desired)
    assert result.path == "full" and result.fixes == ()  # nothing believed about it meanwhile
    assert_converged(runner, desired)


def test_unsafe_values_raise_and_leave_nothing_believed():
    runner = fresh_runner()
    applier, desired = _two_runs(runner)
    bad = node(replace(run1(), holder_ip="172.30.0.11 -j ACCEPT"), run2())
    with pytest.raises(ValueError, match="unsafe"):
        applier.apply(bad)
    assert applier.synced_pid is None and runner.take_calls() == []


# --- any sequence: fast batches and full renders converge

RUN_IDS = (1, 2, 3, 4)
HOLDER_IPS = {1: "172.30.0.11", 2: "172.30.0.12", 3: "172.30.0.13", 4: "172.30.0.14"}


@st.composite
def pictures(draw) -> tuple[NodeNetwork, bool]:
    """A random node network: some runs, each in one of two families (local peers follow
    the family, as the agent computes them), one of two VPN clients, mss, maybe verify."""
    live = draw(st.sets(st.sampled_from(RUN_IDS)))
    family = {i: draw(st.sampled_from("ab")) for i in live}
    remote = {"a": draw(st.sets(st.sampled_from(["10.76.0.9", "10.76.0.10"]))), "b": {"10.76.0.11"}}
    runs = []
    for i in sorted(live):
        fam = family[i]
        local = tuple(HOLDER_IPS[j] for j in sorted(live) if family[j] == fam and j != i)
        ports = draw(st.sampled_from([(fw.Forward(6000 + i, 8888),),
                                      (fw.Forward(6100 + i, 8888), fw.Forward(6200 + i, 9000))]))
        runs.append(fw.RunRules(i, HOLDER_IPS[i], ports, peer_ips=tuple(sorted(remote[fam])), local_peers=local,
                                 destinations=tuple((ip, 7000) for ip in sorted(remote[fam]))))
    client = draw(st.sampled_from([(CLIENT, CLIENT_IP), (NEW_CLIENT, NEW_CLIENT_IP)]))
    if draw(st.booleans()) and not live and draw(st.booleans()):
        return NodeNetwork(HOST), False
    return node(*runs, pid=client[0], iso_ip=client[1], mss=draw(st.sampled_from([None, 1300]))), \
        draw(st.integers(0, 5)) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(pictures(), min_size=1, max_size=8))
def test_any_sequence_of_pictures_converges(sequence):
    runner = fresh_runner()
    applier = NetworkApplier(runner)
    prev: NodeNetwork | None = None
    for desired, verify in sequence:
        result = applier.apply(desired, verify=verify)
        calls = runner.take_calls()
        assert_converged(runner, desired)
        if desired.vpn is None:
            assert result.path == "no-vpn" and not [c for c in calls if c[1] is not None]
            prev = desired
            continue
        vpn_calls = [c[0] for c in calls if c[1] == desired.vpn.pid]
        expect_fast = (not verify and prev is not None and prev.vpn is not None and prev.vpn.pid == desired.vpn.pid
                       and replace(prev.vpn.rules, runs=()) == replace(desired.vpn.rules, runs=())
                       and prev.vpn.iso_ip == desired.vpn.iso_ip)
        assert result.fixes == ()  # nobody touched the namespaces: whatever changed, no drift
        if expect_fast:
            assert result.path in ("fast", "unchanged") and vpn_calls in ([], ["restore"])
        else:
            assert result.path == "full" and vpn_calls == ["save", "restore"]
        prev = desired
    # and once more with nothing changed: nothing at all
    applier.apply(prev)
    assert runner.take_calls() == []


# --- the same with real iptables, in scratch namespaces (root, no Docker, no traffic)

@pytest.fixture
def scratch_namespaces():
    """make(n) -> n pids, each a process in a fresh `ip netns` namespace; all removed after."""
    made: list[tuple[str, subprocess.Popen]] = []

    def make(n: int) -> list[int]:
        pids = []
        for _ in range(n):
            name = f"vatest-apply-{uuid.uuid4().hex[:8]}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"])
            made.append((name, proc))
            wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
                     f"process {proc.pid} to enter namespace {name}", 10, 0.01, ignore=(FileNotFoundError,))
            pids.append(proc.pid)
        return pids

    try:
        yield make
    finally:
        for name, proc in made:
            proc.kill()
            proc.wait()
            subprocess.run(["ip", "netns", "del", name], check=False)


def _real_view(pid: int) -> dict:
    """A namespace's real iptables-save, read into the model (which also shows the model
    reads what iptables writes)."""
    tables = Tables()
    tables.restore(Netns(pid).iptables_save())
    return tables.view(UNORDERED)


@pytest.mark.root
def test_fast_path_in_real_namespaces_ends_where_a_full_render_does(scratch_namespaces):
    host_a, client_a, host_b, client_b, holder1, holder2 = scratch_namespaces(6)
    for host in (host_a, host_b):  # stand-ins for the host, each with Docker's DOCKER-USER
        Netns(host).iptables_restore(DOCKER_HOST)
    for client in (client_a, client_b):
        Netns(client).iptables_restore(DOCKER_DNS)
    for holder, ip in ((holder1, "172.30.0.11"), (holder2, "172.30.0.12")):
        # an on-link address, so a default route via the VPN client's address is accepted
        ns = Netns(holder)
        ns.run(["ip", "link", "add", "va0", "type", "veth", "peer", "name", "va1"])
        ns.run(["ip", "addr", "add", f"{ip}/24", "dev", "va0"])
        ns.run(["ip", "link", "set", "va0", "up"])
        ns.run(["ip", "link", "set", "va1", "up"])
    holders = {1: holder1, 2: holder2}
    applier = NetworkApplier(NetnsRunner(host_pid=host_a))
    fam = {"peers": ("10.76.0.9", "10.76.0.10"), "dests": (("10.76.0.9", 6100), ("10.76.0.10", 6200))}
    steps = [node(pid=client_a, holders=holders),
             node(run2(), pid=client_a, holders=holders),
             node(run1(local=("172.30.0.12",)), run2(local=("172.30.0.11",)), pid=client_a, holders=holders),
             node(run1(local=("172.30.0.12",), **fam), run2(local=("172.30.0.11",), **fam), pid=client_a,
                  holders=holders),
             node(run1(local=("172.30.0.12",), port=6011, **fam), run2(local=("172.30.0.11",), **fam), pid=client_a,
                  holders=holders),
             node(run1(port=6011, **fam), pid=client_a, holders=holders)]
    paths = [applier.apply(desired).path for desired in steps]
    assert paths == ["full", "fast", "fast", "fast", "fast", "fast"]
    final = steps[-1]
    NetworkApplier(NetnsRunner(host_pid=host_b)).apply(replace(final, vpn=replace(final.vpn, pid=client_b)))
    assert _real_view(client_a) == _real_view(client_b)
    assert _real_view(host_a) == _real_view(host_b)
    assert "DOCKER_OUTPUT" in _real_view(client_a)["nat"]  # --noflush left Docker's rules alone
    for holder in (holder1, holder2):
        assert Netns(holder).run(["ip", "route", "show", "default"]).stdout.startswith(f"default via {CLIENT_IP} ")
    # a verify pass over the real namespace finds nothing to fix and changes nothing
    assert applier.apply(final, verify=True).fixes == ()
    assert _real_view(client_a) == _real_view(client_b)


def test_remove_host_takes_the_chain_and_its_jumps_out_and_leaves_dockers():
    """`vpnagent cleanup`: the host exception goes, Docker's own DOCKER-USER stays as it was."""
    runner = fresh_runner()
    NetworkApplier(runner).apply(node())
    assert HOST.chain in runner.ns(None).save("filter")
    assert remove_host(HOST, runner) is True
    assert HOST.chain not in runner.ns(None).save("filter")
    assert runner.ns(None).save("filter") == fresh_runner().ns(None).save("filter")
    assert remove_host(HOST, runner) is False  # nothing left: nothing to do
