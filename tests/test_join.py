"""One-step join over real HTTPS: a server app behind the certificate its CA issues, on
loopback, and `vpnagent join` on the node side. A good join writes a config that loads and
works; a wrong pin, a spent, expired or damaged string, or a server whose certificate the
pinned CA did not sign is refused with a clear message and leaves the disk (and the token)
as it was."""
from __future__ import annotations

import datetime as dt
import os
import stat
import threading

import pytest
from sqlalchemy import select, update
from werkzeug.serving import make_server

from server_ext import create_app
from server_ext.cli import tls_context
from server_ext.join import ca_pin, issue_join_token, join_string
from server_ext.pki import PKI
from server_ext.store import JoinToken
from vpnagent.cli import main as node_main
from vpnagent.config import load_config
from vpnagent.join import JoinFailed, ca_file_for, join
from vpnagent.serverapi import ServerAPI
from vpnagent.tls import make_session
from vpnshared.joinstring import JoinString, decode


def _serve(app, ctx):
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def server(tmp_path):
    """The server app over HTTPS, with node n1 (org o, collaboration c)."""
    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "TESTING": True,
                      "VPNAGENT_VPN_SUBNET": "10.77.0.0/16"}, migrate=True)
    state = app.extensions["vpnagent"]
    org = state.store.create_organization("o")
    collab = state.store.create_collaboration("c", [org.id])
    node, key = state.store.create_node(org.id, collab.id, "n1")
    http = _serve(app, tls_context({"host": "127.0.0.1"}, state.pki))
    url = f"https://127.0.0.1:{http.server_port}/api"

    def string(name: str = "n1", **changes) -> str:
        issued = issue_join_token(state.store, node.id)
        fields = {"url": url, "ca": ca_pin(state.pki.ca_pem), "node": issued.node_name, "token": issued.token}
        return JoinString(**{**fields, "node": name, **changes}).encode()

    try:
        yield {"url": url, "state": state, "node": node, "key": key, "string": string, "app": app}
    finally:
        http.shutdown()
        state.store.close()


def _tokens(state) -> list[tuple]:
    with state.store.session() as s:
        return [(t.id, t.node_id, t.used_at, t.expires_at) for t in s.scalars(select(JoinToken))]


def test_a_join_writes_a_config_that_loads_and_reaches_the_server(server, tmp_path):
    cfg = tmp_path / "etc" / "n1.yaml"
    joined = join(server["string"](), cfg, tmp_path / "data")
    assert joined.config_path == cfg and joined.ca_path == ca_file_for(cfg) == tmp_path / "etc" / "n1.server-ca.crt"
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    node = load_config(cfg)
    assert (node.name, node.server_url, node.data_dir) == ("n1", server["url"], tmp_path / "data")
    assert str(node.vpn_subnet) == "10.77.0.0/16" and node.server_ca_file == joined.ca_path
    assert joined.ca_path.read_text() == server["state"].pki.ca_pem
    # the config works: its key and CA reach the API as the agent does
    api = ServerAPI(node.server_url, node.api_key, session=make_session(node.tls_verify, node.server_fingerprint))
    assert api.node_self()["name"] == "n1"
    # the key the node had before is replaced: only the joined config works now
    old = server["app"].test_client().post("/api/token/node", json={"api_key": server["key"]})
    assert old.status_code == 401


def test_the_pin_survives_a_new_api_certificate_with_other_names(server, tmp_path):
    """The pin names the CA's key: re-issuing the API certificate for other names (what
    `serve` does when tls_hostnames change) leaves every join string valid."""
    string = server["string"]()
    pki = server["state"].pki
    before = (pki.dir / "api.crt").read_bytes()
    ctx = tls_context({"host": "127.0.0.1", "tls_hostnames": ["127.0.0.1", "vpn.example.org"]}, pki)
    assert (pki.dir / "api.crt").read_bytes() != before
    http = _serve(server["app"], ctx)
    try:
        js = decode(string)
        moved = JoinString(f"https://127.0.0.1:{http.server_port}/api", js.ca, js.node, js.token).encode()
        assert load_config(join(moved, tmp_path / "n1.yaml").config_path).name == "n1"
    finally:
        http.shutdown()


def test_the_command_line_joins_and_says_what_to_run_next(server, tmp_path, capsys):
    cfg = tmp_path / "n1.yaml"
    assert node_main(["join", server["string"](), "--config", str(cfg), "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"vpnagent doctor --config {cfg}" in out and f"vpnagent run --config {cfg}" in out
    assert load_config(cfg).name == "n1"


@pytest.mark.parametrize("bad,words", [
    ("", "starts with 'vpnagent-join-1.'"),
    ("hello", "starts with 'vpnagent-join-1.'"),
    ("vpnagent-join-1.%%%", "damaged"),
    ("vpnagent-join-1.eyJ1cmwiOiAiaHR0cHM6Ly94In0", "does not hold url, ca, node, token"),
    ("vpnagent-join-1." + "A" * 5000, "characters long"),
])
def test_a_malformed_string_is_refused_before_any_traffic(tmp_path, capsys, bad, words):
    cfg = tmp_path / "n1.yaml"
    assert node_main(["join", bad, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert words in err and "vpnagent-server add-node" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_string_cut_short_while_copying_is_refused(server, tmp_path):
    string = server["string"]()
    with pytest.raises(JoinFailed, match="damaged|does not hold") as exc:
        join(string[:-20], tmp_path / "n1.yaml")
    assert exc.value.code == 2
    assert list(tmp_path.iterdir()) == [tmp_path / "server"]


def test_a_wrong_pin_is_refused_and_the_token_is_not_sent(server, tmp_path):
    other = ca_pin(PKI(tmp_path / "other").ca_pem)
    before = _tokens(server["state"])
    string = server["string"](ca=other)
    with pytest.raises(JoinFailed, match="refusing to trust it") as exc:
        join(string, tmp_path / "etc" / "n1.yaml")
    assert other in str(exc.value) and ca_pin(server["state"].pki.ca_pem) in str(exc.value)
    assert not (tmp_path / "etc").exists()
    assert [t[2] for t in _tokens(server["state"])] == [None] * len(_tokens(server["state"]))  # unspent
    assert len(_tokens(server["state"])) == len(before) + 1


def test_a_certificate_the_pinned_ca_did_not_sign_is_refused(server, tmp_path):
    """A server in between that relays the right CA at /node/ca but cannot present a
    certificate from it gets nothing: the token goes only over TLS checked against the pin."""
    impostor = PKI(tmp_path / "impostor")
    http = _serve(server["app"], tls_context({"host": "127.0.0.1"}, impostor))
    try:
        string = server["string"](url=f"https://127.0.0.1:{http.server_port}/api")
        with pytest.raises(JoinFailed, match="not accepted with the pinned CA.*not sent"):
            join(string, tmp_path / "etc" / "n1.yaml")
    finally:
        http.shutdown()
    assert not (tmp_path / "etc").exists()
    assert all(t[2] is None for t in _tokens(server["state"]))


def test_a_token_works_once(server, tmp_path):
    string = server["string"]()
    join(string, tmp_path / "a" / "n1.yaml")
    with pytest.raises(JoinFailed, match="used already.*works only once.*join-token 1") as exc:
        join(string, tmp_path / "b" / "n1.yaml")
    assert exc.value.code == 1
    assert not (tmp_path / "b").exists()
    # the node that joined keeps working: a replayed string changed nothing
    node = load_config(tmp_path / "a" / "n1.yaml")
    assert ServerAPI(node.server_url, node.api_key, session=make_session(node.tls_verify)).node_self()["id"] == 1


def test_an_expired_token_is_refused(server, tmp_path):
    string = server["string"]()
    with server["state"].store.session() as s:
        s.execute(update(JoinToken).values(expires_at=dt.datetime(2020, 1, 1)))
    with pytest.raises(JoinFailed, match="expired at 2020-01-01 00:00 UTC.*join-token 1"):
        join(string, tmp_path / "etc" / "n1.yaml")
    assert not (tmp_path / "etc").exists()


def test_a_token_for_another_node_is_refused(server, tmp_path):
    state = server["state"]
    org = state.store.create_organization("o2")
    collab = state.store.create_collaboration("c2", [org.id])
    state.store.create_node(org.id, collab.id, "n2")
    with pytest.raises(JoinFailed, match="for node 'n1', not 'n2'"):
        join(server["string"](name="n2"), tmp_path / "etc" / "n2.yaml")
    assert not (tmp_path / "etc").exists()
    assert all(t[2] is None for t in _tokens(state))


def test_an_existing_config_is_kept_unless_forced(server, tmp_path):
    cfg = tmp_path / "n1.yaml"
    cfg.write_text("mine")
    tokens = _tokens(server["state"])
    with pytest.raises(JoinFailed, match="exists already; pass --force") as exc:
        join(server["string"](), cfg)
    assert exc.value.code == 2 and cfg.read_text() == "mine"
    assert [t[2] for t in _tokens(server["state"])] == [None] * (len(tokens) + 1)  # nothing spent
    join(server["string"](), cfg, force=True)
    assert load_config(cfg).name == "n1"


def test_a_name_no_node_can_have_is_refused_before_the_token_is_spent(server, tmp_path):
    state = server["state"]
    org = state.store.create_organization("o3")
    collab = state.store.create_collaboration("c3", [org.id])
    node, _ = state.store.create_node(org.id, collab.id, "n3")
    # the server refuses such a name for a new node since the name rules; a row from before them may have it
    from server_ext.store import Node

    with state.store.session() as s:
        s.get(Node, node.id).name = "Bad Name"
    issued = issue_join_token(state.store, node.id)
    string = join_string(server["url"], state.pki.ca_pem, issued)
    with pytest.raises(JoinFailed, match="cannot be called") as exc:
        join(string, tmp_path / "etc" / "x.yaml")
    assert exc.value.code == 2 and not (tmp_path / "etc").exists()


def test_an_unreachable_server_is_one_clear_line(tmp_path, capsys):
    string = JoinString("https://127.0.0.1:9/api", "sha256:" + "0" * 64, "n1", "t" * 43).encode()
    assert node_main(["join", string, "--config", str(tmp_path / "n1.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vpnagent join: cannot reach the server at https://127.0.0.1:9/api") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_add_nodes_whole_output_can_be_piped_in(server, tmp_path, capsys, monkeypatch):
    import io

    output = f"node 1 n1\njoin_string {server['string']()}\n(on the node, as root: ...)\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(output))
    assert node_main(["join", "-", "--config", str(tmp_path / "n1.yaml")]) == 0
    assert load_config(tmp_path / "n1.yaml").name == "n1"
    monkeypatch.setattr("sys.stdin", io.StringIO("node 1 n1\napi_key abc\n"))
    assert node_main(["join", "-", "--config", str(tmp_path / "n2.yaml")]) == 2
    assert "holds 0 join strings" in capsys.readouterr().err
    assert not (tmp_path / "n2.yaml").exists()
