"""The server side of the WireGuard data plane (issue 18), on SQLite and PostgreSQL.

What a node's agent relies on: PUT /node/wireguard stores exactly a checked registration
(and refuses any bad value with a 400 naming it, leaving the store as it was; a key another
node holds with a 409); GET /node/wireguard and GET /node/peers say which plane to use and
where each peer is; and every change another node must act on (a peer's registration, its
removal or key replacement, the collaboration's plane) leaves a `peers` event for exactly
the nodes it concerns, while a change of nothing leaves none."""
from __future__ import annotations

import base64
import json
import os

import pytest
from sqlalchemy import select

from server_ext import create_app
from server_ext.config import ServerConfigError
from server_ext.store import Node, Run
from tests.server.conftest import build_world
from tests.server.test_events import events_of, last_seq, node_ids

PUBLIC = "203.0.113.7"  # where the tests' registrations come from (TEST-NET-3)


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def register(world, i: int, key: str | None = None, port: int = 51820, endpoints: list | None = None,
             remote: str = PUBLIC, **extra):
    body = {"public_key": key or new_key(), "port": port, **extra}
    if endpoints is not None:
        body["endpoints"] = endpoints
    return world.client.put("/api/node/wireguard", headers=world.node_headers(i), json=body,
                            environ_base={"REMOTE_ADDR": remote})


def wg_row(world, node_id: int) -> tuple:
    with world.store.session() as s:
        n = s.get(Node, node_id)
        return n.wg_public_key, n.wg_port, n.wg_endpoints, n.wg_seen_ip, n.wg_updated_at


def family(world) -> tuple[int, int]:
    """Nodes n1 and n2 with a VPN IP and an active run each of one task; n3 has neither."""
    for i in (0, 1, 2):
        assert world.client.get("/api/vpn", headers=world.node_headers(i)).status_code == 200
    task = world.create_task([world.orgs[0], world.orgs[1]])
    with world.store.session() as s:
        runs = list(s.scalars(select(Run.id).where(Run.task_id == task["id"]).order_by(Run.id)))
    for i, run in enumerate(runs):
        assert world.client.patch(f"/api/run/{run}", headers=world.node_headers(i),
                                  json={"status": "active"}).status_code == 200
    return runs[0], runs[1]


def peers_of(world, i: int) -> dict:
    r = world.client.get("/api/node/peers", headers=world.node_headers(i))
    assert r.status_code == 200, r.json
    return r.json


# ---------------------------------------------------------------- registration
def test_a_registration_is_stored_and_shown(world):
    n1, *_ = node_ids(world)
    key = new_key()
    r = register(world, 0, key, 51999, ["198.51.100.1:51999", "192.168.1.20:51999", "198.51.100.1:51999"])
    assert r.status_code == 200, r.json
    view = {"data_plane": "openvpn", "public_key": key, "port": 51999,
            "endpoints": ["198.51.100.1:51999", "192.168.1.20:51999"], "seen": f"{PUBLIC}:51999"}
    assert r.json == view, "duplicate endpoints are kept once"
    assert world.client.get("/api/node/wireguard", headers=world.node_headers(0)).json == view
    stored = wg_row(world, n1)
    assert stored[:4] == (key, 51999, ["198.51.100.1:51999", "192.168.1.20:51999"], PUBLIC)
    assert stored[4] is not None


def test_before_registering_the_view_is_empty(world):
    r = world.client.get("/api/node/wireguard", headers=world.node_headers(0))
    assert r.status_code == 200
    assert r.json == {"data_plane": "openvpn", "public_key": None, "port": None, "endpoints": [], "seen": None}
    assert world.client.get("/api/node/wireguard", headers=world.user_headers()).status_code == 403


def test_endpoints_are_optional_and_a_new_registration_replaces_the_old(world):
    n1, *_ = node_ids(world)
    assert register(world, 0, endpoints=["198.51.100.1:1"]).status_code == 200
    key = new_key()
    r = register(world, 0, key, 4000)
    assert r.status_code == 200 and r.json["endpoints"] == [] and r.json["public_key"] == key
    assert wg_row(world, n1)[:3] == (key, 4000, [])


BAD = [
    ({"public_key": "abc"}, "not a WireGuard public key"),
    ({"public_key": base64.b64encode(bytes(31)).decode()}, "32 bytes"),
    ({"public_key": base64.b64encode(bytes(33)).decode()}, "32 bytes"),
    ({"public_key": base64.b64encode(bytes(32)).decode().rstrip("=")}, "44 characters"),
    ({"public_key": base64.urlsafe_b64encode(b"\xfb" * 32).decode()}, "standard base64"),
    ({"public_key": "é" * 44}, "not a WireGuard public key"),
    ({"public_key": 5}, "field 'public_key' has the wrong type"),
    ({"port": 0}, "give a UDP port within 1-65535"),
    ({"port": 65536}, "give a UDP port within 1-65535"),
    ({"port": -1}, "field 'port'"),
    ({"port": "51820"}, "field 'port' has the wrong type"),
    ({"port": True}, "field 'port' has the wrong type"),
    ({"endpoints": "198.51.100.1:1"}, "field 'endpoints' has the wrong type"),
    ({"endpoints": [f"198.51.100.{i}:1" for i in range(9)]}, "give at most 8"),
    ({"endpoints": ["198.51.100.1"]}, "is not IPv4:port"),
    ({"endpoints": ["198.51.100.1:"]}, "has no port"),
    ({"endpoints": ["198.51.100.1:x"]}, "has no port"),
    ({"endpoints": ["198.51.100.1:0"]}, "within 1-65535"),
    ({"endpoints": ["198.51.100.1:65536"]}, "within 1-65535"),
    ({"endpoints": ["example.org:51820"]}, "give a dotted IPv4 address"),
    ({"endpoints": ["[2001:db8::1]:51820"]}, "give a dotted IPv4 address"),
    ({"endpoints": ["198.051.100.1:1"]}, "give a dotted IPv4 address"),
    ({"endpoints": [51820]}, "is not IPv4:port"),
    ({"endpoints": ["127.0.0.1:51820"]}, "a loopback address"),
    ({"endpoints": ["0.0.0.0:51820"]}, "the unspecified address"),
    ({"endpoints": ["224.0.0.5:51820"]}, "a multicast address"),
    ({"endpoints": ["255.255.255.255:51820"]}, "the broadcast address"),
    ({"endpoints": ["169.254.10.1:51820"]}, "a link-local address"),
    ({"endpoints": ["10.76.0.9:51820"]}, "inside the VPN subnet 10.76.0.0/16 (it would loop through the tunnel)"),
    ({"endpoints": ["198.51.100.1:1", "10.76.200.1:1"]}, "inside the VPN subnet"),
    ({"peers": []}, "unknown field(s): peers"),
]


@pytest.mark.parametrize("change, words", BAD, ids=[repr(c)[:60] for c, _ in BAD])
def test_each_bad_registration_gets_a_clear_400_and_changes_nothing(world, change, words):
    assert register(world, 0, endpoints=["198.51.100.1:51820"]).status_code == 200
    before, seq = world.snapshot(), last_seq(world.store)
    body = {"public_key": new_key(), "port": 51820, **change}
    r = world.client.put("/api/node/wireguard", headers=world.node_headers(0), json=body,
                         environ_base={"REMOTE_ADDR": "198.51.100.99"})
    assert r.status_code == 400 and words in r.json["msg"], r.json
    assert world.snapshot() == before and last_seq(world.store) == seq


def test_missing_fields_and_bodies_are_refused(world):
    for body in ({"port": 1}, {"public_key": new_key()}, [], None):
        r = world.client.put("/api/node/wireguard", headers=world.node_headers(0), json=body)
        assert r.status_code == 400 and r.json["msg"], (body, r.json)
    assert wg_row(world, node_ids(world)[0])[0] is None


def test_a_key_another_node_holds_is_refused_until_that_node_is_removed(world, cli):
    n1, n2, *_ = node_ids(world)
    key = new_key()
    assert register(world, 0, key).status_code == 200
    before = world.snapshot()
    r = register(world, 1, key)
    assert r.status_code == 409 and f"registered by node {n1}" in r.json["msg"] and "wg genkey" in r.json["msg"]
    assert world.snapshot() == before
    assert register(world, 0, key).status_code == 200, "the same node may register its own key again"
    status, _, err = cli("remove-node", str(n1))
    assert status == 0, err
    assert wg_row(world, n1)[0] is None, "a removed node lets go of its key"
    assert register(world, 1, key).status_code == 200


@pytest.mark.parametrize("remote, seen", [
    ("127.0.0.1", None), ("0.0.0.0", None), ("::1", None), ("::ffff:198.51.100.3", "198.51.100.3"),
    ("2001:db8::1", None), ("10.76.0.20", None), ("198.51.100.3", "198.51.100.3")])
def test_the_seen_address_is_kept_only_where_other_nodes_could_send_to_it(world, remote, seen):
    r = register(world, 0, port=7000, remote=remote)
    assert r.status_code == 200
    assert r.json["seen"] == (f"{seen}:7000" if seen else None)
    assert wg_row(world, node_ids(world)[0])[3] == seen


def test_the_same_registration_again_writes_nothing(world):
    family(world)
    n1, *_ = node_ids(world)
    key = new_key()
    assert register(world, 0, key, endpoints=["198.51.100.1:51820"]).status_code == 200
    stored, seq = wg_row(world, n1), last_seq(world.store)
    assert register(world, 0, key, endpoints=["198.51.100.1:51820"]).status_code == 200
    assert wg_row(world, n1) == stored, "not even wg_updated_at moves"
    assert last_seq(world.store) == seq, "no event for a change of nothing"


# ---------------------------------------------------------------- events
def test_a_registration_change_tells_the_other_nodes_of_its_task_families(world):
    family(world)
    n1, n2, n3, n4 = node_ids(world)
    key = new_key()
    steps = ({"key": key}, {"key": key, "port": 6000}, {"key": key, "port": 6000, "endpoints": ["192.0.2.1:6000"]},
             {"key": key, "port": 6000, "endpoints": ["192.0.2.1:6000"], "remote": "198.51.100.50"})
    for change in steps:  # each changes one thing: key, port, endpoints, seen address
        seq = last_seq(world.store)
        assert register(world, 0, **change).status_code == 200
        assert events_of(world.store, seq) == [(n2, "peers", None, None)], change


def test_removing_a_node_or_replacing_its_key_tells_the_nodes_of_its_task_families(world, cli):
    family(world)
    n1, n2, n3, n4 = node_ids(world)
    assert register(world, 1).status_code == 200
    seq = last_seq(world.store)
    world.store.rotate_node_key(n2)
    assert sorted(events_of(world.store, seq)) == [(n1, "peers", None, None), (n2, "revoked", None, None)]
    seq = last_seq(world.store)
    status, _, err = cli("remove-node", str(n2))
    assert status == 0, err
    got = events_of(world.store, seq)
    assert (n1, "peers", None, None) in got and (n2, "revoked", None, None) in got
    assert not [e for e in got if e[0] in (n3, n4)]


def test_a_plane_change_tells_every_node_of_the_collaboration(world):
    n1, n2, n3, n4 = node_ids(world)
    seq = last_seq(world.store)
    world.store.set_data_plane(world.collab, "wireguard")
    assert sorted(events_of(world.store, seq)) == [(n, "peers", None, None) for n in (n1, n2, n3)], \
        "all of them, with runs or not; none of another collaboration"
    seq = last_seq(world.store)
    world.store.set_data_plane(world.collab, "wireguard")
    assert events_of(world.store, seq) == [], "the plane it has: no change, no event"
    world.store.set_data_plane(world.collab, None)
    assert len(events_of(world.store, seq)) == 3
    seq = last_seq(world.store)
    world.store.set_data_plane(world.collab, "default")
    assert events_of(world.store, seq) == []


# ---------------------------------------------------------------- GET /node/peers
def test_peers_on_openvpn_carry_no_wireguard(world):
    family(world)
    for i in (0, 1):
        assert register(world, i).status_code == 200
    got = peers_of(world, 0)
    assert got["data_plane"] == "openvpn"
    peers = got["runs"][0]["peers"]
    assert len(peers) == 2 and all(p["wireguard"] is None for p in peers)


def test_peers_on_wireguard_carry_the_key_and_the_endpoints_seen_first(world):
    run1, run2 = family(world)
    n1, n2, *_ = node_ids(world)
    world.store.set_data_plane(world.collab, "wireguard")
    assert register(world, 0).status_code == 200
    got = peers_of(world, 1)
    assert got["data_plane"] == "wireguard"
    wg = {p["node_id"]: p["wireguard"] for p in got["runs"][0]["peers"]}
    assert wg[n2] is None, "the caller itself"
    key = new_key()
    assert register(world, 1, key, 6000, ["192.0.2.1:6000", f"{PUBLIC}:6000", "192.0.2.2:6001"]).status_code == 200
    wg = {p["node_id"]: p["wireguard"] for p in peers_of(world, 0)["runs"][0]["peers"]}
    assert wg[n1] is None
    assert wg[n2] == {"public_key": key, "endpoints": [f"{PUBLIC}:6000", "192.0.2.1:6000", "192.0.2.2:6001"]}
    assert register(world, 1, key, 6000, ["192.0.2.1:6000"], remote="127.0.0.1").status_code == 200
    wg = {p["node_id"]: p["wireguard"] for p in peers_of(world, 0)["runs"][0]["peers"]}
    assert wg[n2] == {"public_key": key, "endpoints": ["192.0.2.1:6000"]}, "nothing seen: only what it reported"
    assert {p["run_id"] for p in peers_of(world, 0)["runs"][0]["peers"]} == {run1, run2}


def test_a_peer_without_a_key_has_no_wireguard(world):
    family(world)
    n1, n2, *_ = node_ids(world)
    world.store.set_data_plane(world.collab, "wireguard")
    wg = {p["node_id"]: p["wireguard"] for p in peers_of(world, 0)["runs"][0]["peers"]}
    assert wg == {n1: None, n2: None}


def test_a_removed_node_is_no_peer(world, cli):
    """A task created after a node's removal still gives its organisation a run on it
    (pending, never taken): that run must not reach anyone's allow rules or WireGuard."""
    family(world)
    n1, n2, *_ = node_ids(world)
    world.store.set_data_plane(world.collab, "wireguard")
    assert register(world, 1).status_code == 200
    status, _, err = cli("remove-node", str(n2))
    assert status == 0, err
    task = world.create_task([world.orgs[0], world.orgs[1]])
    with world.store.session() as s:
        on_removed = s.scalar(select(Run.id).where(Run.task_id == task["id"], Run.node_id == n2))
    assert on_removed is not None
    for entry in peers_of(world, 0)["runs"]:
        assert n2 not in [p["node_id"] for p in entry["peers"]], entry


# ---------------------------------------------------------------- managing the plane
def test_admin_commands_set_and_show_the_plane(world, cli):
    status, out, err = cli("add-collaboration", "e", "--org", "1", "--data-plane", "wireguard", "--json")
    assert status == 0, err
    made = json.loads(out)
    assert (made["data_plane"], made["data_plane_default"]) == ("wireguard", False)
    status, out, _ = cli("set-data-plane", str(made["id"]), "default")
    assert status == 0 and "data plane openvpn (server default)" in out and "its nodes were told" in out
    status, out, _ = cli("set-data-plane", str(world.collab), "wireguard", "--json")
    assert status == 0 and json.loads(out)["data_plane"] == "wireguard"
    lines = cli("list-collaborations", data_plane="wireguard")[1].splitlines()
    assert lines[0].endswith("data plane wireguard") and lines[1].endswith("data plane wireguard (server default)")
    shown = json.loads(cli("show-collaboration", str(world.other_collab), "--json", data_plane="wireguard")[1])
    assert (shown["data_plane"], shown["data_plane_default"]) == ("wireguard", True)
    status, _, err = cli("set-data-plane", str(world.collab), "ipsec")
    assert status == 2 and "invalid choice" in err
    status, _, err = cli("set-data-plane", "99", "openvpn")
    assert status == 2 and "collaboration 99 does not exist" in err


def test_the_admin_api_sets_and_shows_the_plane(world):
    admin = world.admin_headers()
    n1, n2, n3, _ = node_ids(world)
    url = f"/api/admin/collaboration/{world.collab}"
    seq = last_seq(world.store)
    r = world.client.patch(url, headers=admin, json={"data_plane": "wireguard"})
    assert r.status_code == 200 and (r.json["data_plane"], r.json["data_plane_default"]) == ("wireguard", False)
    assert sorted(e[0] for e in events_of(world.store, seq)) == [n1, n2, n3]
    assert world.client.get("/api/node/wireguard", headers=world.node_headers(0)).json["data_plane"] == "wireguard"
    r = world.client.patch(url, headers=admin, json={"data_plane": None})
    assert r.status_code == 200 and (r.json["data_plane"], r.json["data_plane_default"]) == ("openvpn", True)
    before = world.snapshot()
    for body, status, words in (({"data_plane": "ipsec"}, 400, "not one of openvpn, wireguard"),
                                ({}, 400, "field 'data_plane' is required"), ({"data_plane": 1}, 400, "wrong type")):
        r = world.client.patch(url, headers=admin, json=body)
        assert r.status_code == status and words in r.json["msg"], r.json
    r = world.client.patch("/api/admin/collaboration/99", headers=admin, json={"data_plane": "wireguard"})
    assert r.status_code == 404
    assert world.client.patch(url, headers=world.user_headers(), json={"data_plane": "wireguard"}).status_code == 403
    assert world.snapshot() == before
    r = world.client.post("/api/admin/collaboration", headers=admin,
                          json={"name": "e", "organizations": [1], "data_plane": "wireguard"})
    assert r.status_code == 201 and r.json["data_plane"] == "wireguard"
    listed = world.client.get("/api/admin/collaboration", headers=admin).json
    assert [c["data_plane_default"] for c in listed] == [True, True, False]


# ---------------------------------------------------------------- the server's default
def test_the_server_default_plane_applies_where_a_collaboration_sets_none(tmp_path, database_url):
    world = build_world(tmp_path, database_url, VPNAGENT_DATA_PLANE="wireguard")
    try:
        assert world.client.get("/api/node/wireguard", headers=world.node_headers(0)).json["data_plane"] == "wireguard"
        world.store.set_data_plane(world.collab, "openvpn")
        assert peers_of(world, 0)["data_plane"] == "openvpn"
    finally:
        world.store.close()


@pytest.mark.parametrize("value", ["wg", "OpenVPN", 1, ""])
def test_a_bad_server_default_plane_is_refused_naming_it(tmp_path, value):
    with pytest.raises(ServerConfigError, match=r"data_plane is .*(must be openvpn or wireguard|not a string)"):
        create_app({"VPNAGENT_DATA_DIR": str(tmp_path), "VPNAGENT_DATA_PLANE": value})
