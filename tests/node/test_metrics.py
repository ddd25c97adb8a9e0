"""The agent's metrics: collectors, the /metrics server over real loopback HTTP, and the
Agent's wiring of both (no Docker: the parts that need none)."""
from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from vpnagent import dataplane
from vpnagent import metrics as m
from vpnagent.agent import Agent
from vpnagent.config import ConfigError, parse_config

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  168909    1086    0    0    0     0          0         0   168909    1086    0    0    0     0       0          0
  tun0: 5000 40 0 0 0 0 0 0 7000 50 0 0 0 0 0 0
  eth0:12345678901 9 0 0 0 0 0 0 1 2 0 0 0 0 0 0
"""


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape, parsed by prometheus_client."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(server: m.MetricsServer) -> dict:
    r = requests.get(server.url, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(r.text)


def test_parse_net_dev_picks_the_interface_and_the_right_columns():
    assert dataplane.parse_net_dev(NET_DEV, "tun0") == dataplane.TunnelCounters(rx_bytes=5000, tx_bytes=7000, rx_packets=40, tx_packets=50)
    # no space after the colon once the byte count is wide
    assert dataplane.parse_net_dev(NET_DEV, "eth0").rx_bytes == 12345678901
    assert dataplane.parse_net_dev(NET_DEV, "tun1") is None
    assert dataplane.parse_net_dev("garbage", "tun0") is None


def test_read_tun_counters_reads_a_live_namespace_and_sees_traffic():
    # our own namespace's loopback stands in for the VPN client's tun0: same file, real counters
    before = dataplane.read_counters(os.getpid(), "lo")
    assert before is not None
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname()) as c:
            peer, _ = srv.accept()
            with peer:
                c.sendall(b"x" * 100_000)
                got = 0
                while got < 100_000:
                    got += len(peer.recv(65536))
    after = dataplane.read_counters(os.getpid(), "lo")
    assert after.rx_bytes - before.rx_bytes >= 100_000
    assert after.tx_bytes - before.tx_bytes >= 100_000
    assert dataplane.read_counters(2**22 + 12345, "lo") is None  # no such process: None, not an error


def _ovpn_with_cert(not_after: dt.datetime) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(not_after - dt.timedelta(days=30)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return f"client\ndev tun\n<ca>\n{pem}</ca>\n<cert>\n{pem}</cert>\n"


def test_endpoint_serves_counters_histogram_and_scrape_time_state():
    state = {"snap": m.AgentSnapshot(live_runs=2, vpn_up=True, tun=dataplane.TunnelCounters(10, 20, 1, 2), cert_not_after=1.9e9,
                                     peer_paths={"direct": 2})}
    metrics = m.AgentMetrics(lambda: state["snap"])
    server = m.MetricsServer(metrics.render, "127.0.0.1", 0).start()
    try:
        first = scrape(server)
        assert first[("vpnagent_agent_live_runs", ())] == 2
        assert first[("vpnagent_agent_vpn_up", ())] == 1
        assert first[("vpnagent_agent_tun_receive_bytes_total", ())] == 10
        assert first[("vpnagent_agent_tun_transmit_bytes_total", ())] == 20
        assert first[("vpnagent_agent_certificate_expiry_timestamp_seconds", ())] == 1.9e9
        assert first[("vpnagent_agent_peers", (("path", "direct"),))] == 2
        assert first[("vpnagent_agent_peers", (("path", "relay"),))] == 0
        # labelled counters exist at 0 before anything happened
        assert first[("vpnagent_agent_reconcile_corrections_total", (("kind", "drift"),))] == 0
        assert first[("vpnagent_agent_vpn_reconnects_total", (("how", "client_restarted"),))] == 0
        assert first[("vpnagent_agent_wiring_seconds_count", ())] == 0

        metrics.observe_wiring(0.012)
        metrics.observe_wiring(0.040)
        metrics.count_correction(m.FIX_DRIFT)
        metrics.count_reconnect(m.RECONNECT_CLIENT_RESTARTED)
        state["snap"] = m.AgentSnapshot(live_runs=0, vpn_up=False)
        second = scrape(server)
        assert second[("vpnagent_agent_wiring_seconds_count", ())] == 2
        assert second[("vpnagent_agent_wiring_seconds_sum", ())] == pytest.approx(0.052)
        assert second[("vpnagent_agent_wiring_seconds_bucket", (("le", "0.015"),))] == 1
        assert second[("vpnagent_agent_wiring_seconds_bucket", (("le", "0.05"),))] == 2
        assert second[("vpnagent_agent_reconcile_corrections_total", (("kind", "drift"),))] == 1
        assert second[("vpnagent_agent_vpn_reconnects_total", (("how", "client_restarted"),))] == 1
        assert second[("vpnagent_agent_live_runs", ())] == 0
        assert second[("vpnagent_agent_vpn_up", ())] == 0
        # without a VPN there is no tun0 to report: absent, not a stale number
        assert ("vpnagent_agent_tun_receive_bytes_total", ()) not in second
        assert ("vpnagent_agent_peers", (("path", "direct"),)) not in second  # hub only: no such gauge
        assert requests.get(server.url.replace("/metrics", "/other"), timeout=5).status_code == 404
    finally:
        server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=2)


def test_a_failing_snapshot_still_serves_the_counters():
    def broken() -> m.AgentSnapshot:
        raise OSError("docker went away")

    metrics = m.AgentMetrics(broken)
    metrics.count_correction(m.FIX_ORPHAN)
    server = m.MetricsServer(metrics.render, "127.0.0.1", 0).start()
    try:
        got = scrape(server)
    finally:
        server.stop()
    assert got[("vpnagent_agent_reconcile_corrections_total", (("kind", "orphan"),))] == 1
    assert ("vpnagent_agent_live_runs", ()) not in got


def test_two_registries_do_not_share_numbers():
    a, b = m.AgentMetrics(lambda: m.AgentSnapshot(0, False)), m.AgentMetrics(lambda: m.AgentSnapshot(0, False))
    a.observe_wiring(0.01)
    assert samples(b.render().decode())[("vpnagent_agent_wiring_seconds_count", ())] == 0


def test_taken_port_is_a_clear_config_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics_listen 127.0.0.1:{port}: cannot listen.*pick another"):
            m.MetricsServer(lambda: b"", "127.0.0.1", port).start()


# ---------------------------------------------------------------- the Agent's wiring
class _Unreachable:
    """Stands for Docker and the server API: any use means the code went further than it should."""

    def __getattr__(self, name):
        raise AssertionError(f"unexpected use of {name}")


def _agent(tmp_path: Path, **extra) -> Agent:
    cfg = parse_config({"name": "mt1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node"), **extra})
    return Agent(cfg, runtime=_Unreachable(), api=_Unreachable())


def test_agent_counts_corrections_by_kind_and_reads_its_certificate(tmp_path):
    agent = _agent(tmp_path)
    agent._record_fix("restored missing rules of run(s) 12", m.FIX_DRIFT)
    agent._record_fix("removed orphan container x", m.FIX_ORPHAN)
    agent._record_fix("removed orphan container y", m.FIX_ORPHAN)
    snap = agent.metrics_snapshot()
    assert snap == m.AgentSnapshot(live_runs=0, vpn_up=False, tun=None, cert_not_after=None)
    when = dt.datetime(2030, 1, 2, tzinfo=dt.timezone.utc)
    agent.vpn.dir.mkdir(parents=True)
    agent.vpn._write(_ovpn_with_cert(when))  # how a fetched or renewed config lands on disk
    got = samples(agent.metrics.render().decode())
    assert got[("vpnagent_agent_reconcile_corrections_total", (("kind", "drift"),))] == 1
    assert got[("vpnagent_agent_reconcile_corrections_total", (("kind", "orphan"),))] == 2
    assert got[("vpnagent_agent_certificate_expiry_timestamp_seconds", ())] == when.timestamp()
    assert len(agent.fixes) == 3  # status keeps showing them too


def test_agent_start_fails_on_a_taken_metrics_port_before_touching_anything(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        agent = _agent(tmp_path, metrics_listen=f"127.0.0.1:{holder.getsockname()[1]}")
        with pytest.raises(ConfigError, match="metrics_listen"):
            agent.start()  # _Unreachable would raise AssertionError had it gone on to the server

