"""Removing a node at the server: its certificate is revoked, its live VPN session is cut
through OpenVPN's management interface within seconds, and it cannot come back."""
import subprocess
import sys
import time

import pytest

from server_ext.vpnserver import Management
from tests.waiting import wait_for
from vpnagent.serverapi import ServerError

from .util import vpn_container

pytestmark = pytest.mark.docker


def test_removed_node_is_disconnected_and_cannot_reconnect(cluster, docker_client):
    node = cluster.add_node(f"{cluster.prefix}r")
    try:
        cluster.start_node(node)
        cluster.wait_connected(60, nodes=[node])
        mgmt = Management(cluster.workdir / "server" / "openvpn-run" / "management.sock")
        cn = f"node-{node.node_id}"
        wait_for(mgmt.connected, f"{cn} in the OpenVPN server's client list", 20, until=lambda names: cn in names)

        openvpn = docker_client.containers.get(cluster.openvpn_container)
        t0 = time.monotonic()
        before = len(openvpn.logs())  # the server's log from here on: after the removal
        out = subprocess.run([sys.executable, "-m", "server_ext.cli", "remove-node", "--config",
                              str(cluster.workdir / "server" / "server.yaml"), str(node.node_id)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "live VPN session disconnected" in out.stdout, out.stdout
        wait_for(mgmt.connected, f"{cn} to be disconnected", 10, until=lambda names: cn not in names)
        print(f"{cn} disconnected {time.monotonic() - t0:.1f} s after remove-node")
        # the node's own status follows within seconds, not at openvpn's ping timeout: the
        # server refusing the node means its session is gone, whatever tun0 still holds
        st = wait_for(node.status, "the node's status to stop claiming a VPN", 15, 0.1,
                      until=lambda s: s and not s["vpn"]["connected"] and s["server"]["state"] == "refused")
        print(f"status not connected {time.monotonic() - t0:.1f} s after remove-node: {st['server']['error']}")
        # and the agent backs off instead of asking every poll (it logged 130 lines in 30 s)
        lines_before = len(node.log_path.read_text(errors="replace").splitlines())
        time.sleep(10)
        new_lines = node.log_path.read_text(errors="replace").splitlines()[lines_before:]
        refusals = [line for line in new_lines if "server refused" in line]
        assert len(refusals) <= 1, refusals

        # its client tries again: openvpn would at its ping timeout (60 s); SIGUSR1 makes it
        # now. The server refuses it before TLS (its tls-crypt-v2 key names a node without a
        # ccd entry; the revoked certificate is never looked at), and the node is never back
        # in the client list meanwhile.
        vpn_container(docker_client, node.name).kill(signal="SIGUSR1")

        def refused() -> bool:
            assert cn not in mgmt.connected(), "a removed node reconnected"
            log = openvpn.logs()[before:].decode(errors="replace")
            assert f"CN={cn}" not in log, f"{cn}'s handshake got as far as TLS"
            return f"refused: {cn} has no client-config-dir entry (removed)" in log

        wait_for(refused, f"the OpenVPN server to refuse {cn}'s next handshake", 30, 0.2)
        assert cn not in mgmt.connected()
        with pytest.raises(ServerError) as err:
            cluster.node_api(node).node_self()
        assert err.value.status == 401
    finally:
        cluster.stop_node(node)
