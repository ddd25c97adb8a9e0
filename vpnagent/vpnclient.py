"""The node's OpenVPN client container: start it from an .ovpn, wait for tun0, and the
start-up path (config on disk → renew → fetch → no VPN) that gets the node connected."""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from dataclasses import dataclass

import docker
import docker.errors

from . import ovpncheck, pathmtu
from .config import NodeConfig
from .netns import Netns
from .pathmtu import PathMTU
from .serverapi import ServerAPI, ServerError

log = logging.getLogger(__name__)

FAIL_CLOSED = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"


class VPNError(RuntimeError):
    """The VPN could not be brought up; the message says which step failed and why."""


@dataclass(frozen=True)
class VPNState:
    container_id: str
    pid: int
    vpn_ip: str
    iso_ip: str
    iso_if: str
    since: float
    path: PathMTU = PathMTU(pathmtu.FALLBACK_MTU, "fallback")  # what the tunnel carries (pathmtu.py)


def cert_not_after(ovpn_text: str) -> float | None:
    """Expiry (Unix time) of the client certificate inline in an .ovpn; None if absent."""
    from cryptography import x509

    match = re.search(r"<cert>\s*(-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----)\s*</cert>", ovpn_text, re.S)
    if not match:
        return None
    try:
        return x509.load_pem_x509_certificate(match.group(1).encode()).not_valid_after_utc.timestamp()
    except ValueError:
        return None


def check_ovpn(text: str) -> None:
    """Only a config as our server writes it reaches openvpn (ovpncheck: an allowlist)."""
    try:
        ovpncheck.check_ovpn(text)
    except ovpncheck.ConfigRefused as exc:
        raise VPNError(str(exc)) from None


class VPNClient:
    def __init__(self, cfg: NodeConfig, docker_client: docker.DockerClient, api: ServerAPI) -> None:
        self.cfg = cfg
        self.docker = docker_client
        self.api = api
        self.dir = cfg.data_dir / "vpn"
        self.ovpn_path = self.dir / "client.ovpn"
        self.state: VPNState | None = None
        self.last_error: str | None = None
        self.cert_expires: float | None = None  # of the config on disk (Unix time)
        self.renewals = 0

    # --- start-up state machine
    def connect(self, iso_network: str, iso_subnet: ipaddress.IPv4Network) -> VPNState | None:
        """Existing config → renew it → fetch a new one → run without VPN (and say why)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        steps = []
        if self.ovpn_path.exists():
            steps.append(("config on disk", lambda: self.ovpn_path.read_text()))
            steps.append(("renewed config (POST /vpn/update)", self._renewed))
        steps.append(("fresh config (GET /vpn)", self.api.get_vpn_config))
        errors = []
        for what, get_config in steps:
            try:
                text = get_config()
                check_ovpn(text)
                self._write(text)
                log.info("vpn: starting client with the %s", what)
                self.state = self._start(iso_network, iso_subnet)
                self.last_error = None
                log.info("vpn: connected, VPN IP %s", self.state.vpn_ip)
                return self.state
            except (VPNError, ServerError, OSError, docker.errors.APIError) as exc:
                log.warning("vpn: %s did not work: %s", what, exc)
                errors.append(f"{what}: {exc}")
        self.stop()
        self.last_error = "; ".join(errors)
        log.error("vpn: running WITHOUT VPN; algorithms get no VPN ports. Reasons: %s", self.last_error)
        return None

    def _renewed(self) -> str:
        return self.api.renew_vpn_config(self.ovpn_path.read_text())

    def _write(self, text: str) -> None:
        tmp = self.dir / "client.ovpn.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, self.ovpn_path)
        self.cert_expires = cert_not_after(text)

    def renew_in_place(self, timeout: float = 30.0) -> float:
        """A new certificate through POST /vpn/update, then SIGHUP: openvpn re-reads its
        config and reconnects with it. persist-tun keeps tun0, its address and the
        namespace with every rule in it, so live runs only miss the reconnect (returned,
        in seconds). The old certificate is revoked by the server once the new one exists."""
        if self.state is None:
            raise VPNError("no running VPN client to renew")
        text = self._renewed()
        check_ovpn(text)
        container = self.docker.containers.get(self.state.container_id)
        since = int(time.time())
        done_before = self.sessions(since)
        self._write(text)
        t0 = time.monotonic()
        container.kill(signal="SIGHUP")
        while time.monotonic() - t0 < timeout:
            if self.sessions(since) > done_before:
                self.renewals += 1
                return time.monotonic() - t0
            time.sleep(0.05)
        raise VPNError(f"openvpn did not reconnect within {timeout:.0f} s after the certificate renewal")

    # --- the container
    def _start(self, iso_network: str, iso_subnet: ipaddress.IPv4Network) -> VPNState:
        self.stop()
        container = self.docker.containers.run(
            self.cfg.vpn_image,
            ["openvpn", "--config", "/vpn/client.ovpn", "--pull-filter", "ignore", "route-ipv6",
             "--pull-filter", "ignore", "ifconfig-ipv6"],
            name=self.cfg.vpn_container,
            detach=True,
            cap_add=["NET_ADMIN"],
            devices=["/dev/net/tun:/dev/net/tun"],
            sysctls={"net.ipv4.ip_forward": "1"},
            volumes={str(self.dir): {"bind": "/vpn", "mode": "ro"}},
            network=self.cfg.vpn_client_network,
            # No restart policy: a client Docker restarted would come back with a new namespace
            # and no rules (forwarding open) until the agent noticed; the agent replaces a dead
            # client itself, closed first, and while the agent is down it stays down (closed).
            labels={"vpnagent.node": self.cfg.name, "vpnagent.role": "vpn-client", **self.cfg.labels},
        )
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        ns = Netns(pid)
        # Fail closed: forwarding policy DROP before the client joins the isolated network,
        # so no holder's packet is forwarded before reconcile has put the rules in.
        ns.iptables_restore(FAIL_CLOSED)
        self.docker.networks.get(iso_network).connect(container)
        container.reload()
        vpn_ip = self._wait_for_tun(container, ns)
        iso_if = ns.interface_in(iso_subnet)
        iso_ip = container.attrs["NetworkSettings"]["Networks"][iso_network]["IPAddress"]
        if iso_if is None:
            raise VPNError(f"VPN client has no interface on the isolated network {iso_network}")
        path = pathmtu.settle(ns, self.cfg.tunnel_mtu)
        pathmtu.apply_link_mtu(ns, path)
        return VPNState(container.id, pid, vpn_ip, iso_ip, iso_if, time.time(), path)

    def _wait_for_tun(self, container, ns: Netns) -> str:
        """Poll tun0 every 20 ms (it is usually up within ~200 ms), bounded by the timeout."""
        deadline = time.monotonic() + self.cfg.vpn_connect_timeout
        checks = 0
        while time.monotonic() < deadline:
            addrs = ns.ipv4_addresses("tun0").get("tun0")
            if addrs:
                ip = addrs[0].ip
                if ip not in self.cfg.vpn_subnet:
                    raise VPNError(f"VPN IP {ip} is outside vpn_subnet {self.cfg.vpn_subnet}; "
                                   "the server and node disagree on the VPN subnet")
                return str(ip)
            checks += 1
            if checks % 25 == 0:
                container.reload()
                if container.status not in ("running", "created", "restarting"):
                    break
            time.sleep(0.02)
        tail = container.logs(tail=8).decode(errors="replace").strip().replace("\n", " | ")
        raise VPNError(f"tun0 did not come up within {self.cfg.vpn_connect_timeout:.0f} s; openvpn says: {tail[-600:]}")

    def stop(self) -> None:
        """SIGTERM first, so openvpn says goodbye to the server (explicit-exit-notify)."""
        try:
            c = self.docker.containers.get(self.cfg.vpn_container)
            if c.status == "running":
                c.stop(timeout=3)
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        self.state = None

    def sessions(self, since: float, until: float | None = None) -> int:
        """How often the running client's openvpn finished connecting between `since` and
        `until` (Unix time), from its log: persist-tun hides a reconnect from tun0."""
        if self.state is None:
            return 0
        logs = self.docker.containers.get(self.state.container_id).logs(since=since, until=until)
        return logs.count(b"Initialization Sequence Completed")

    def is_healthy(self) -> bool:
        """The container runs with the same pid and tun0 still holds our VPN IP."""
        if self.state is None:
            return False
        try:
            c = self.docker.containers.get(self.state.container_id)
        except docker.errors.NotFound:
            return False
        if c.status != "running" or int(c.attrs["State"]["Pid"]) != self.state.pid:
            return False
        addrs = Netns(self.state.pid).ipv4_addresses("tun0").get("tun0") or []
        return any(str(a.ip) == self.state.vpn_ip for a in addrs)
