"""Join tokens at the server (SQLite and PostgreSQL): `vpnagent-server add-node` and
`join-token` print a join string, POST /node/join spends its token once for a new API key,
and every refusal (spent, expired, unknown, replaced, another node's, a removed node's,
a malformed body) is a clear 4xx that changes nothing."""
from __future__ import annotations

import datetime as dt
import functools

import pytest
from sqlalchemy import select, update

from server_ext.join import ca_pin, issue_join_token, parse_lifetime
from server_ext.store import JoinToken, Node, StoreError
from vpnshared.joinstring import decode


@pytest.fixture
def cli(cli):
    """The server CLI with the names and port join strings are made for."""
    return functools.partial(cli, port=5000, tls_hostnames=["vpn.example.org"])


def snapshot(world) -> tuple:
    with world.store.session() as s:
        tokens = [(t.id, t.node_id, t.token_hash, t.expires_at, t.used_at) for t in s.scalars(select(JoinToken))]
    return world.snapshot(), tokens


def node_id(world, name: str) -> int:
    with world.store.session() as s:
        return s.scalar(select(Node.id).where(Node.name == name))


def join(world, token: str, name: str):
    return world.client.post("/api/node/join", json={"token": token, "name": name})


def test_a_token_is_spent_once_for_a_new_api_key(world):
    issued = issue_join_token(world.store, node_id(world, "n1"))
    old_token = world.client.post("/api/token/node", json={"api_key": world.node_keys[0]}).json["access_token"]
    assert world.client.get("/api/node/self", headers={"Authorization": f"Bearer {old_token}"}).status_code == 200
    r = join(world, issued.token, "n1")
    assert r.status_code == 200, r.json
    assert {k: r.json[k] for k in ("node_id", "name", "organization_id", "collaboration_id", "vpn_subnet")} == \
        {"node_id": 1, "name": "n1", "organization_id": world.orgs[0], "collaboration_id": world.collab,
         "vpn_subnet": "10.76.0.0/16"}
    assert world.client.post("/api/token/node", json={"api_key": r.json["api_key"]}).status_code == 200
    assert world.client.post("/api/token/node", json={"api_key": world.node_keys[0]}).status_code == 401
    # a node token made with the replaced key stops at once too (the node's key version moved on)
    assert world.client.get("/api/node/self", headers={"Authorization": f"Bearer {old_token}"}).status_code == 401
    before = snapshot(world)
    again = join(world, issued.token, "n1")
    assert again.status_code == 401 and "used already" in again.json["msg"] and "join-token 1" in again.json["msg"]
    assert snapshot(world) == before


def test_refusals_change_nothing(world):
    n1 = node_id(world, "n1")
    issued = issue_join_token(world.store, n1)
    before = snapshot(world)
    cases = [
        (join(world, issued.token, "n2"), 403, "for node 'n1', not 'n2'"),
        (join(world, "x" * 43, "n1"), 401, "unknown join token"),
        (world.client.post("/api/node/join", json={"token": issued.token}), 400, "'name' is required"),
        (world.client.post("/api/node/join", json={"token": 5, "name": "n1"}), 400, "wrong type"),
        (world.client.post("/api/node/join", json={"token": issued.token, "name": "n1", "api_key": "k"}), 400,
         "unknown field"),
        (world.client.post("/api/node/join", data="token", content_type="text/plain"), 400, "JSON object"),
        # a join token is no API key, and an API key no join token
        (world.client.post("/api/token/node", json={"api_key": issued.token}), 401, "unknown node API key"),
        (join(world, world.node_keys[0], "n1"), 401, "unknown join token"),
    ]
    for r, status, words in cases:
        assert (r.status_code, words in r.json["msg"]) == (status, True), r.json
    assert snapshot(world) == before
    assert join(world, issued.token, "n1").status_code == 200  # still unspent after all that


def test_an_expired_token_is_refused(world):
    issued = issue_join_token(world.store, node_id(world, "n2"), dt.timedelta(minutes=1))
    with world.store.session() as s:
        s.execute(update(JoinToken).values(expires_at=dt.datetime(2020, 1, 2, 3, 4)))
    before = snapshot(world)
    r = join(world, issued.token, "n2")
    assert r.status_code == 401 and "expired at 2020-01-02 03:04 UTC" in r.json["msg"]
    assert snapshot(world) == before


def test_a_new_token_replaces_the_unspent_one(world):
    n3 = node_id(world, "n3")
    first = issue_join_token(world.store, n3)
    second = issue_join_token(world.store, n3)
    assert join(world, first.token, "n3").status_code == 401
    assert join(world, second.token, "n3").status_code == 200


def test_a_removed_node_cannot_join_or_get_a_token(world):
    n2 = node_id(world, "n2")
    issued = issue_join_token(world.store, n2)
    world.store.remove_node(n2)
    before = snapshot(world)
    r = join(world, issued.token, "n2")
    assert r.status_code == 401 and "removed" in r.json["msg"]
    assert snapshot(world) == before
    with pytest.raises(StoreError, match="was removed"):
        issue_join_token(world.store, n2)


def test_the_ca_endpoint_serves_the_pinned_ca(world):
    r = world.client.get("/api/node/ca")
    pem = world.app.extensions["vpnagent"].pki.ca_pem
    assert r.status_code == 200 and r.json == {"ca_pem": pem}
    assert ca_pin(r.json["ca_pem"]).startswith("sha256:") and len(ca_pin(pem)) == 71


def test_add_node_prints_a_join_string_with_the_url_and_pin(world, cli):
    world.store.create_organization("org5")
    org5 = 5
    world.store.create_collaboration("E", [org5])
    status, out, err = cli("add-node", "--org", str(org5), "--collaboration", "3", "n5", "--expires", "2h")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "node 5 n5" and lines[1].startswith("join_string vpnagent-join-1.")
    assert "api_key" not in out and "works once" in lines[2] and "join-token 5" in lines[2]
    js = decode(lines[1].split()[1])
    assert (js.url, js.node, js.ca) == ("https://vpn.example.org:5000/api", "n5",
                                        ca_pin(world.app.extensions["vpnagent"].pki.ca_pem))
    with world.store.session() as s:
        token = s.scalar(select(JoinToken).where(JoinToken.node_id == 5))
        assert dt.timedelta(minutes=119) < token.expires_at - token.created_at <= dt.timedelta(hours=2)
    assert join(world, js.token, "n5").status_code == 200


def test_join_token_issues_a_new_string_for_an_existing_node(world, cli):
    status, out, _ = cli("join-token", "2", "--server-url", "https://10.0.0.5:8443/api/")
    assert status == 0
    js = decode(out.splitlines()[1].split()[1])
    assert (js.url, js.node) == ("https://10.0.0.5:8443/api", "n2")
    assert join(world, js.token, "n2").status_code == 200


def test_one_port_strings_name_the_shared_port(world, cli):
    status, out, _ = cli("join-token", "1", one_port=True, openvpn_remote_port=443, openvpn_proto="tcp",
                         tls_hostnames=None, openvpn_remote_host="vpn.example.org")
    assert status == 0 and decode(out.splitlines()[1].split()[1]).url == "https://vpn.example.org:443/api"


def test_where_nodes_cannot_join_add_node_prints_the_api_key_and_says_why(world, cli):
    world.store.create_organization("org5")
    world.store.create_collaboration("E", [5])
    status, out, _ = cli("add-node", "--org", "5", "--collaboration", "3", "n5", insecure_http=True)
    assert status == 0 and out.splitlines()[1].startswith("api_key ") and "insecure_http" in out
    key = out.splitlines()[1].split()[1]
    assert world.client.post("/api/token/node", json={"api_key": key}).status_code == 200
    status, _, err = cli("join-token", "5", insecure_http=True)
    assert status == 2 and "no join string: insecure_http" in err
    status, out, _ = cli("join-token", "5", tls_cert="/x.crt", tls_key="/x.key")
    assert status == 2


def test_add_node_with_api_key_prints_the_key_instead(world, cli):
    world.store.create_organization("org5")
    world.store.create_collaboration("E", [5])
    status, out, _ = cli("add-node", "--org", "5", "--collaboration", "3", "n5", "--api-key")
    assert status == 0 and out.splitlines()[1].startswith("api_key ") and "join_string" not in out


@pytest.mark.parametrize("args,words", [
    (["add-node", "--org", "1", "--collaboration", "1", "n9", "--expires", "forever"], "like 30m, 24h or 7d"),
    (["add-node", "--org", "1", "--collaboration", "1", "n9", "--expires", "31d"], "between 1m and 30d"),
    (["add-node", "--org", "1", "--collaboration", "1", "n9", "--server-url", "http://plain:5000/api"],
     "--server-url: its server URL 'http://plain:5000/api' is not an https:// URL"),
    (["join-token", "99"], "node 99 does not exist"),
    (["join-token", "1", "--expires", "0m"], "between 1m and 30d"),
])
def test_bad_input_is_one_line_and_changes_nothing(world, cli, args, words):
    before = snapshot(world)
    status, _, err = cli(*args)
    assert status == 2 and words in err and "Traceback" not in err
    assert snapshot(world) == before


def test_lifetimes():
    assert parse_lifetime("30m") == dt.timedelta(minutes=30)
    assert parse_lifetime(" 7d ") == dt.timedelta(days=7)
    for bad in ("", "24", "1.5h", "-1h", "24H", "1000000d"):
        with pytest.raises(ValueError):
            parse_lifetime(bad)
