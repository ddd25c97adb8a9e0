"""The node's OpenVPN client container: start it from an .ovpn, wait for tun0, and the
start-up path (config on disk → renew → fetch → no VPN) that gets the node connected; adopt
the client a previous agent left running; tell from openvpn's log whether its session is up."""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime

import docker
import docker.errors

from . import ovpncheck, pathmtu
from .config import NodeConfig
from .netns import Netns, NetnsError
from .pathmtu import PathMTU
from .serverapi import ServerAPI, ServerError

log = logging.getLogger(__name__)

FAIL_CLOSED = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"
# the client's command line; adopt() compares a running client's with it (an upgrade that
# changes it wants a new client)
OPENVPN_ARGV = ["openvpn", "--config", "/vpn/client.ovpn", "--pull-filter", "ignore", "route-ipv6",
                "--pull-filter", "ignore", "ifconfig-ipv6"]
LOG_TAIL = 200  # lines session() reads: a reconnect loop writes ~6 lines per attempt


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


@dataclass(frozen=True)
class SessionState:
    """Whether openvpn's session with the server is up, read from openvpn's own log:
    persist-tun keeps tun0 and its address while openvpn reconnects, so tun0 cannot tell."""

    state: str  # "up", "reconnecting" (lost after it was up) or "starting" (never up yet)
    since: float | None  # Unix time of the line that decided it, when the line is dated
    detail: str  # that line (for "reconnecting": the latest reason it is not back)


COMPLETED = "Initialization Sequence Completed"
# Lines after which the session is gone until the next COMPLETED. Reasons first: they say
# why; a signal line says only that openvpn restarts, "Restart pause" not even that.
SESSION_LOST_REASONS = ("AUTH_FAILED", "TLS Error", "Inactivity timeout", "Connection reset, restarting",
                        "Connection reset command", "process exiting")
SESSION_LOST_SIGNALS = ("SIGUSR1[", "SIGHUP[")
RESTART_PAUSE = "Restart pause"
# always follows a more telling "TLS Error: ..." line
GENERIC_TLS_ERROR = "TLS Error: TLS handshake failed"

_DOCKER_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) ")
_OPENVPN_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")


def rfc3339_time(text: str) -> float:
    """Unix time of a Docker timestamp ("2026-11-27T14:00:01.123456789Z"; Python takes at
    most microseconds, so the fraction is cut to 6 digits)."""
    match = re.fullmatch(r"(\S+?:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not match:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{base}.{(fraction or '0')[:6]:0<6}{zone}").timestamp()


def _dated(line: str) -> tuple[float | None, str]:
    """A log line's time and its text without the time prefixes. Docker's prefix (from
    logs(timestamps=True)) is preferred: it is UTC and exact. OpenVPN's own prefix is in
    the container's local time, which is UTC in our image (it sets no time zone)."""
    stamp = None
    match = _DOCKER_STAMP.match(line)
    if match:
        stamp = rfc3339_time(match.group(1))
        line = line[match.end():]
    match = _OPENVPN_STAMP.match(line)
    if match:
        if stamp is None:
            stamp = datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
        line = line[match.end():]
    return stamp, line.strip()


def _lost_rank(text: str) -> int | None:
    """How well a session-lost line says why: 0 a reason, 1 a signal, 2 the restart pause;
    None: not a session-lost line."""
    if any(marker in text for marker in SESSION_LOST_REASONS):
        return 1 if text.startswith(GENERIC_TLS_ERROR) else 0
    if any(marker in text for marker in SESSION_LOST_SIGNALS):
        return 1
    return 2 if RESTART_PAUSE in text else None


def session_from_log(lines: list[str], connected_before: bool = False) -> SessionState:
    """The session's state from the end of an openvpn log (lines as openvpn or `docker logs
    --timestamps` write them). The last COMPLETED with no session-lost line after it: up.
    A session-lost line after it: reconnecting, since the first such line (when the session
    was lost), with the latest reason as detail. No COMPLETED: starting, unless
    `connected_before` says the session was up once (tun0 got its address), so the
    COMPLETED is older than the lines given; a long-lived client's log fills with hourly
    renegotiations and pushes it out of a bounded tail."""
    dated = [_dated(line) for line in lines if line.strip()]
    completed = max((i for i, (_, text) in enumerate(dated) if COMPLETED in text), default=None)
    after = dated if completed is None else dated[completed + 1:]
    lost = [(stamp, text, rank) for stamp, text in after if (rank := _lost_rank(text)) is not None]
    if lost:
        best = min(rank for _, _, rank in lost)
        detail = [text for _, text, rank in lost if rank == best][-1]
        since = next((stamp for stamp, _, _ in lost if stamp is not None), None)
        if completed is not None or connected_before:
            return SessionState("reconnecting", since, detail)
        return SessionState("starting", since, detail)
    if completed is not None:
        stamp, text = dated[completed]
        return SessionState("up", stamp, text)
    if connected_before:
        return SessionState("up", None, f"no session-lost line in the last {len(dated)} log line(s); "
                                        "the session completed before them")
    first = next((stamp for stamp, _ in dated if stamp is not None), None)
    return SessionState("starting", first, dated[-1][1] if dated else "openvpn has logged nothing yet")


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

    def adopt(self, iso_network: str, iso_subnet: ipaddress.IPv4Network) -> VPNState | None:
        """Take over the client a previous agent left running (it was killed or upgraded),
        so the node's tunnels and the rules in its namespace survive. Only a client exactly
        as connect() would start it now is adopted; nothing in it is changed (tun0's MTU is
        read, not probed). None, with the reason logged: the caller then calls connect(),
        which replaces the client."""
        name = self.cfg.vpn_container
        try:
            container = self.docker.containers.get(name)
        except docker.errors.NotFound:
            log.info("vpn: no VPN client container %s to adopt", name)
            return None
        except docker.errors.APIError as exc:
            log.info("vpn: cannot inspect the VPN client container %s (%s): replacing it", name, exc)
            return None
        found = self._adoptable(container, iso_network, iso_subnet)
        if isinstance(found, str):
            log.info("vpn: %s: replacing it", found)
            return None
        self.state = found
        self.cert_expires = cert_not_after(self.ovpn_path.read_text())
        self.last_error = None
        log.info("vpn: adopted the running client %s (VPN IP %s, up since %s, tunnel MTU %d as it was left)",
                 self.cfg.vpn_container, found.vpn_ip,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.since)), found.path.mtu)
        return found

    def _adoptable(self, container, iso_network: str, iso_subnet: ipaddress.IPv4Network) -> VPNState | str:
        """The client's state, or why it cannot be adopted. Reads only."""
        cfg, name = self.cfg, self.cfg.vpn_container
        labels = container.labels or {}
        if labels.get("vpnagent.role") != "vpn-client" or labels.get("vpnagent.node") != cfg.name:
            return (f"container {name} is not labelled as node {cfg.name}'s VPN client "
                    f"(vpnagent.role={labels.get('vpnagent.role')}, vpnagent.node={labels.get('vpnagent.node')})")
        if container.status != "running":
            return f"VPN client {name} is {container.status}, not running"
        attrs = container.attrs
        try:
            wanted = self.docker.images.get(cfg.vpn_image).id
        except docker.errors.ImageNotFound:
            return f"config wants image {cfg.vpn_image}, which is not on this host (vpnagent images build)"
        if attrs.get("Image") != wanted:
            return f"VPN client runs image {attrs.get('Image')}, config wants {cfg.vpn_image} ({wanted})"
        if (attrs.get("Config") or {}).get("Cmd") != OPENVPN_ARGV:
            return f"VPN client runs {attrs.get('Config', {}).get('Cmd')}, this agent runs {OPENVPN_ARGV}"
        # renewal writes here and SIGHUPs openvpn: it must read the same file
        mounts = {m.get("Destination"): m.get("Source") for m in attrs.get("Mounts") or []}
        if mounts.get("/vpn") != str(self.dir):
            return f"VPN client reads its config from {mounts.get('/vpn')}, config wants {self.dir}"
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        for net in (cfg.vpn_client_network, iso_network):
            if net not in networks:
                return f"VPN client is not attached to network {net} (it is on {', '.join(sorted(networks))})"
        try:
            check_ovpn(self.ovpn_path.read_text())
        except OSError as exc:
            return f"the client's config {self.ovpn_path} cannot be read ({exc})"
        except VPNError as exc:
            return f"the client's config on disk is refused ({exc})"
        pid = int(attrs["State"]["Pid"])
        ns = Netns(pid)
        try:
            addrs = ns.ipv4_addresses("tun0").get("tun0") or []
            vpn_ip = next((a.ip for a in addrs if a.ip in cfg.vpn_subnet), None)
            if vpn_ip is None:
                return (f"VPN client's tun0 holds no address in vpn_subnet {cfg.vpn_subnet} "
                        f"(it holds {', '.join(str(a) for a in addrs) or 'none'})")
            iso_if = ns.interface_in(iso_subnet)
            mtu = ns.link_mtu("tun0")
        except NetnsError as exc:
            return f"cannot read the VPN client's namespace ({exc})"
        if iso_if is None:
            return f"VPN client has no interface in the isolated subnet {iso_subnet}"
        if mtu is None:
            return "VPN client's tun0 is gone"
        path = PathMTU(mtu, "adopted", f"tun0's MTU {mtu} as the previous agent left it")
        return VPNState(container.id, pid, str(vpn_ip), networks[iso_network]["IPAddress"], iso_if,
                        rfc3339_time(attrs["State"]["StartedAt"]), path)

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
            OPENVPN_ARGV,
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

    def session(self, since: float | None = None) -> SessionState:
        """The running client's session from its log: the last LOG_TAIL lines, only those
        from `since` (Unix time) on when given. A client with a state had tun0 up, so its
        session completed once even when that line is older than what is read. Raises
        docker.errors.NotFound when the client is gone (is_healthy() then says so too)."""
        if self.state is None:
            return SessionState("starting", None, "no VPN client runs")
        container = self.docker.containers.get(self.state.container_id)
        raw = container.logs(timestamps=True, tail=LOG_TAIL, since=int(since) if since and since >= 1 else None)
        lines = raw.decode(errors="replace").splitlines()
        if since is not None:  # Docker's `since` has whole seconds
            lines = [line for line in lines if (_dated(line)[0] or since) >= since]
        return session_from_log(lines, connected_before=True)

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
