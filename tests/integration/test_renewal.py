"""The VPN certificate renews itself before it expires: the agent asks /vpn/update, signals
openvpn to reconnect with the new certificate, and a live run stays reachable (only the
reconnect is lost: tun0, its address and every rule in the namespace stay)."""
import dataclasses
import threading
import time

import pytest
from sqlalchemy import select

from server_ext.pki import cert_from_ovpn
from server_ext.store import Certificate
from tests.waiting import wait_for
from vpnagent.agent import Agent
from vpnagent.config import load_config
from vpnagent.runtime.dockerengine import DockerRuntime

from .util import probe, probe_until_ok, reachable_run, store_of, vpn_container

pytestmark = pytest.mark.docker


def _serial(ovpn_text: str) -> str:
    from cryptography import x509

    return str(x509.load_pem_x509_certificate(cert_from_ovpn(ovpn_text).encode()).serial_number)


def _checks_pass(agent: Agent, n: int) -> None:
    """Wait until the agent's loop has run its certificate check `n` more times."""
    start = agent.vpn_checks
    wait_for(lambda: agent.vpn_checks, f"{n} more certificate checks", 30, 0.1, until=lambda done: done >= start + n)


def test_certificate_renews_before_expiry_and_live_run_stays_reachable(cluster, docker_client):
    prober, node = cluster.nodes[0], cluster.nodes[2]
    cluster.stop_node(node)  # this node's agent runs in the test process, so its margin can move
    agent = Agent(load_config(node.config_path), DockerRuntime(docker_client))
    loop = threading.Thread(target=agent.serve_forever, daemon=True)
    try:
        agent.start()
        loop.start()
        with reachable_run(cluster, docker_client, prober, node) as (ip, port):
            ovpn = agent.vpn.ovpn_path
            old_serial, old_pid = _serial(ovpn.read_text()), agent.vpn.state.pid
            assert agent.vpn.cert_expires - time.time() > 29 * 86400  # 30-day certificates: nothing due
            _checks_pass(agent, 2)
            assert agent.vpn.renewals == 0

            # The certificate is now "due": the cluster issues 30-day certificates, the margin says 31.
            agent.cfg = dataclasses.replace(agent.cfg, cert_renew_days=31)
            failures = []

            def probe_once() -> int:
                failures.append(probe(docker_client, prober.name, ip, port) != "ok")
                return agent.vpn.renewals

            wait_for(probe_once, "the agent to renew its certificate", 30, 0, until=lambda n: n >= 1)
            assert agent.vpn.renewals == 1
            took = probe_until_ok(docker_client, prober.name, ip, port, 20)
            print(f"renewed; probes failed during the renewal: {sum(failures)} of {len(failures)}; "
                  f"reachable {took:.2f} s after it")

            new_serial = _serial(ovpn.read_text())
            assert new_serial != old_serial
            # same VPN client process and namespace, same VPN IP: nothing was re-wired
            assert agent.vpn.state.pid == old_pid == int(vpn_container(docker_client, node.name).attrs["State"]["Pid"])
            assert agent.status()["vpn"]["vpn_ip"] == ip
            assert agent.status()["vpn"]["renewals"] == 1
            assert agent.status()["vpn"]["cert_expires"] == agent.vpn.cert_expires
            store = store_of(cluster)
            try:
                with store.session() as s:
                    revoked = {c.serial: c.revoked_at for c in s.scalars(select(Certificate))}
            finally:
                store.close()
            assert revoked[old_serial] is not None and revoked[new_serial] is None
            # The reconnect after the renewal was a new TLS handshake, checked against the CRL
            # that now lists the old serial: the probe above passing means the new one was used.

            _checks_pass(agent, 2)
            assert agent.vpn.renewals == 1, "a renewal that cannot reach the margin must not repeat every check"
    finally:
        agent.shutdown()
        cluster.start_node(node)
        cluster.wait_connected(nodes=[node])
