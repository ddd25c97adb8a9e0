"""Removing a node at the server: its certificate is revoked, its live VPN session is cut
through OpenVPN's management interface within seconds, and it cannot come back."""
import subprocess
import sys
import time

import pytest

from server_ext.vpnserver import Management
from vpnagent.serverapi import ServerError

pytestmark = pytest.mark.docker


def test_removed_node_is_disconnected_and_cannot_reconnect(cluster):
    node = cluster.add_node(f"{cluster.prefix}r")
    try:
        cluster.start_node(node)
        cluster.wait_connected(60, nodes=[node])
        mgmt = Management(cluster.workdir / "server" / "openvpn-run" / "management.sock")
        cn = f"node-{node.node_id}"
        deadline = time.monotonic() + 20
        while cn not in mgmt.connected() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cn in mgmt.connected()

        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "server_ext.cli", "remove-node", "--config",
                              str(cluster.workdir / "server" / "server.yaml"), str(node.node_id)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "live VPN session disconnected" in out.stdout, out.stdout
        while cn in mgmt.connected() and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        gone_after = time.monotonic() - t0
        print(f"{cn} disconnected {gone_after:.1f} s after remove-node")
        assert cn not in mgmt.connected()

        # its client keeps trying (and the agent would renew): it never gets back in
        t1 = time.monotonic()
        while time.monotonic() - t1 < 15:
            assert cn not in mgmt.connected(), "a removed node reconnected"
            time.sleep(0.5)
        with pytest.raises(ServerError) as err:
            cluster.node_api(node).node_self()
        assert err.value.status == 401
    finally:
        cluster.stop_node(node)
