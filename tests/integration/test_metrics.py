"""Prometheus endpoints of real agents and the real server, scraped over loopback HTTP(S)
around a real echo task: the numbers must move the way the network did."""
from __future__ import annotations

import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_equal, wait_for
from vpnagent import firewall
from vpnagent.netns import Netns

from .util import create_task, wait_task_done

pytestmark = pytest.mark.docker

Samples = dict[tuple[str, tuple], float]


def scrape(url: str, verify: str | bool = True) -> Samples:
    r = requests.get(url, timeout=10, verify=verify)
    assert r.status_code == 200, r.text[:300]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def total(samples: Samples, name: str) -> float:
    """Sum of a sample over all its label values."""
    return sum(v for (n, _), v in samples.items() if n == name)


def running_agents(cluster) -> list:
    return [n for n in cluster.nodes + cluster.extra_nodes if n.proc is not None and n.proc.poll() is None]


def test_agent_and_server_metrics_follow_an_echo_task(cluster):
    agents = running_agents(cluster)
    connected = ("vpnagent_server_nodes_connected", ())
    # the server's view of who is on the VPN settles within a few seconds of a (re)connect
    server_before = wait_for(lambda: scrape(cluster.metrics_url, cluster.tls_verify),
                             f"the server to count {len(agents)} connected nodes", 30, 0.5,
                             until=lambda got: got.get(connected) == len(agents))
    assert server_before[("vpnagent_server_openvpn_up", ())] == 1
    assert server_before[("vpnagent_server_nodes_registered", ())] >= len(cluster.nodes)

    before = {n.name: scrape(n.metrics_url) for n in cluster.nodes}
    for name, got in before.items():
        assert got[("vpnagent_agent_vpn_up", ())] == 1, name
        assert got[("vpnagent_agent_certificate_expiry_timestamp_seconds", ())] > time.time(), name

    # watch the agents while the task runs: each run is live only for a few seconds
    most_live = {n.name: 0.0 for n in cluster.nodes}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for n in cluster.nodes:
                try:
                    live = scrape(n.metrics_url)[("vpnagent_agent_live_runs", ())]
                except (requests.RequestException, AssertionError, KeyError):
                    continue
                most_live[n.name] = max(most_live[n.name], live)
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        http = cluster.user_session()
        orgs = [n.organization_id for n in cluster.nodes]
        task = create_task(cluster, http, [orgs[0]],
                           {"method": "central", "kwargs": {"timeout": 60, "payload_size": 64 * 1024,
                                                            "organizations": orgs}})
        finished = wait_task_done(cluster, http, task["id"], timeout=120)
    finally:
        done.set()
        watcher.join(10)
    central = finished["runs"][0]
    assert central["status"] == "completed", central
    assert central["result"]["ok"] is True, central["result"]

    after = {n.name: scrape(n.metrics_url) for n in cluster.nodes}
    for n in cluster.nodes:
        b, a = before[n.name], after[n.name]
        assert most_live[n.name] >= 1, f"{n.name}: never saw a live run"
        # one peer run per node, plus the central on the first: each wired once
        wired = a[("vpnagent_agent_wiring_seconds_count", ())] - b[("vpnagent_agent_wiring_seconds_count", ())]
        assert wired >= (2 if n is cluster.nodes[0] else 1), (n.name, wired)
        assert a[("vpnagent_agent_wiring_seconds_sum", ())] > b[("vpnagent_agent_wiring_seconds_sum", ())]
        # every node echoed 64 KiB payloads through its tunnel, both ways
        for direction in ("receive", "transmit"):
            key = (f"vpnagent_agent_tun_{direction}_bytes_total", ())
            assert a[key] - b[key] >= 64 * 1024, (n.name, direction, b[key], a[key])
        assert a[("vpnagent_agent_vpn_up", ())] == 1
    server_after = scrape(cluster.metrics_url, cluster.tls_verify)
    grew = (server_after[("vpnagent_server_address_requests_total", (("code", "200"),))]
            - server_before[("vpnagent_server_address_requests_total", (("code", "200"),))])
    assert grew >= 1, "the echo runs look their peers up in the address book"
    wait_equal(lambda: scrape(cluster.metrics_url, cluster.tls_verify).get(connected), len(running_agents(cluster)),
               "the server to count every running agent as connected", 30, 0.5)

    # the runs end and the agents say so
    wait_equal(lambda: [scrape(n.metrics_url)[("vpnagent_agent_live_runs", ())] for n in cluster.nodes],
               [0] * len(cluster.nodes), "no live runs on any agent", 30, 0.2)


def test_agent_endpoint_serves_only_metrics(cluster):
    node = cluster.nodes[0]
    assert requests.get(node.metrics_url.replace("/metrics", "/"), timeout=5).status_code == 404
    text = requests.get(node.metrics_url, timeout=5).text
    for name, kind in (("vpnagent_agent_live_runs", "gauge"), ("vpnagent_agent_wiring_seconds", "histogram"),
                       ("vpnagent_agent_vpn_reconnects_total", "counter"),
                       ("vpnagent_agent_reconcile_corrections_total", "counter"),
                       ("vpnagent_agent_tun_receive_bytes_total", "counter"),
                       ("vpnagent_agent_tun_transmit_bytes_total", "counter"), ("vpnagent_agent_vpn_up", "gauge")):
        assert f"# TYPE {name} {kind}\n" in text, name


def test_openvpn_reconnect_and_drift_repair_are_counted(cluster, docker_client):
    node = cluster.nodes[-1]
    client = docker_client.containers.get(f"vpnagent-{node.name}-vpn")
    before = scrape(node.metrics_url)
    session = ("vpnagent_agent_vpn_reconnects_total", (("how", "openvpn_session"),))
    restarted = ("vpnagent_agent_vpn_reconnects_total", (("how", "client_restarted"),))
    drift = ("vpnagent_agent_reconcile_corrections_total", (("kind", "drift"),))

    # SIGUSR1: openvpn drops its session and makes a new one inside the same container;
    # persist-tun keeps tun0 and the address, so only the client's log shows it
    client.kill(signal="SIGUSR1")
    after = wait_for(lambda: scrape(node.metrics_url), "the OpenVPN reconnect to be counted", 30, 0.25,
                     until=lambda got: got[session] > before[session])
    assert after[session] == before[session] + 1
    assert after[restarted] == before[restarted]  # the agent did not have to replace the client
    assert after[("vpnagent_agent_vpn_up", ())] == 1

    # drift: take the VPN client's FORWARD jump away; the periodic reconcile (10 s) puts it back
    pid = int(client.attrs["State"]["Pid"])
    Netns(pid).run(["iptables", "-w", "5", "-D", "FORWARD", "-j", firewall.FWD])
    wait_for(lambda: scrape(node.metrics_url), "the drift repair to be counted", 30, 0.25,
             until=lambda got: got[drift] > after[drift])
    # the agent counts a repair once it is in place: the counter moving means the rule is back
    assert firewall.parse_save(Netns(pid).iptables_save()).has_rule("filter", f"-A FORWARD -j {firewall.FWD}")
