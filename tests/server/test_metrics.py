"""The server's /metrics on the real app and store of the `world` fixture (whatever
database it runs on): gauges read at scrape time, the address-request counter, and
OpenVPN (as the OpenVPN service reports it) present, absent, hung or gone quiet."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from server_ext import create_app
from server_ext import openvpnservice
from server_ext.openvpnservice import OpenVPNService
from server_ext.store import Certificate, OpenVPNService as ServiceRow
from tests.server.fake_openvpn import FakeOpenVPNManagement


def scrape(world) -> dict[tuple[str, tuple], float]:
    r = world.client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.get_data(as_text=True)) for s in fam.samples}


def mgmt_socket(world) -> Path:
    return world.app.extensions["vpnagent"].files.runtime_dir / "management.sock"


def test_without_openvpn_the_scrape_works_and_says_so(world):
    got = scrape(world)
    assert got[("vpnagent_server_openvpn_up", ())] == 0
    assert ("vpnagent_server_nodes_connected", ()) not in got  # unknown, not 0
    assert got[("vpnagent_server_nodes_registered", ())] == 4
    assert got[("vpnagent_server_certificates_expiring", ())] == 0
    assert got[("vpnagent_server_live_runs", ())] == 0


def service_pass(world) -> None:
    """One pass of the OpenVPN service, which reads OpenVPN and reports to the store."""
    state = world.app.extensions["vpnagent"]
    OpenVPNService(state.store, state.files).reconcile()


def test_nodes_connected_come_from_the_openvpn_services_report(world):
    fake = FakeOpenVPNManagement(mgmt_socket(world), ["node-1", "node-2", "node-3"])
    try:
        assert ("vpnagent_server_nodes_connected", ()) not in scrape(world)  # nothing reported yet
        service_pass(world)
    finally:
        fake.close()
    got = scrape(world)  # the report stands after the socket is gone: it is the store's
    assert got[("vpnagent_server_openvpn_up", ())] == 1
    assert got[("vpnagent_server_nodes_connected", ())] == 3


def test_a_hung_openvpn_is_reported_down(world, monkeypatch):
    monkeypatch.setattr(openvpnservice, "MGMT_TIMEOUT_S", 0.3)
    fake = FakeOpenVPNManagement(mgmt_socket(world), [], hang=True)
    try:
        service_pass(world)
    finally:
        fake.close()
    got = scrape(world)
    assert got[("vpnagent_server_openvpn_up", ())] == 0
    assert ("vpnagent_server_nodes_connected", ()) not in got


def test_a_report_gone_stale_says_down(world):
    fake = FakeOpenVPNManagement(mgmt_socket(world), ["node-1"])
    try:
        service_pass(world)
    finally:
        fake.close()
    with world.store.session() as s:  # the service stopped reporting a while ago
        row = s.get(ServiceRow, "vpnagent-openvpn")
        row.seen_at -= dt.timedelta(seconds=openvpnservice.STALE_AFTER_S + 1)
    got = scrape(world)
    assert got[("vpnagent_server_openvpn_up", ())] == 0
    assert ("vpnagent_server_nodes_connected", ()) not in got


def test_certificates_expiring_counts_unrevoked_ones_within_7_days(world):
    # a real certificate from the API (30-day lifetime by default): not expiring
    assert world.client.get("/api/vpn", headers=world.node_headers(0)).status_code == 200
    assert scrape(world)[("vpnagent_server_certificates_expiring", ())] == 0
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = [("in-3-days", now + dt.timedelta(days=3), None),
            ("in-6.9-days", now + dt.timedelta(days=6.9), None),
            ("in-8-days", now + dt.timedelta(days=8), None),
            ("revoked-in-2-days", now + dt.timedelta(days=2), now),
            ("expired-yesterday", now - dt.timedelta(days=1), None)]
    with world.store.session() as s:
        node_id = s.scalars(select(Certificate)).first().node_id
        for i, (_, not_after, revoked) in enumerate(rows):
            s.add(Certificate(node_id=node_id, serial=str(10**30 + i), not_after=not_after, revoked_at=revoked))
    assert scrape(world)[("vpnagent_server_certificates_expiring", ())] == 2


def test_address_requests_are_counted_by_status_code_and_runs_by_state(world):
    task = world.create_task([world.orgs[0], world.orgs[1]])
    run_id = task["runs"][0]["id"]
    before = scrape(world)
    assert before[("vpnagent_server_address_requests_total", (("code", "200"),))] == 0
    assert before[("vpnagent_server_pending_runs", ())] == 2
    assert world.client.patch(f"/api/run/{run_id}", headers=world.node_headers(0),
                              json={"status": "active"}).status_code == 200
    headers = world.container_headers(0, run_id)
    url = "/api/vpn/algorithm/addresses"
    assert world.client.get(url, headers=headers).status_code == 200
    assert world.client.get(f"{url}?only_children=1", headers=headers).status_code == 200
    assert world.client.get(f"{url}?only_children=1&only_parent=1", headers=headers).status_code == 400
    assert world.client.get(url).status_code == 401
    assert world.client.get("/api/health").status_code == 200  # other endpoints do not count
    got = scrape(world)
    assert got[("vpnagent_server_address_requests_total", (("code", "200"),))] == 2
    assert got[("vpnagent_server_address_requests_total", (("code", "400"),))] == 1
    assert got[("vpnagent_server_address_requests_total", (("code", "401"),))] == 1
    assert got[("vpnagent_server_live_runs", ())] == 1
    assert got[("vpnagent_server_pending_runs", ())] == 1


def test_removed_nodes_are_not_registered_ones(world):
    world.store.remove_node(1)
    assert scrape(world)[("vpnagent_server_nodes_registered", ())] == 3


def test_metrics_switch_off(tmp_path):
    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "TESTING": True, "VPNAGENT_METRICS": False},
                     migrate=True)
    client = app.test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/api/health").status_code == 200
    assert "vpnagent_metrics" not in app.extensions


def test_two_apps_count_apart(world, tmp_path):
    other = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "other"), "TESTING": True}, migrate=True)
    assert world.client.get("/api/vpn/algorithm/addresses").status_code == 401
    text = other.test_client().get("/metrics").get_data(as_text=True)
    assert 'vpnagent_server_address_requests_total{code="401"}' not in text
    assert 'vpnagent_server_address_requests_total{code="401"} 1.0' in world.client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize("path", ["/api/metrics", "/metrics/x"])
def test_metrics_only_at_the_root(world, path):
    assert world.client.get(path).status_code == 404
