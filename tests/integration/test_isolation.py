"""Per-task isolation on the real network: a run may connect only to the ports of its own
task family, and only nodes of that family may connect to it. A probing algorithm in task U
tries every port of task T and every address it must not reach; every attempt must fail,
while every pair inside T succeeds. Positive controls show the probe itself works."""

import pytest

from .util import create_task, probe, user_session, wait_live, wait_task_done

pytestmark = pytest.mark.docker


def _gateway(docker_client, network: str) -> str:
    return docker_client.networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]


def test_only_the_task_family_is_reachable(cluster, docker_client, host_listener):
    http = user_session(cluster)
    nodes = cluster.nodes
    prober = nodes[1]
    ips = {n.name: n.status()["vpn"]["vpn_ip"] for n in nodes}
    t_nodes = [nodes[0], nodes[2]]  # task T on two nodes, the prober's task U on the third
    # each T run waits for 3 senders: its 2 peers and the finishing probe at the end, so it
    # lives until this test is done with it (at most 90 s) and then ends by itself
    task_t = create_task(cluster, http, [n.organization_id for n in t_nodes],
                         {"method": "peer", "kwargs": {"timeout": 90, "n_peers": 2}})
    runs_t = {r["organization_id"]: r["id"] for r in task_t["runs"]}
    live_t = {n.name: wait_live(n, runs_t[n.organization_id]) for n in t_nodes}

    openvpn = docker_client.containers.get(cluster.openvpn_container)
    wan_ip = openvpn.attrs["NetworkSettings"]["Networks"][cluster.wan_network]["IPAddress"]
    vpn_server_ip = str(next(__import__("ipaddress").IPv4Network(cluster.vpn_subnet).hosts()))
    prober_cfg_gw = _gateway(docker_client, f"vpnagent-{prober.name}-net")
    vpn_client = docker_client.containers.get(f"vpnagent-{prober.name}-vpn")
    vpn_client_iso = vpn_client.attrs["NetworkSettings"]["Networks"][f"vpnagent-{prober.name}-net"]["IPAddress"]
    must_fail = []
    for n in nodes:
        if n.name in live_t:
            port = live_t[n.name]["ports"][0]["vpn_port"]
            must_fail.append({"what": f"task T's port on {n.name}", "ip": ips[n.name], "port": port})
        base = 6000 + 100 * nodes.index(n)
        for other in (22, 8765, base + 50):  # +50: a port of the node's range that no run holds
            must_fail.append({"what": f"{n.name}'s VPN IP, port {other}", "ip": ips[n.name], "port": other})
    must_fail += [
        {"what": "OpenVPN server, VPN side", "ip": vpn_server_ip, "port": 1194},
        {"what": "OpenVPN server, VPN side, host service port", "ip": vpn_server_ip, "port": host_listener},
        {"what": "OpenVPN server container on the wan network", "ip": wan_ip, "port": 1194},
        {"what": "host service through the wan network", "ip": _gateway(docker_client, cluster.wan_network),
         "port": host_listener},
        {"what": "host service on the node's own bridge", "ip": prober_cfg_gw, "port": host_listener},
        {"what": "VPN client container itself", "ip": vpn_client_iso, "port": 22},
    ]
    for n in nodes:
        if n is not prober:
            must_fail.append({"what": f"node proxy of {n.name}", "ip": _gateway(docker_client, f"vpnagent-{n.name}-net"),
                              "port": 8765})
    controls = [{"what": "own node proxy (control)", "ip": prober_cfg_gw, "port": 8765}]

    task_u = create_task(cluster, http, [prober.organization_id],
                         {"method": "reach", "kwargs": {"targets": must_fail + controls, "delay": 1.0}})
    done_u = wait_task_done(cluster, http, task_u["id"], timeout=90)
    probes = done_u["runs"][0]["result"]["probes"]
    print(f"\ntask U on {prober.name} (prober) -> target                         reached?")
    for p in probes:
        print(f"  {p['what']:<48} {p['ip']}:{p['port']:<6} {'REACHED' if p['ok'] else 'blocked'}")
    by_what = {p["what"]: p for p in probes}
    leaks = [p for p in probes if p["ok"] and "control" not in p["what"]]
    assert not leaks, leaks
    assert by_what["own address (control)"]["ok"], by_what["own address (control)"]
    assert by_what["own node proxy (control)"]["ok"], by_what["own node proxy (control)"]
    assert len(probes) == len(must_fail) + 2

    # The receiving side holds even when a node ignores its own sender rules: raw probes
    # from the prober node's VPN client namespace (not from a container) are refused by the
    # T nodes, while the same probe from a node that runs part of T gets through.
    print("raw probes from VPN client namespaces (bypassing the sender's own rules):")
    for n in t_nodes:
        port = live_t[n.name]["ports"][0]["vpn_port"]
        outsider = probe(docker_client, prober.name, ips[n.name], port)
        other = t_nodes[1] if n is t_nodes[0] else t_nodes[0]
        insider = probe(docker_client, other.name, ips[n.name], port)
        print(f"  {prober.name} (not in T) -> T on {n.name}: {outsider}; {other.name} (in T) -> T on {n.name}: {insider}")
        assert outsider != "ok" and insider == "ok"

    # T's runs are done with: the third sender each waits for comes from its own node's VPN
    # client straight over the bridge to the holder (a path that needs no family membership,
    # so ending the first run cannot cut the second one's)
    for n in t_nodes:
        assert probe(docker_client, n.name, live_t[n.name]["holder_ip"], 8888, sender="finisher") == "ok"
    done_t = wait_task_done(cluster, http, task_t["id"], timeout=90)
    pairs = [p for r in done_t["runs"] for p in (r["result"] or {}).get("pairs", [])]
    print(f"task T, inside the family: {sum(p['ok'] for p in pairs)} of {len(pairs)} pairs ok")
    assert len(pairs) == 4 and all(p["ok"] for p in pairs), pairs
    # they ended on the finishing probe, not on their timeout
    assert [r["result"]["errors"] for r in done_t["runs"]] == [[], []], done_t["runs"]
