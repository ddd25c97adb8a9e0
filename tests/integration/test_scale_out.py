"""The server scaled out (docs/operator-guide.md, "Scaling out"): three API servers, each
with a data directory of its own (copies of the CA and the token secret only, as separate
hosts would have), one PostgreSQL, and the OpenVPN service (`vpnagent-server openvpn`) as a
process of its own. Node i talks to API server i: no API server has the OpenVPN server's
files or management sockets, so every address, CRL and disconnect reaches OpenVPN through
the database. The nodes resync only every 10 minutes: every run they take within the test
reached them as a push from their own API server, written by another one (the node
events table). Needs Docker and VPNAGENT_TEST_POSTGRES_URL (scripts/postgres.sh)."""
import time
import uuid

import pytest
import requests
import yaml

from server_ext.store import Store
from test_algorithms.cluster import LocalCluster
from test_algorithms.send_echo import format_matrix, send_echo
from tests.server.postgres import connect_from_env

pytestmark = pytest.mark.docker

API_PROCESSES = 3


@pytest.fixture(scope="module")
def scaled_out(docker_client, images, tmp_path_factory):
    databases = connect_from_env()  # skips (or fails under VPNAGENT_REQUIRE_POSTGRES=1) without PostgreSQL
    url = databases.create()
    c = LocalCluster(workdir=tmp_path_factory.mktemp("scaleout"), prefix=f"vso{uuid.uuid4().hex[:3]}", n_nodes=3,
                     vpn_subnet="10.83.0.0/16", database_url=url, api_processes=API_PROCESSES,
                     node_extra={"resync_interval": 600},
                     progress=lambda m: print(f"[scale-out] {m}"))
    try:
        yield c.up()
    finally:
        c.down()
        databases.drop(url)
        databases.close()


def test_echo_across_three_nodes_on_three_api_servers(scaled_out):
    c = scaled_out
    servers = {yaml_server_url(n) for n in c.nodes}
    assert servers == set(c.api_urls) and len(servers) == API_PROCESSES  # each node on another API server
    result = send_echo(c.server_url, c.user_api_key, c.collaboration_id, verify=c.tls_verify, timeout=180,
                       progress=print)
    print(format_matrix(result))
    assert result["ok"] is True and len(result["pairs"]) == 3 * 3 + 3
    for node in c.nodes:  # their runs came as events through their own API server
        push = node.status()["push"]
        assert push["state"] == "connected" and push["events"] >= 1, (node.name, push)

    # every API server tells the same story: the counter summed in the store, OpenVPN as the
    # service reports it (the API servers have no management socket of their own)
    scrapes = [requests.get(url.rsplit("/api", 1)[0] + "/metrics", verify=c.tls_verify, timeout=10).text
               for url in c.api_urls]
    for text in scrapes:
        assert "vpnagent_server_openvpn_up 1.0" in text
        assert "vpnagent_server_nodes_connected 3.0" in text
    counts = {line for text in scrapes for line in text.splitlines()
              if line.startswith('vpnagent_server_address_requests_total{code="200"}')}
    assert len(counts) == 1, counts  # the same value through every API server


def test_a_node_removed_through_one_api_server_is_disconnected_by_the_openvpn_service(scaled_out):
    c = scaled_out
    victim = c.nodes[2]
    admin_key = _admin_key(c)
    admin = requests.post(f"{c.api_urls[1]}/token/admin", json={"api_key": admin_key}, verify=c.tls_verify,
                          timeout=10).json()["access_token"]
    r = requests.delete(f"{c.api_urls[1]}/admin/node/{victim.node_id}", verify=c.tls_verify, timeout=10,
                        headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["disconnected"] is False  # API server 1 has no OpenVPN
    store = Store(c.store_url)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            connected = {cn for svc in store.openvpn_services() for cn in svc.connected or ()}
            if f"node-{victim.node_id}" not in connected:
                break
            time.sleep(0.2)
        assert f"node-{victim.node_id}" not in connected, connected
        assert {f"node-{n.node_id}" for n in c.nodes[:2]} <= connected
    finally:
        store.close()
    # its token is refused by every API server at once
    for url in c.api_urls:
        tok = requests.post(f"{url}/token/node", json={"api_key": victim.api_key}, verify=c.tls_verify, timeout=10)
        assert tok.status_code == 401


def yaml_server_url(node) -> str:
    return yaml.safe_load(node.config_path.read_text())["server_url"]


def _admin_key(c: LocalCluster) -> str:
    store = Store(c.store_url)
    try:
        return store.create_admin("ops")[1]
    finally:
        store.close()
