"""Several API processes on one database (gunicorn workers, or hosts behind a load
balancer), and the OpenVPN service on a host of its own: each is a Flask app (or an
OpenVPNService) with its own data directory, as separate hosts would have, sharing only
the database and the copied CA and token secret (docs/operator-guide.md, "Scaling out").
Each piece of state that used to live in one process is shown to be shared."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from server_ext import create_app
from server_ext.cli import main
from server_ext.openvpnservice import OpenVPNService
from server_ext.pki import cert_from_ovpn
from server_ext.state import ReplicaMismatch
from server_ext.store import ServerIdentity
from tests.server.conftest import build_world
from tests.server.fake_openvpn import FakeOpenVPNManagement
from tests.server.test_metrics import scrape


def copy_identity(source: Path, target: Path) -> Path:
    """What the operator guide says to copy to a new replica's data directory."""
    target.mkdir(parents=True)
    shutil.copytree(source / "pki", target / "pki")
    shutil.copy2(source / "secret", target / "secret")
    return target


def app_at(data_dir: Path, database_url: str):
    return create_app({"VPNAGENT_DATA_DIR": str(data_dir), "TESTING": True, "VPNAGENT_VPN_SUBNET": "10.76.0.0/16",
                       "VPNAGENT_DATABASE_URL": database_url}, migrate=True)


@pytest.fixture
def replicas(tmp_path, database_url):
    """World A (the fixture's world, seeded through replica A), replica B and the OpenVPN
    service's host C, each with its own data directory."""
    a = build_world(tmp_path / "a", database_url)
    source = tmp_path / "a" / "server"
    b = app_at(copy_identity(source, tmp_path / "b"), database_url)
    c = app_at(copy_identity(source, tmp_path / "c"), database_url).extensions["vpnagent"]
    yield a, b, c
    for store in (a.store, b.extensions["vpnagent"].store, c.store):
        store.close()


def headers(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_from_one_replica_works_at_the_other(replicas):
    a, b, _ = replicas
    node = b.test_client().get("/api/node/self", headers=a.node_headers(0))
    assert node.status_code == 200 and node.json["name"] == "n1"
    user = b.test_client().post("/api/token/user", json={"api_key": a.user_key}).json["access_token"]
    assert a.client.get(f"/api/task/{a.create_task([a.orgs[0]])['id']}", headers=headers(user)).status_code == 200


def test_a_node_removed_through_one_replica_is_refused_by_the_other_at_once(replicas):
    a, b, _ = replicas
    node_token = a.node_headers(0)
    assert b.test_client().get("/api/node/self", headers=node_token).status_code == 200
    assert a.client.delete("/api/admin/node/1", headers=a.admin_headers()).status_code == 200
    assert b.test_client().get("/api/node/self", headers=node_token).status_code == 401
    assert b.test_client().post("/api/token/node", json={"api_key": a.node_keys[0]}).status_code == 401


def test_vpn_addresses_handed_out_through_two_replicas_differ(replicas):
    a, b, _ = replicas
    assert a.client.get("/api/vpn", headers=a.node_headers(0)).status_code == 200
    assert b.test_client().get("/api/vpn", headers=a.node_headers(1)).status_code == 200
    ips = {a.client.get("/api/node/self", headers=a.node_headers(i)).json["vpn_ip"] for i in (0, 1)}
    assert len(ips) == 2 and None not in ips


def test_a_replica_with_another_ca_or_secret_refuses_to_start_and_changes_nothing(replicas, tmp_path, database_url):
    a, _, _ = replicas
    with a.store.session() as s:
        before = {row.key: row.value for row in s.query(ServerIdentity)}
    with pytest.raises(ReplicaMismatch, match=r"the CA .* differs .* copy pki/ from the first server"):
        app_at(tmp_path / "fresh", database_url)  # a new data directory makes a CA of its own
    other_secret = copy_identity(tmp_path / "a" / "server", tmp_path / "other-secret")
    (other_secret / "secret").write_text("another-secret-" + "x" * 40)
    with pytest.raises(ReplicaMismatch, match=r"the token secret .* differs .*`secret` file"):
        app_at(other_secret, database_url)
    with a.store.session() as s:
        assert {row.key: row.value for row in s.query(ServerIdentity)} == before
    # and which directory the store's nodes come from (a vantage6 sidecar's are vantage6's)
    assert set(before) == {"ca_fingerprint", "secret_sha256", "directory"} and before["directory"] == "vpnagent"


def serial_of(ovpn: str) -> int:
    return x509.load_pem_x509_certificate(cert_from_ovpn(ovpn).encode()).serial_number


def crl_serials(files) -> set[int]:
    return {e.serial_number for e in x509.load_pem_x509_crl((files.dir / "crl.pem").read_bytes())}


def test_the_openvpn_service_carries_out_what_either_replica_changed(replicas):
    """Host C has no API process: a renewal through B, an address from A and a removal
    through B reach its OpenVPN files and sessions through the store alone."""
    a, b, c = replicas
    service = OpenVPNService(c.store, c.files)
    fake = FakeOpenVPNManagement(c.files.management_sockets[0], [])
    try:
        first = a.client.get("/api/vpn", headers=a.node_headers(0)).json["ovpn_config"]
        renewed = b.test_client().post("/api/vpn/update", headers=a.node_headers(0), json={"vpn_config": first})
        assert renewed.status_code == 200
        ccd = c.files.dir / "ccd" / "node-1"
        assert not ccd.exists() and serial_of(first) not in crl_serials(c.files)  # nothing on host C yet

        done = service.reconcile()
        assert done.ccd_written == ("node-1",) and done.crl_published
        vpn_ip = a.client.get("/api/node/self", headers=a.node_headers(0)).json["vpn_ip"]
        assert ccd.read_text().startswith(f"ifconfig-push {vpn_ip} ")
        assert crl_serials(c.files) == {serial_of(first)}
        assert not service.reconcile().changed  # level-triggered: a second pass finds nothing to do

        fake.names.append("node-1")  # the node is on the VPN when it is removed
        removed = b.test_client().delete("/api/admin/node/1", headers=a.admin_headers()).json
        assert removed["disconnected"] is False and "next pass" in removed["note"]  # B has no OpenVPN
        done = service.reconcile()
        assert done.disconnected == ("node-1",) and fake.killed == ["node-1"]
        assert done.ccd_removed == ("node-1",) and not ccd.exists()
        assert crl_serials(c.files) == {serial_of(first), serial_of(renewed.json["ovpn_config"])}
    finally:
        fake.close()


def test_a_node_without_an_address_yet_keeps_its_entry(replicas):
    """An API process beside OpenVPN writes a node's entry before its transaction commits;
    a pass in between must not take it away."""
    _, _, c = replicas
    early = c.files.dir / "ccd" / "node-2"
    early.write_text("ifconfig-push 10.76.0.9 255.255.0.0\n")
    stray = c.files.dir / "ccd" / "node-99"  # no such node
    stray.write_text("ifconfig-push 10.76.0.10 255.255.0.0\n")
    done = OpenVPNService(c.store, c.files).reconcile()
    assert early.exists() and not stray.exists() and done.ccd_removed == ("node-99",)


def test_metrics_are_the_same_through_every_replica(replicas):
    a, b, c = replicas
    task = a.create_task([a.orgs[0]])
    run = task["runs"][0]["id"]
    assert a.client.patch(f"/api/run/{run}", headers=a.node_headers(0), json={"status": "active"}).status_code == 200
    container = a.container_headers(0, run)
    assert a.client.get("/api/vpn/algorithm/addresses", headers=container).status_code == 200
    assert b.test_client().get("/api/vpn/algorithm/addresses", headers=container).status_code == 200
    assert b.test_client().get("/api/vpn/algorithm/addresses").status_code == 401
    fake = FakeOpenVPNManagement(c.files.management_sockets[0], ["node-1", "node-2"])
    try:
        OpenVPNService(c.store, c.files).reconcile()
    finally:
        fake.close()

    class Client:  # scrape() takes a world-like object
        def __init__(self, client):
            self.client = client

    seen = [scrape(Client(a.client)), scrape(Client(b.test_client()))]
    assert seen[0] == seen[1]
    got = seen[0]
    assert got[("vpnagent_server_address_requests_total", (("code", "200"),))] == 2
    assert got[("vpnagent_server_address_requests_total", (("code", "401"),))] == 1
    assert got[("vpnagent_server_openvpn_up", ())] == 1 and got[("vpnagent_server_nodes_connected", ())] == 2
    assert got[("vpnagent_server_live_runs", ())] == 1


def test_the_openvpn_command_makes_one_pass(replicas, tmp_path, database_url, capsys):
    a, _, _ = replicas
    a.client.get("/api/vpn", headers=a.node_headers(0))
    data_dir = copy_identity(tmp_path / "a" / "server", tmp_path / "d")
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir), "database_url": database_url,
                                      "vpn_subnet": "10.76.0.0/16"}))
    assert main(["openvpn", "--config", str(config), "--once", "--no-container"]) == 0
    out = capsys.readouterr().out
    assert "openvpn_up 0" in out and "static addresses written 1" in out, out
    assert (data_dir / "openvpn" / "ccd" / "node-1").exists()


def test_the_openvpn_command_refuses_a_bad_interval(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["openvpn", "--config", str(tmp_path / "none.yaml"), "--interval", "0"])
    assert exc.value.code == 2 and "seconds from 0.1 to 60" in capsys.readouterr().err


def test_under_serve_the_service_leaves_the_servers_files_to_serve(replicas, tmp_path, database_url, capsys):
    """serve --with-openvpn prepared the files with settings the config alone does not hold
    (one_port's port-share): the service it starts must not write them again."""
    config = tmp_path / "server.yaml"
    data_dir = tmp_path / "a" / "server"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir), "database_url": database_url,
                                      "vpn_subnet": "10.76.0.0/16"}))
    conf = data_dir / "openvpn" / "server.conf"
    conf.write_text(conf.read_text() + "# written by serve\n")
    assert main(["openvpn", "--config", str(config), "--under-serve", "--once"]) == 0
    assert conf.read_text().endswith("# written by serve\n")

    unprepared = tmp_path / "unprepared.yaml"
    unprepared.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "empty"), "database_url": database_url}))
    assert main(["openvpn", "--config", str(unprepared), "--under-serve", "--once"]) == 2
    assert "vpnagent-server migrate" in capsys.readouterr().err


def test_a_second_openvpn_service_on_the_database_is_refused(replicas, tmp_path, database_url, capsys):
    """One OpenVPN service per database (docs/operator-guide.md, "Limits of each part"): a
    service on another host that reported within STALE_AFTER_S makes a second one refuse to
    start, saying which and why; its own earlier report (a restart) or a stale one do not."""
    import datetime as dt
    import socket

    from server_ext.openvpnservice import STALE_AFTER_S
    from server_ext.store import OpenVPNService as Report

    a, _, c = replicas
    data_dir = copy_identity(tmp_path / "a" / "server", tmp_path / "d")
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir), "database_url": database_url,
                                      "vpn_subnet": "10.76.0.0/16"}))
    a.store.record_openvpn_service("vpnagent-openvpn", socket.gethostname(), True, [])  # this one, before a restart
    assert main(["openvpn", "--config", str(config), "--once", "--no-container"]) == 0

    a.store.record_openvpn_service("vpnagent-openvpn", "vpn-host-1", True, ["node-1"])
    capsys.readouterr()
    assert main(["openvpn", "--config", str(config), "--once", "--no-container"]) == 2
    err = capsys.readouterr().err
    assert "another OpenVPN service, vpnagent-openvpn on vpn-host-1, serves the database" in err, err
    assert "one OpenVPN service per database is supported" in err and "Stop that one first" in err
    assert not (data_dir / "openvpn" / "ccd" / "node-1").exists()  # refused before its first pass

    # should two start at once, each pass names the other
    assert OpenVPNService(c.store, c.files, host="vpn-host-2").reconcile().others == ("vpnagent-openvpn on vpn-host-1",)

    with a.store.session() as s:  # the others stopped: their report goes stale
        s.get(Report, "vpnagent-openvpn").seen_at -= dt.timedelta(seconds=STALE_AFTER_S + 1)
    assert main(["openvpn", "--config", str(config), "--once", "--no-container"]) == 0
