"""The vantage6 4.x sidecar (docs/vantage6.md) against the REAL vantage6-server 4.13.7 from
PyPI (tests/v6server: in-process on SQLite, in .venv-v6server), with vantage6's own
NodeClient and tokens, behind Debian's nginx running the routes docs/vantage6.md shows.

The sidecar is vpnagent's app with `vantage6_config` set, served on a loopback port; its
OpenVPN server and vantage6's vpn-client (the host's openvpn with that client's flags) run
in two network namespaces the tests create (tests/openvpn_netns.py). Traffic goes only to
loopback and those namespaces; everything is removed afterwards."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import jwt
import pytest
import requests
import yaml
from cryptography import x509
from werkzeug.serving import make_server

from server_ext import create_app
from server_ext.cli import main as server_cli
from server_ext.ovpn import Profile, render_client, render_server_conf
from server_ext.pki import cert_from_ovpn, common_name
from server_ext.sidecar import Sweeper
from server_ext.state import ReplicaMismatch
from server_ext.store import Certificate, Node
from server_ext.vpnserver import Management
from tests.nginx import running_nginx
from tests.openvpn_netns import CONNECTED, SERVER_IP, running, skip_unless_possible, veth_link
from tests.server.test_serve import serve  # noqa: F401 - the fixture
from tests.v6server.harness import V6Server, v6, world  # noqa: F401 - v6, world: fixtures
from tests.waiting import wait_for

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "harbor.example.org/vpnagent/echo:1"
SUBNET = "10.99.0.0/24"  # only inside the test's namespaces
SERVER_TUN_IP = "10.99.0.1"
# vantage6 4.13's vpn-client (its image's entrypoint), as the issue and docs/vantage6.md give them
V6_CLIENT_FLAGS = ("--connect-retry-max", "1", "--pull-filter", "ignore", "route-ipv6", "--pull-filter", "ignore",
                   "ifconfig-ipv6", "--script-security", "2", "--up-restart", "--ping-exit", "30")


@dataclasses.dataclass
class Sidecar:
    app: object
    url: str
    config: Path  # its server config (YAML), for the CLI

    @property
    def state(self):
        return self.app.extensions["vpnagent"]


@pytest.fixture(scope="module")
def sidecar(v6: V6Server, tmp_path_factory) -> Iterator[Sidecar]:
    """vpnagent's server as a sidecar beside `v6`, on a loopback port."""
    work = tmp_path_factory.mktemp("sidecar")
    raw = {"data_dir": str(work / "data"), "vantage6_config": str(v6.workdir / "v6.yaml"), "vpn_subnet": SUBNET,
           "openvpn_remote_host": SERVER_IP, "insecure_http": True}
    config = work / "sidecar.yaml"
    config.write_text(yaml.safe_dump(raw))
    app = create_app({"VPNAGENT_DATA_DIR": raw["data_dir"], "VPNAGENT_VANTAGE6_CONFIG": raw["vantage6_config"],
                      "VPNAGENT_VPN_SUBNET": SUBNET, "VPNAGENT_OPENVPN_REMOTE_HOST": SERVER_IP}, migrate=True)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Sidecar(app, f"http://127.0.0.1:{server.server_port}", config)
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        app.extensions["vpnagent"].store.close()
        app.extensions["vpnagent"].directory.close()


def documented_nginx_routes() -> str:
    """The nginx block of docs/vantage6.md, as an operator pastes it."""
    text = (ROOT / "docs" / "vantage6.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/vantage6.md shows one nginx block"
    return blocks[0]


@pytest.fixture(scope="module")
def proxy(v6: V6Server, sidecar: Sidecar, tmp_path_factory) -> Iterator[str]:
    """Debian's nginx with the documented routes, the two upstreams at their test ports."""
    routes = documented_nginx_routes()
    assert "http://127.0.0.1:7601" in routes and "http://127.0.0.1:5000" in routes
    routes = routes.replace("http://127.0.0.1:7601", sidecar.url).replace("http://127.0.0.1:5000",
                                                                          f"http://127.0.0.1:{v6.port}")
    with running_nginx(tmp_path_factory.mktemp("nginx"), lambda port: f"listen 127.0.0.1:{port};\n{routes}",
                       "vantage6 sidecar test") as port:
        yield f"http://127.0.0.1:{port}"


def node_token(v6: V6Server, node: dict) -> str:
    return v6.call({"cmd": "node_token", "api_key": node["api_key"]})["access_token"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def node_config(v6: V6Server, proxy: str, node: dict) -> str:
    """What vantage6's own NodeClient gets, asking at the proxy."""
    got = v6.call({"cmd": "node_client_vpn", "url": proxy, "api_path": "/api", "api_key": node["api_key"]})
    assert got["ok"], got
    return got["ovpn_config"]


def _cert(ovpn: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_from_ovpn(ovpn).encode())


def _serial(ovpn: str) -> str:
    return str(_cert(ovpn).serial_number)


# ---------------------------------------------------------------- configs for vantage6's node
def test_node_client_gets_its_config_through_the_documented_proxy(v6, world, sidecar, proxy, tmp_path):
    node = world["nodes"][0]
    # control: vantage6 itself has no VPN to give without EduVPN (501, the client says not ok)
    direct = v6.call({"cmd": "node_client_vpn", "url": f"http://127.0.0.1:{v6.port}", "api_path": "/api",
                      "api_key": node["api_key"]})
    assert direct == {"ok": False, "ovpn_config": ""}

    ovpn = node_config(v6, proxy, node)
    cert = _cert(ovpn)
    assert common_name(cert) == f"node-{node['id']}"  # the VPN state is kept under vantage6's node id
    assert f"remote {SERVER_IP} 1194" in ovpn and "tun-mtu 1400" in ovpn
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=364), "a vantage6 node renews only when it restarts"
    with sidecar.state.store.session() as s:
        row = s.get(Node, node["id"])
        assert (row.organization_id, row.collaboration_id) == (node["organization_id"], world["collaboration_id"])
        assert row.vpn_ip and row.vpn_ip.startswith("10.99.0.")
        assert s.query(Certificate).filter_by(serial=str(cert.serial_number), node_id=node["id"]).one().revoked_at is None

    # POST /api/vpn/update, which vantage6 4.10+ leaves unimplemented, by vantage6's own client
    path = tmp_path / "vpn-config.ovpn"
    path.write_text(ovpn)
    assert v6.call({"cmd": "node_client_refresh", "url": proxy, "api_path": "/api", "api_key": node["api_key"],
                    "ovpn_file": str(path)}) == {"ok": True}
    renewed = path.read_text()
    assert _serial(renewed) != _serial(ovpn) and common_name(_cert(renewed)) == f"node-{node['id']}"
    with sidecar.state.store.session() as s:
        assert s.query(Certificate).filter_by(serial=_serial(ovpn)).one().revoked_at is not None
        assert s.query(Certificate).filter_by(serial=_serial(renewed)).one().revoked_at is None
    # the revoked config cannot be renewed again
    again = requests.post(f"{proxy}/api/vpn/update", json={"vpn_config": ovpn},
                          headers=bearer(node_token(v6, node)), timeout=10)
    assert again.status_code == 403 and "revoked" in again.json()["msg"]


def test_tokens_vantage6_did_not_issue_to_a_node_are_refused(v6, world, sidecar, proxy):
    node = world["nodes"][1]
    user = world["user"]
    user_token = v6.call({"cmd": "user_token", "username": user["username"], "password": user["password"]})
    r = requests.get(f"{proxy}/api/vpn", headers=bearer(user_token["access_token"]), timeout=10)
    assert r.status_code == 403 and "user token" in r.json()["msg"]

    real = node_token(v6, node)
    claims = jwt.decode(real, v6.jwt_secret, algorithms=["HS256"], options={"verify_sub": False})
    foreign = jwt.encode(claims, "another-secret-" + "x" * 40, algorithm="HS256")
    r = requests.get(f"{proxy}/api/vpn", headers=bearer(foreign), timeout=10)
    assert r.status_code == 401 and "invalid token" in r.json()["msg"]
    # control: the very same claims signed with vantage6's secret get a config
    resigned = jwt.encode(claims, v6.jwt_secret, algorithm="HS256")
    assert requests.get(f"{proxy}/api/vpn", headers=bearer(resigned), timeout=10).status_code == 200

    # a refresh token of the node is no access token
    refresh = jwt.encode({**claims, "type": "refresh"}, v6.jwt_secret, algorithm="HS256")
    r = requests.get(f"{proxy}/api/vpn", headers=bearer(refresh), timeout=10)
    assert r.status_code == 401 and "refresh" in r.json()["msg"]
    r = requests.get(f"{proxy}/api/vpn", timeout=10)
    assert r.status_code == 401


# ---------------------------------------------------------------- the address book
def _task(v6, world, orgs: list[int]) -> dict:
    user = world["user"]
    token = v6.call({"cmd": "user_token", "username": user["username"], "password": user["password"]})
    return v6.call({"cmd": "create_task", "user_token": token["access_token"], "organizations": orgs,
                    "image": IMAGE})


def _run_of(task: dict, org: int) -> int:
    return next(r["id"] for r in task["runs"] if r["organization_id"] == org)


QUERIES = [{}, {"include_children": "1"}, {"include_parent": "1"}, {"include_children": "1", "include_parent": "1"},
           {"only_children": "1"}, {"only_parent": "1"}, {"only_siblings": "1"}, {"only_self": "1"},
           {"label": "echo"}, {"label": "nope"}, {"include_children": "false"}, {"only_children": "1", "label": "echo"},
           {"only_children": "1", "only_parent": "1"}, {"only_self": "1", "include_parent": "1"}]


def test_container_tokens_get_vantage6_identical_addresses(v6, world, sidecar, proxy):
    nodes, orgs = world["nodes"], world["organizations"]
    for i, node in enumerate(nodes):  # what each vantage6 node reports once its VPN is up
        v6.call({"cmd": "set_node_ip", "node_api_key": node["api_key"], "node_id": node["id"], "ip": f"10.99.0.{50 + i}"})
    top = _task(v6, world, orgs[:2])
    tokens = {}
    for i in (0, 1):
        run = _run_of(top, orgs[i])
        v6.call({"cmd": "set_run", "node_api_key": nodes[i]["api_key"], "run_id": run, "status": "active"})
        v6.call({"cmd": "add_port", "node_api_key": nodes[i]["api_key"], "run_id": run, "port": 8000 + i,
                 "label": "echo"})
        tokens[f"top-{i}"] = v6.call({"cmd": "container_token", "node_api_key": nodes[i]["api_key"],
                                      "task_id": top["id"], "image": IMAGE})["container_token"]
    v6.call({"cmd": "add_port", "node_api_key": nodes[1]["api_key"], "run_id": _run_of(top, orgs[1]), "port": 9000,
             "label": "other"})
    sub = v6.call({"cmd": "create_subtask", "container_token": tokens["top-0"], "organizations": orgs,
                   "image": IMAGE})
    for i, node in enumerate(nodes):
        run = _run_of(sub, orgs[i])
        v6.call({"cmd": "set_run", "node_api_key": node["api_key"], "run_id": run, "status": "active"})
        v6.call({"cmd": "add_port", "node_api_key": node["api_key"], "run_id": run, "port": 8100 + i,
                 "label": "echo"})
    tokens["sub-2"] = v6.call({"cmd": "container_token", "node_api_key": nodes[2]["api_key"], "task_id": sub["id"],
                               "image": IMAGE})["container_token"]

    compared = 0
    for name, token in tokens.items():
        for params in QUERIES:
            theirs = v6.call({"cmd": "addresses", "container_token": token, "params": params})
            ours = requests.get(f"{proxy}/api/vpn/algorithm/addresses", params=params, headers=bearer(token),
                                timeout=10)
            assert ours.status_code == theirs["status"], (name, params, ours.text, theirs)
            if ours.status_code == 200:
                assert ours.json() == theirs["body"], (name, params)
                compared += len(ours.json()["addresses"])
    assert compared > 20, "the questions must have returned addresses to compare"

    # the one intended difference: a finished run's container token stops working here
    v6.call({"cmd": "set_run", "node_api_key": nodes[0]["api_key"], "run_id": _run_of(top, orgs[0]),
             "status": "completed"})
    ours = requests.get(f"{proxy}/api/vpn/algorithm/addresses", headers=bearer(tokens["top-0"]), timeout=10)
    assert ours.status_code == 401 and "'completed'" in ours.json()["msg"]
    assert v6.call({"cmd": "addresses", "container_token": tokens["top-0"], "params": {}})["status"] == 200
    # ... and a run vantage6 failed in another final state too
    v6.call({"cmd": "set_run", "node_api_key": nodes[2]["api_key"], "run_id": _run_of(sub, orgs[2]),
             "status": "crashed"})
    ours = requests.get(f"{proxy}/api/vpn/algorithm/addresses", headers=bearer(tokens["sub-2"]), timeout=10)
    assert ours.status_code == 401 and "'crashed'" in ours.json()["msg"]
    # a node token is no container token
    ours = requests.get(f"{proxy}/api/vpn/algorithm/addresses", headers=bearer(node_token(v6, nodes[1])), timeout=10)
    assert ours.status_code == 403


# ---------------------------------------------------------------- OpenVPN in namespaces
@pytest.fixture
def link():
    skip_unless_possible()
    with veth_link() as link:
        yield link


def _server_conf(state, path: Path, profile: Profile | None = None) -> Path:
    """The sidecar's OpenVPN server config for the host's openvpn in a namespace: its files
    at their host paths, its management socket where the sidecar looks for it."""
    settings = dataclasses.replace(state.settings, config_dir_in_container=str(state.files.dir),
                                   **({"profile": profile} if profile else {}))
    pki = state.pki
    cert, key = pki.server_pair()
    state.files.runtime_dir.mkdir(mode=0o700, exist_ok=True)
    conf = render_server_conf(settings, pki.ca_pem, cert, key, pki.tls_crypt_v2_server_key())
    lines = [line for line in conf.splitlines() if not line.startswith(("status ", "management "))]
    lines.append(f"management {state.files.management_sockets[0]} unix")
    path.write_text("\n".join(lines) + "\n")
    return path


def _client(path: Path, ovpn: str) -> Path:
    path.write_text(ovpn)
    return path


def _drop_fragments(ns: str) -> None:
    """A middlebox on the namespace's veth that drops every IP fragment as it arrives. An
    nftables netdev ingress hook: iptables would see packets only after conntrack has put
    the fragments together (test_algorithms/middlebox.py does the same on a host veth)."""
    links = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show", "type", "veth"], capture_output=True,
                                      text=True, check=True, timeout=10).stdout)
    device = links[0]["ifname"]
    ruleset = (f"table netdev vatest_frag {{\n  chain in {{\n    type filter hook ingress device \"{device}\" "
               "priority 0;\n    ip frag-off & 0x3fff != 0 counter drop\n  }\n}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset, text=True, check=True, timeout=10)


def _fragments_dropped(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "netdev", "vatest_frag"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return sum(expr["counter"]["packets"] for item in json.loads(out)["nftables"] if "rule" in item
               for expr in item["rule"]["expr"] if "counter" in expr)


def _ping(ns: str, size: int) -> bool:
    """One ping of `size` payload bytes to the OpenVPN server over the tunnel, never fragmented
    by the sender (DF): whether it came back."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", str(size),
                          SERVER_TUN_IP], capture_output=True, text=True, timeout=20)
    return out.returncode == 0


def _tun_ip(ns: str) -> str | None:
    out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "tun0"], capture_output=True, text=True,
                         timeout=10)
    addrs = json.loads(out.stdout or "[]") if out.returncode == 0 else []
    return next((a["local"] for link in addrs for a in link.get("addr_info", [])), None)


def test_vantage6_client_flags_connect_and_fit_a_1500_byte_path(v6, world, sidecar, proxy, link, tmp_path):
    state = sidecar.state
    node = world["nodes"][1]
    ovpn = node_config(v6, proxy, node)
    # the path: 1500 bytes (the veth's MTU), and the server's side drops every IP fragment
    _drop_fragments(link.server_ns)
    with running(link.server_ns, _server_conf(state, tmp_path / "server.conf"), tmp_path / "server.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, _client(tmp_path / "vpn-config.ovpn", ovpn), tmp_path / "client.log",
                     V6_CLIENT_FLAGS + ("--cd", str(tmp_path))) as client:
            client.wait_log(CONNECTED)
            with state.store.session() as s:
                assert _tun_ip(link.client_ns) == s.get(Node, node["id"]).vpn_ip
            assert _ping(link.client_ns, 1400 - 28), "a full tunnel packet must cross without fragments"

    # control: OpenVPN's default tun-mtu (1500) on the same path loses a full packet
    default = Profile()
    cn = f"node-{node['id']}"
    issued = state.pki.issue_node_cert(cn, days=1)
    plain = render_client(dataclasses.replace(state.settings, profile=default), state.pki.ca_pem, issued.cert_pem,
                          issued.key_pem, state.pki.tls_crypt_v2_client_key(cn))
    with running(link.server_ns, _server_conf(state, tmp_path / "server-1500.conf", default),
                 tmp_path / "server-1500.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, _client(tmp_path / "plain.ovpn", plain), tmp_path / "plain.log",
                     V6_CLIENT_FLAGS + ("--cd", str(tmp_path))) as client:
            client.wait_log(CONNECTED)
            assert _ping(link.client_ns, 1000), "the tunnel works for packets that fit"
            before = _fragments_dropped(link.server_ns)
            assert not _ping(link.client_ns, 1500 - 28), "a 1500-byte tunnel packet is fragmented, and dropped"
            assert _fragments_dropped(link.server_ns) > before


def test_deleting_a_node_in_vantage6_revokes_it_and_ends_its_session(v6, world, sidecar, proxy, link, tmp_path):
    state = sidecar.state
    node = world["nodes"][2]
    token = node_token(v6, node)
    ovpn = node_config(v6, proxy, node)
    sweeper = Sweeper(state)
    assert sweeper() == []  # control: nothing to revoke while vantage6 has the node
    with running(link.server_ns, _server_conf(state, tmp_path / "server.conf"), tmp_path / "server.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, _client(tmp_path / "vpn-config.ovpn", ovpn), tmp_path / "client.log",
                     V6_CLIENT_FLAGS + ("--cd", str(tmp_path))):
            management = Management(state.files.management_sockets)
            cn = f"node-{node['id']}"
            wait_for(lambda: cn in management.connected(), "the node's session", 20)
            assert v6.call({"cmd": "delete_node", "node_id": node["id"]})["status"] == 200
            # at once: the node's tokens are refused, as vantage6 no longer has it
            r = requests.get(f"{proxy}/api/vpn", headers=bearer(token), timeout=10)
            assert r.status_code == 401 and "no longer exists" in r.json()["msg"]
            assert cn in management.connected()  # the session outlives the token check ...
            # ... until the OpenVPN service's next pass: revoked, address withdrawn, session ended
            assert sweeper() == [node["id"]]
            assert cn not in management.connected()
    with state.store.session() as s:
        row = s.get(Node, node["id"])
        assert row.removed_at is not None
        assert all(c.revoked_at is not None for c in s.query(Certificate).filter_by(node_id=node["id"]))
    crl = x509.load_pem_x509_crl((state.files.dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(_serial(ovpn))) is not None
    assert not (state.files.dir / "ccd" / f"node-{node['id']}").exists()
    # and the node's config no longer connects
    with running(link.server_ns, _server_conf(state, tmp_path / "server2.conf"), tmp_path / "server2.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, _client(tmp_path / "again.ovpn", ovpn), tmp_path / "again.log",
                     V6_CLIENT_FLAGS + ("--cd", str(tmp_path))) as client:
            server.wait_log("TLS CRYPT V2 VERIFY SCRIPT ERROR")
            assert CONNECTED not in client.log()


def test_the_openvpn_service_command_ends_a_deleted_nodes_session_within_seconds(v6, sidecar, proxy, link,
                                                                                   tmp_path):
    """The same through the command docs/vantage6.md runs beside OpenVPN: `vpnagent-server
    openvpn --vantage6 FILE` (here without its container: OpenVPN runs in the namespace, on
    the socket the service looks for)."""
    state = sidecar.state
    node = v6.call({"cmd": "setup"})["nodes"][0]  # a world of its own: the module's nodes stay
    ovpn = node_config(v6, proxy, node)
    cn = f"node-{node['id']}"
    with running(link.server_ns, _server_conf(state, tmp_path / "server.conf"), tmp_path / "server.log") as server:
        server.wait_log(CONNECTED)
        with running(link.client_ns, _client(tmp_path / "vpn-config.ovpn", ovpn), tmp_path / "client.log",
                     V6_CLIENT_FLAGS + ("--cd", str(tmp_path))):
            management = Management(state.files.management_sockets)
            wait_for(lambda: cn in management.connected(), "the node's session", 20)
            log = (tmp_path / "service.log").open("w")
            service = subprocess.Popen(
                [sys.executable, "-m", "server_ext.cli", "openvpn", "--config", str(sidecar.config), "--vantage6",
                 str(v6.workdir / "v6.yaml"), "--no-container", "--interval", "0.5"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_for(lambda: "reconciling every" in (tmp_path / "service.log").read_text()
                         or service.poll() is not None, "the OpenVPN service to start", 30)
                assert service.poll() is None, (tmp_path / "service.log").read_text()
                time.sleep(1.5)  # passes with the node in vantage6: its session stays
                assert cn in management.connected(), (tmp_path / "service.log").read_text()
                assert v6.call({"cmd": "delete_node", "node_id": node["id"]})["status"] == 200
                t0 = time.monotonic()
                wait_for(lambda: cn not in management.connected(), "the service to end the session", 10)
                print(f"session ended {time.monotonic() - t0:.1f} s after vantage6 deleted the node")
            finally:
                service.terminate()
                service.wait(15)
                log.close()
    output = (tmp_path / "service.log").read_text()
    assert f"vantage6 node {node['id']} was deleted on the vantage6 server" in output, output
    assert "Traceback" not in output, output


# ---------------------------------------------------------------- operating it
def test_serve_with_vantage6_serves_the_sidecar(v6, world, serve):
    """`vpnagent-server serve --vantage6 FILE`, the production server of docs/vantage6.md."""
    served = serve("--vantage6", str(v6.workdir / "v6.yaml"), insecure_http=True, vpn_subnet=SUBNET)
    token = node_token(v6, world["nodes"][0])
    r = served.get("/vpn", headers=bearer(token))
    assert r.status_code == 200 and "BEGIN CERTIFICATE" in r.json()["ovpn_config"], r.text
    assert "tun-mtu 1400" in r.json()["ovpn_config"]
    assert served.get("/health").status_code == 404  # vpnagent's own API is not served
    assert served.stop() == 0, served.output


def test_vantage6_status_says_which_node_to_restart(v6, world, sidecar, proxy, capsys):
    node = world["nodes"][0]
    node_config(v6, proxy, node)
    assert server_cli(["vantage6-status", "--config", str(sidecar.config), "--json"]) == 0
    rows = {row["node_id"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows[node["id"]]["state"] == "valid" and rows[node["id"]]["vpn_ip"].startswith("10.99.0.")

    # 20 days left: the operator is told to restart the node, and the exit status says so
    with sidecar.state.store.session() as s:
        cert = (s.query(Certificate).filter_by(node_id=node["id"], revoked_at=None).order_by(Certificate.id.desc())
                .first())
        cert.not_after = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(days=20)
    assert server_cli(["vantage6-status", "--config", str(sidecar.config)]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(f"node {node['id']} "))
    assert "expiring" in line and "v6 node restart" in line


def test_a_sidecar_refuses_what_vantage6_owns(v6, sidecar, tmp_path, capsys):
    # creating nodes is vantage6's business
    assert server_cli(["add-organization", "acme", "--config", str(sidecar.config)]) == 2
    assert "the vantage6 server owns" in capsys.readouterr().err
    # a vantage6 config without its jwt_secret_key: vantage6 would make a random one
    bare = tmp_path / "v6-no-secret.yaml"
    raw = yaml.safe_load((v6.workdir / "v6.yaml").read_text())
    raw.pop("jwt_secret_key")
    bare.write_text(yaml.safe_dump(raw))
    assert server_cli(["vantage6-status", "--config", str(sidecar.config), "--vantage6", str(bare)]) == 2
    assert "jwt_secret_key" in capsys.readouterr().err
    assert server_cli(["vantage6-status", "--config", str(sidecar.config), "--vantage6",
                       str(tmp_path / "missing.yaml")]) == 2
    assert "vantage6 server config" in capsys.readouterr().err
    # a store of vpnagent's own server cannot become a sidecar's (node ids would collide)
    own = tmp_path / "own"
    create_app({"VPNAGENT_DATA_DIR": str(own)}, migrate=True).extensions["vpnagent"].store.close()
    with pytest.raises(ReplicaMismatch, match="holds the VPN state of a vpnagent server's nodes"):
        create_app({"VPNAGENT_DATA_DIR": str(own), "VPNAGENT_VANTAGE6_CONFIG": str(v6.workdir / "v6.yaml")},
                   migrate=True)
    # the sidecar serves vantage6's VPN routes and nothing of vpnagent's own API
    assert requests.post(f"{sidecar.url}/api/token/node", json={"api_key": "x"}, timeout=10).status_code == 404


# ---------------------------------------------------------------- vantage6 on PostgreSQL
def test_a_vantage6_server_on_postgresql(postgres, tmp_path):
    """The same sidecar beside a vantage6 server whose database is PostgreSQL (vantage6's
    `uri` spelled postgresql://, its psycopg2), read through the sidecar's READ ONLY
    sessions: configs, vantage6-identical addresses, a deleted node revoked."""
    url = postgres.create()
    try:
        with V6Server(tmp_path / "v6", database_url=url.replace("postgresql+psycopg://", "postgresql://")) as v6pg:
            assert v6pg.database_url.startswith("postgresql://")
            world = v6pg.call({"cmd": "setup"})
            nodes, orgs = world["nodes"], world["organizations"]
            app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "sidecar"), "VPNAGENT_VPN_SUBNET": SUBNET,
                              "VPNAGENT_VANTAGE6_CONFIG": str(v6pg.workdir / "v6.yaml")}, migrate=True)
            state = app.extensions["vpnagent"]
            try:
                client = app.test_client()
                r = client.get("/api/vpn", headers=bearer(node_token(v6pg, nodes[0])))
                assert r.status_code == 200 and "tun-mtu 1400" in r.get_json()["ovpn_config"]

                top = _task(v6pg, world, orgs[:2])
                run = _run_of(top, orgs[1])
                v6pg.call({"cmd": "set_node_ip", "node_api_key": nodes[1]["api_key"], "node_id": nodes[1]["id"],
                           "ip": "10.99.0.61"})
                v6pg.call({"cmd": "set_run", "node_api_key": nodes[1]["api_key"], "run_id": run, "status": "active"})
                v6pg.call({"cmd": "add_port", "node_api_key": nodes[1]["api_key"], "run_id": run, "port": 8001,
                           "label": "echo"})
                token = v6pg.call({"cmd": "container_token", "node_api_key": nodes[0]["api_key"],
                                   "task_id": top["id"], "image": IMAGE})["container_token"]
                for params in ({}, {"only_siblings": "1"}, {"label": "echo"}, {"only_self": "1"}):
                    theirs = v6pg.call({"cmd": "addresses", "container_token": token, "params": params})
                    ours = client.get("/api/vpn/algorithm/addresses", query_string=params, headers=bearer(token))
                    assert (ours.status_code, ours.get_json()) == (theirs["status"], theirs["body"]), params
                assert theirs["body"]["addresses"] == []  # only_self: node 0 registered no port
                assert client.get("/api/vpn/algorithm/addresses", headers=bearer(token)).get_json()["addresses"][0][
                    "ip"] == "10.99.0.61"

                assert Sweeper(state)() == []
                assert v6pg.call({"cmd": "delete_node", "node_id": nodes[0]["id"]})["status"] == 200
                assert Sweeper(state)() == [nodes[0]["id"]]
                with state.store.session() as s:
                    assert s.get(Node, nodes[0]["id"]).removed_at is not None
            finally:
                state.store.close()
                state.directory.close()
    finally:
        postgres.drop(url)
