"""Firewall rendering as pure logic, then the same batches applied to a real network
namespace that the test creates (root needed; no traffic leaves it)."""
import os
import subprocess
import uuid

import pytest

from tests.waiting import wait_for
from vpnagent import firewall as fw
from vpnagent.netns import Netns

RULES = fw.VpnClientRules(
    vpn_ip="10.76.0.5", iso_if="eth1", iso_subnet="172.29.1.0/24",
    runs=(fw.RunRules(7, "172.29.1.3", (fw.Forward(6000, 8888), fw.Forward(6001, 9000))),
          fw.RunRules(8, "172.29.1.4", (fw.Forward(6002, 8888),))),
)


def test_render_has_dnat_forward_policy_and_per_run_chains():
    batch = fw.render_vpn_client(RULES, fw.TableState())
    assert ":FORWARD DROP [0:0]" in batch
    assert "-A VA-7-N -d 10.76.0.5/32 -p tcp -m tcp --dport 6001 -j DNAT --to-destination 172.29.1.3:9000" in batch
    assert "-A VA-8-N -d 10.76.0.5/32 -p tcp -m tcp --dport 6002 -j DNAT --to-destination 172.29.1.4:8888" in batch
    assert "-A PREROUTING -j VPNAGENT-PRE" in batch and "-A FORWARD -j VPNAGENT-FWD" in batch
    assert batch.count("COMMIT") == 3  # mangle (MSS clamp), nat, filter


def test_render_skips_existing_jumps_and_deletes_stale_chains():
    current = fw.parse_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:VA-3-N - [0:0]\n:VA-8-N - [0:0]\n-A PREROUTING -j VPNAGENT-PRE\n"
        "-A POSTROUTING -j VPNAGENT-POST\nCOMMIT\n*filter\n:VA-3-F - [0:0]\n-A FORWARD -j VPNAGENT-FWD\nCOMMIT\n"
        "*mangle\n-A FORWARD -j VPNAGENT-MSS\nCOMMIT\n")
    batch = fw.render_vpn_client(RULES, current)
    assert "-A PREROUTING" not in batch and "-A FORWARD -j" not in batch
    assert "-X VA-3-N" in batch and "-X VA-3-F" in batch
    assert "-X VA-8-N" not in batch


@pytest.mark.parametrize("bad", ["1.2.3.4 -j ACCEPT", "eth0\n-A INPUT -j ACCEPT", "x;reboot"])
def test_unsafe_values_never_reach_a_batch(bad):
    with pytest.raises(ValueError, match="unsafe"):
        fw.render_vpn_client(fw.VpnClientRules(vpn_ip=bad, iso_if="eth1", iso_subnet="172.29.1.0/24"), fw.TableState())
    with pytest.raises(ValueError, match="unsafe"):
        fw.render_host("VA-HOST-x", bad, "10.76.0.0/16", fw.TableState())


@pytest.fixture
def netns_pid():
    if os.geteuid() != 0:
        from tests.conftest import docker_unavailable
        docker_unavailable("needs root for a network namespace")
    name = f"vatest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "120"])
    try:
        # `ip netns exec` enters the namespace, then execs sleep: wait until it is inside
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
                 f"process {proc.pid} to enter namespace {name}", 10, 0.01, ignore=(FileNotFoundError,))
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.docker
def test_apply_is_idempotent_and_removal_exact_in_a_real_namespace(netns_pid):
    ns = Netns(netns_pid)
    for _ in range(2):  # the second apply must change nothing
        ns.iptables_restore(fw.render_vpn_client(RULES, fw.parse_save(ns.iptables_save())))
    state = fw.parse_save(ns.iptables_save())
    assert state.run_chains("nat") == {"VA-7-N", "VA-8-N"}
    dnat = [r for r in state.rules["nat"] if "DNAT" in r]
    assert len(dnat) == 3
    assert state.rules["nat"].count("-A PREROUTING -j VPNAGENT-PRE") == 1
    assert state.rules["filter"].count("-A FORWARD -j VPNAGENT-FWD") == 1
    # run 7 ends: its chains and rules disappear, run 8's stay
    only8 = fw.VpnClientRules(RULES.vpn_ip, RULES.iso_if, RULES.iso_subnet, runs=RULES.runs[1:])
    ns.iptables_restore(fw.render_vpn_client(only8, fw.parse_save(ns.iptables_save())))
    state = fw.parse_save(ns.iptables_save())
    assert state.run_chains("nat") == {"VA-8-N"} and state.run_chains("filter") == {"VA-8-F"}
    assert [r for r in state.rules["nat"] if "DNAT" in r] == [
        "-A VA-8-N -d 10.76.0.5/32 -p tcp -m tcp --dport 6002 -j DNAT --to-destination 172.29.1.4:8888"]
    # all runs end: no run chain and no DNAT rule is left
    none = fw.VpnClientRules(RULES.vpn_ip, RULES.iso_if, RULES.iso_subnet)
    ns.iptables_restore(fw.render_vpn_client(none, fw.parse_save(ns.iptables_save())))
    state = fw.parse_save(ns.iptables_save())
    assert not state.run_chains("nat") and not state.run_chains("filter")
    assert not [r for r in state.rules["nat"] if "DNAT" in r]


@pytest.mark.docker
def test_host_exception_added_once_and_removed_exactly(netns_pid):
    # The namespace stands in for the host: it gets its own DOCKER-USER chain.
    ns = Netns(netns_pid)
    ns.iptables_restore("*filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n")
    for _ in range(2):
        ns.iptables_restore(fw.render_host("VA-HOST-t", "va-t", "10.76.0.0/16", fw.parse_save(ns.iptables_save())))
    state = fw.parse_save(ns.iptables_save())
    assert state.rules["filter"].count("-A DOCKER-USER -j VA-HOST-t") == 1
    assert state.rules["filter"].count("-A INPUT -j VA-HOST-t-IN") == 1
    # bridged traffic only: nothing from the isolated bridge is routed elsewhere
    assert "-A VA-HOST-t -d 10.76.0.0/16 -i va-t -o va-t -j ACCEPT" in state.rules["filter"]
    assert state.rules["filter"][-1] == "-A VA-HOST-t-IN -i va-t -j DROP"
    ns.iptables_restore(fw.render_host("VA-HOST-t", "va-t", "10.76.0.0/16", state, present=False))
    state = fw.parse_save(ns.iptables_save())
    assert not {"VA-HOST-t", "VA-HOST-t-IN"} & state.chains["filter"]
    assert not any("VA-HOST-t" in r for r in state.rules["filter"])


def test_host_input_admits_only_the_node_proxy():
    batch = fw.render_host("VA-HOST-t", "va-t", "10.76.0.0/16", fw.TableState(), gateway="172.20.0.1", proxy_port=8765)
    lines = batch.splitlines()
    allow = "-A VA-HOST-t-IN -i va-t -d 172.20.0.1/32 -p tcp -m tcp --dport 8765 -j ACCEPT"
    assert allow in lines and lines.index(allow) < lines.index("-A VA-HOST-t-IN -i va-t -j DROP")


def test_run_rules_allow_only_the_task_family():
    d = fw.VpnClientRules(vpn_ip="10.76.0.5", iso_if="eth1", iso_subnet="172.29.1.0/24", runs=(
        fw.RunRules(7, "172.29.1.3", (fw.Forward(6000, 8888),), peer_ips=("10.76.0.9",),
                    local_peers=("172.29.1.3", "172.29.1.4"),
                    destinations=(("10.76.0.9", 6100), ("10.76.0.5", 6001))),))
    f = fw.render_run_refreshed(d, d.runs[0]).splitlines()
    assert f[:2] == ["*filter", ":VA-7-F - [0:0]"]
    assert "-A VA-7-F -s 10.76.0.9/32 -d 172.29.1.3/32 -i tun0 -p tcp -m tcp --dport 8888 -j ACCEPT" in f
    assert "-A VA-7-F -s 172.29.1.4/32 -d 172.29.1.3/32 -i eth1 -p tcp -m tcp --dport 8888 -j ACCEPT" in f
    assert "-A VA-7-F -s 172.29.1.3/32 -d 10.76.0.9/32 -i eth1 -o tun0 -p tcp -m tcp --dport 6100 -j ACCEPT" in f
    # own node's ports are reached by hairpin (checked on the receiving run), not via tun0
    assert not any("-d 10.76.0.5/32" in line for line in f)
    # nothing else: no rule without a source or a destination
    assert all(" -s " in line for line in f if line.startswith("-A"))
    full = fw.render_vpn_client(d, fw.TableState())
    assert "-A VPNAGENT-IN -i tun0 -j DROP" in full and "-A VPNAGENT-IN -i eth1 -j DROP" in full
    assert "-A INPUT -j VPNAGENT-IN" in full


def test_host_chain_lets_runs_on_the_bridge_meet_only_through_the_vpn_client():
    """Same-node isolation: between two containers on the isolated bridge only traffic to or
    from the VPN subnet or the VPN client passes; a run reaching another run's holder address
    directly falls through to the DROP (Docker's inter-container communication would let it)."""
    lines = fw.render_host("VA-HOST-t", "va-t", "10.76.0.0/16", fw.TableState(),
                           vpn_client_ip="172.20.0.2").splitlines()
    chain = [line for line in lines if line.startswith("-A VA-HOST-t ")]
    assert chain == ["-A VA-HOST-t -i va-t -o va-t -d 10.76.0.0/16 -j ACCEPT",
                     "-A VA-HOST-t -i va-t -o va-t -s 10.76.0.0/16 -j ACCEPT",
                     "-A VA-HOST-t -i va-t -o va-t -s 172.20.0.2/32 -j ACCEPT",
                     "-A VA-HOST-t -i va-t -o va-t -d 172.20.0.2/32 -j ACCEPT",
                     "-A VA-HOST-t -i va-t -o va-t -j DROP"]
    # without a VPN client (no VPN yet) the runs still cannot reach each other
    no_client = fw.render_host("VA-HOST-t", "va-t", "10.76.0.0/16", fw.TableState()).splitlines()
    assert "-A VA-HOST-t -i va-t -o va-t -j DROP" in no_client
    assert not any("/32 -j ACCEPT" in line for line in no_client if line.startswith("-A VA-HOST-t "))


def test_host_chain_refuses_an_unsafe_vpn_client_address():
    with pytest.raises(ValueError, match="unsafe"):
        fw.render_host("VA-HOST-t", "va-t", "10.76.0.0/16", fw.TableState(), vpn_client_ip="1.2.3.4 -j ACCEPT")



def test_mss_clamp_lowers_syns_both_ways_through_the_tunnel_only():
    d = fw.VpnClientRules(vpn_ip="10.76.0.5", iso_if="eth1", iso_subnet="172.29.1.0/24", mss=1300)
    lines = fw.render_vpn_client(d, fw.TableState()).splitlines()
    mangle = lines[:lines.index("COMMIT") + 1]
    assert mangle == [
        "*mangle", ":VPNAGENT-MSS - [0:0]",
        "-A VPNAGENT-MSS -o tun0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1301:65535 -j TCPMSS --set-mss 1300",
        "-A VPNAGENT-MSS -i tun0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m tcpmss --mss 1301:65535 -j TCPMSS --set-mss 1300",
        "-A FORWARD -j VPNAGENT-MSS", "COMMIT"]
    # without a clamp the chain is emptied, the jump stays
    bare = fw.render_vpn_client(fw.VpnClientRules("10.76.0.5", "eth1", "172.29.1.0/24"), fw.TableState())
    assert "TCPMSS" not in bare and ":VPNAGENT-MSS - [0:0]" in bare


def test_replaced_run_rewrites_both_chains_and_keeps_the_jumps():
    run = fw.RunRules(7, "172.29.1.3", (fw.Forward(6010, 8888),), peer_ips=("10.76.0.9",))
    lines = fw.render_run_replaced(RULES, run).splitlines()
    assert lines[:2] == ["*nat", ":VA-7-N - [0:0]"] and ":VA-7-F - [0:0]" in lines
    assert "-A VA-7-N -d 10.76.0.5/32 -p tcp -m tcp --dport 6010 -j DNAT --to-destination 172.29.1.3:8888" in lines
    assert not any(line.startswith(("-A VPNAGENT-", "-D", "-X")) for line in lines)


def test_host_drift_names_missing_chains_and_jumps():
    batch = fw.render_host("VA-HOST-t", "va-t", "10.76.0.0/16", fw.TableState())
    whole = fw.parse_save(batch.replace("-I DOCKER-USER 1", "-A DOCKER-USER").replace("-I INPUT 1", "-A INPUT"))
    assert fw.host_drift("VA-HOST-t", whole) == []
    whole.rules["filter"].remove("-A INPUT -j VA-HOST-t-IN")
    assert fw.host_drift("VA-HOST-t", whole) == ["restored the host rules of the isolated bridge (INPUT -> VA-HOST-t-IN)"]
    assert fw.host_drift("VA-HOST-t", fw.TableState()) == [
        "restored the host rules of the isolated bridge (VA-HOST-t, VA-HOST-t-IN)"]
