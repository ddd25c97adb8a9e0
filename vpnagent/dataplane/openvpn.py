"""The OpenVPN data plane: the node's OpenVPN client container. Start it from an .ovpn,
wait for tun0, and the start-up path (config on disk → renew → fetch → no VPN) that gets
the node connected; adopt the client a previous agent left running; tell from openvpn's log
whether its session is up. Containers go through the runtime seam; nothing here imports a
container engine."""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from datetime import datetime

from .. import ovpncheck
from ..config import NodeConfig
from ..netns import Netns, NetnsError
from ..runtime import Container, EngineError, Mount, Network, NotFound, Runtime, WorkloadSpec, rfc3339_time
from ..serverapi import ServerAPI, ServerError
from . import Observed, SessionState, Tunnel, TunnelCounters, VPNError, pathmtu, read_counters
from .pathmtu import PathMTU
from .wireguard import WG_IF, Peer, PeerLinks, WireGuardError

log = logging.getLogger(__name__)

FAIL_CLOSED = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"
# the client's command line; adopt() compares a running client's with it (an upgrade that
# changes it wants a new client)
OPENVPN_ARGV = ["openvpn", "--config", "/vpn/client.ovpn", "--pull-filter", "ignore", "route-ipv6",
                "--pull-filter", "ignore", "ifconfig-ipv6"]
LOG_TAIL = 200  # lines session() reads: a reconnect loop writes ~6 lines per attempt


TUN = "tun0"
ROLE = "vpn-client"  # its vpnagent.role label


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


class OpenVPN:
    """The DataPlane on OpenVPN: one client container per node, its config in data_dir/vpn."""

    name = "OpenVPN"
    tunnel_if = TUN

    def __init__(self, cfg: NodeConfig, runtime: Runtime, api: ServerAPI | None) -> None:
        """`api` None: observe only (the doctor); bring_up and renewal need the server."""
        self.cfg = cfg
        self.runtime = runtime
        self.api = api
        self.dir = cfg.data_dir / "vpn"
        self.ovpn_path = self.dir / "client.ovpn"
        self.state: Tunnel | None = None
        self.last_error: str | None = None
        self.cert_expires: float | None = None  # of the config on disk (Unix time)
        self.renewals = 0
        self._session_mark: tuple[str, float, int] | None = None  # (client, log read up to, renewals)
        # the WireGuard data plane's direct links, in this client's namespace (wireguard.py)
        self.plane = "openvpn"
        self.links = PeerLinks(self.dir, cfg.wireguard_port, cfg.wireguard_mtu)
        self._registered: tuple[str, str, int, tuple[str, ...]] | None = None  # (client, key, port, endpoints)

    # --- start-up state machine
    def bring_up(self, network: Network) -> Tunnel | None:
        """Existing config → renew it → fetch a new one → run without VPN (and say why)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        steps = []
        if self.ovpn_path.exists():
            steps.append(("config on disk", lambda: self.ovpn_path.read_text()))
            steps.append(("renewed config (POST /vpn/update)", self._renewed))
        if self.api is not None:
            steps.append(("fresh config (GET /vpn)", self.api.get_vpn_config))
        errors = []
        for what, get_config in steps:
            try:
                text = get_config()
                check_ovpn(text)
                self._write(text)
                log.info("vpn: starting client with the %s", what)
                self.state = self._start(network)
                self.last_error = None
                log.info("vpn: connected, VPN IP %s", self.state.vpn_ip)
                return self.state
            except (VPNError, ServerError, OSError, EngineError) as exc:
                log.warning("vpn: %s did not work: %s", what, exc)
                errors.append(f"{what}: {exc}")
        self.stop()
        self.last_error = "; ".join(errors)
        log.error("vpn: running WITHOUT VPN; algorithms get no VPN ports. Reasons: %s", self.last_error)
        return None

    def adopt(self, network: Network) -> Tunnel | None:
        """Take over the client a previous agent left running (it was killed or upgraded),
        so the node's tunnels and the rules in its namespace survive. Only a client exactly
        as bring_up() would start it now is adopted; nothing in it is changed (tun0's MTU is
        read, not probed). None, with the reason logged: the caller then calls bring_up(),
        which replaces the client."""
        name = self.cfg.vpn_container
        try:
            container = self.runtime.inspect(name)
        except EngineError as exc:
            log.info("vpn: cannot inspect the VPN client container %s (%s): replacing it", name, exc)
            return None
        if container is None:
            log.info("vpn: no VPN client container %s to adopt", name)
            return None
        found = self._adoptable(container, network)
        if isinstance(found, str):
            log.info("vpn: %s: replacing it", found)
            return None
        self.state = found
        self.links.forget()  # set_peers takes over a wg0 left in it, as it is
        self.cert_expires = cert_not_after(self.ovpn_path.read_text())
        self.last_error = None
        log.info("vpn: adopted the running client %s (VPN IP %s, up since %s, tunnel MTU %d as it was left)",
                 self.cfg.vpn_container, found.vpn_ip,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.since)), found.path.mtu)
        return found

    def _adoptable(self, container: Container, network: Network) -> Tunnel | str:
        """The client's state, or why it cannot be adopted. Reads only."""
        cfg, name = self.cfg, self.cfg.vpn_container
        labels = container.labels
        if labels.get("vpnagent.role") != ROLE or labels.get("vpnagent.node") != cfg.name:
            return (f"container {name} is not labelled as node {cfg.name}'s VPN client "
                    f"(vpnagent.role={labels.get('vpnagent.role')}, vpnagent.node={labels.get('vpnagent.node')})")
        if not container.running:
            return f"VPN client {name} is {container.status}, not running"
        wanted = self.runtime.image(cfg.vpn_image)
        if wanted is None:
            return f"config wants image {cfg.vpn_image}, which is not on this host (vpnagent images build)"
        if container.image_id != wanted.id:
            return f"VPN client runs image {container.image_id}, config wants {cfg.vpn_image} ({wanted.id})"
        if list(container.command) != OPENVPN_ARGV:
            return f"VPN client runs {list(container.command)}, this agent runs {OPENVPN_ARGV}"
        # renewal writes here and SIGHUPs openvpn: it must read the same file
        if container.mounts.get("/vpn") != str(self.dir):
            return f"VPN client reads its config from {container.mounts.get('/vpn')}, config wants {self.dir}"
        for net in (cfg.vpn_client_network, network.name):
            if net not in container.networks:
                return (f"VPN client is not attached to network {net} "
                        f"(it is on {', '.join(sorted(container.networks))})")
        try:
            check_ovpn(self.ovpn_path.read_text())
        except OSError as exc:
            return f"the client's config {self.ovpn_path} cannot be read ({exc})"
        except VPNError as exc:
            return f"the client's config on disk is refused ({exc})"
        ns = Netns(container.pid)
        try:
            addrs = ns.ipv4_addresses(TUN).get(TUN) or []
            vpn_ip = next((a.ip for a in addrs if a.ip in cfg.vpn_subnet), None)
            if vpn_ip is None:
                return (f"VPN client's tun0 holds no address in vpn_subnet {cfg.vpn_subnet} "
                        f"(it holds {', '.join(str(a) for a in addrs) or 'none'})")
            iso_if = ns.interface_in(ipaddress.IPv4Network(network.subnet))
            mtu = ns.link_mtu(TUN)
        except NetnsError as exc:
            return f"cannot read the VPN client's namespace ({exc})"
        if iso_if is None:
            return f"VPN client has no interface in the isolated subnet {network.subnet}"
        if mtu is None:
            return "VPN client's tun0 is gone"
        path = PathMTU(mtu, "adopted", f"tun0's MTU {mtu} as the previous agent left it")
        return Tunnel(container.id, container.pid, str(vpn_ip), container.networks[network.name], iso_if,
                      container.started_at or time.time(), path)

    def _renewed(self) -> str:
        if self.api is None:
            raise VPNError("no server API to renew the certificate with")
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
        since = int(time.time())
        done_before = self._sessions(since)
        self._write(text)
        t0 = time.monotonic()
        self.runtime.kill(self.state.container_id, "SIGHUP")
        while time.monotonic() - t0 < timeout:
            if self._sessions(since) > done_before:
                self.renewals += 1
                return time.monotonic() - t0
            time.sleep(0.05)
        raise VPNError(f"openvpn did not reconnect within {timeout:.0f} s after the certificate renewal")

    # --- the container
    def _spec(self) -> WorkloadSpec:
        return WorkloadSpec(
            name=self.cfg.vpn_container, image=self.cfg.vpn_image, command=tuple(OPENVPN_ARGV),
            network=self.cfg.vpn_client_network, cap_add=("NET_ADMIN",), cap_drop=(),
            # rp_filter loose: on the WireGuard plane a peer may reach this node direct while
            # this node's route back to it still goes through the hub (each side decides alone)
            devices=("/dev/net/tun",), sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "2"},
            mounts=(Mount(str(self.dir), "/vpn", read_only=True),),
            # No restart policy: a client the engine restarted would come back with a new namespace
            # and no rules (forwarding open) until the agent noticed; the agent replaces a dead
            # client itself, closed first, and while the agent is down it stays down (closed).
            labels={**self.cfg.labels, "vpnagent.node": self.cfg.name, "vpnagent.role": ROLE},
        )

    def _start(self, network: Network) -> Tunnel:
        self.stop()
        self.links.forget()
        container = self.runtime.start_holder(self._spec())
        ns = Netns(container.pid)
        # Fail closed: forwarding policy DROP before the client joins the isolated network,
        # so no holder's packet is forwarded before the rules are in.
        ns.iptables_restore(FAIL_CLOSED)
        self.runtime.connect(network.name, container.id)
        vpn_ip = self._wait_for_tun(container.id, ns)
        found = self.runtime.inspect(container.id)
        iso_ip = found.networks.get(network.name, "") if found else ""
        iso_if = ns.interface_in(ipaddress.IPv4Network(network.subnet))
        if iso_if is None or not iso_ip:
            raise VPNError(f"VPN client has no interface on the isolated network {network.name}")
        path = pathmtu.settle(ns, self.cfg.tunnel_mtu, TUN)
        pathmtu.apply_link_mtu(ns, path, TUN)
        self._session_mark = None
        return Tunnel(container.id, container.pid, vpn_ip, iso_ip, iso_if, time.time(), path)

    def _wait_for_tun(self, container_id: str, ns: Netns) -> str:
        """Poll tun0 every 20 ms (it is usually up within ~200 ms), bounded by the timeout."""
        deadline = time.monotonic() + self.cfg.vpn_connect_timeout
        checks = 0
        while time.monotonic() < deadline:
            addrs = ns.ipv4_addresses(TUN).get(TUN)
            if addrs:
                ip = addrs[0].ip
                if ip not in self.cfg.vpn_subnet:
                    raise VPNError(f"VPN IP {ip} is outside vpn_subnet {self.cfg.vpn_subnet}; "
                                   "the server and node disagree on the VPN subnet")
                return str(ip)
            checks += 1
            if checks % 25 == 0:
                found = self.runtime.inspect(container_id)
                if found is None or found.status not in ("running", "created", "restarting"):
                    break
            time.sleep(0.02)
        raise VPNError(f"tun0 did not come up within {self.cfg.vpn_connect_timeout:.0f} s; "
                       f"openvpn says: {self._log_tail(container_id, 8, 600)}")

    def _log_tail(self, container_id: str, lines: int, chars: int) -> str:
        try:
            tail = self.runtime.logs(container_id, tail=lines).decode(errors="replace")
        except EngineError:
            return "(no logs)"
        return tail.strip().replace("\n", " | ")[-chars:] or "(no output)"

    def stop(self) -> None:
        """SIGTERM first, so openvpn says goodbye to the server (explicit-exit-notify)."""
        found = self.runtime.inspect(self.cfg.vpn_container)
        if found is not None:
            if found.running:
                try:
                    self.runtime.stop(found.id, timeout=3)
                except NotFound:
                    pass
            self.runtime.remove(found.id)
        self.state = None
        self.links.forget()

    # --- direct links (the WireGuard data plane)
    @property
    def peer_if(self) -> str | None:
        return WG_IF if self.links.is_up else None

    @property
    def peer_mss(self) -> int | None:
        return self.cfg.wireguard_mtu - 40  # IPv4 and TCP headers

    def set_peers(self, plane: str, peers: list[Peer]) -> None:
        if plane != self.plane:
            log.info("vpn: the server puts this node's collaboration on the %s data plane", plane)
            self.plane = plane
        if plane != "wireguard" or self.state is None:
            if self.links.is_up:
                self.links.down()
                log.info("wireguard: direct links removed; every peer through the OpenVPN hub")
            return
        try:
            if self.links.pid != self.state.pid:
                self.links.up(self.state.pid, self.state.vpn_ip)
            self._register()
            self.links.set_peers(peers)
        except WireGuardError as exc:
            log.error("wireguard: %s; every peer goes through the OpenVPN hub", exc)
            self.links.forget()

    def _register(self) -> None:
        """The server needs this node's public key and where it may be reached: the
        configured endpoints, then the client's own addresses outside the tunnel (the
        server adds the address it sees requests come from). Sent once per client container:
        only a new one has a new address (set_peers runs on every peers event)."""
        if self.state is None or self.api is None or (self._registered or ("",))[0] == self.state.container_id:
            return
        found = self.runtime.inspect(self.state.container_id)
        outside = found.networks.get(self.cfg.vpn_client_network) if found else None
        own = [f"{outside}:{self.cfg.wireguard_port}"] if outside else []
        endpoints = tuple(dict.fromkeys([*self.cfg.wireguard_endpoints, *own]))[:8]
        key = self.links.public_key()
        view = self.api.register_wireguard(key, self.cfg.wireguard_port, list(endpoints))
        self._registered = (self.state.container_id, key, self.cfg.wireguard_port, endpoints)
        log.info("wireguard: registered key %s… and endpoint(s) %s at the server (it sees %s)",
                 key[:8], ", ".join(endpoints) or "none", view.get("seen") or "no public address")

    def refresh_peers(self) -> bool:
        if not self.links.is_up:
            return self.plane != "wireguard" or self.state is None
        if not self.links.wanted:  # set_peers([]) removed every peer already: nothing to watch
            return True
        try:
            self.links.refresh()
            return True
        except WireGuardError as exc:
            log.warning("wireguard: %s; making the links again", exc)
            self.links.forget()
            return False

    def peer_summary(self) -> dict:
        return {"plane": self.plane, **self.links.summary()}

    # --- what the log says
    def _sessions(self, since: float, until: float | None = None) -> int:
        """How often the running client's openvpn finished connecting between `since` and
        `until` (Unix time), from its log: persist-tun hides a reconnect from tun0."""
        if self.state is None:
            return 0
        return self.runtime.logs(self.state.container_id, since=since, until=until).count(COMPLETED.encode())

    def reconnects(self) -> int:
        """OpenVPN re-establishing its session inside a running client (the server restarted,
        the link dropped) keeps tun0 and its address (persist-tun), so the health check does
        not see it; the client's log does, one "Initialization Sequence Completed" each."""
        st = self.state
        if st is None:
            return 0
        now = time.time()
        mark, self._session_mark = self._session_mark, (st.container_id, now, self.renewals)
        if mark is None or mark[0] != st.container_id:
            return 0  # a new client: its first session is the connect itself, not a reconnect
        try:
            sessions = self._sessions(since=mark[1], until=now)
        except EngineError as exc:
            log.debug("vpn: could not read the client's log: %s", exc)
            return 0
        # a certificate renewal's SIGHUP reconnect was planned, not a loss of the VPN
        return max(0, sessions - (self.renewals - mark[2]))

    def session(self, since: float | None = None) -> SessionState:
        """The running client's session from its log: the last LOG_TAIL lines, only those
        from `since` (Unix time) on when given. A client with a state had tun0 up, so its
        session completed once even when that line is older than what is read. Raises
        NotFound when the client is gone (healthy() then says so too)."""
        if self.state is None:
            return SessionState("starting", None, "no VPN client runs")
        raw = self.runtime.logs(self.state.container_id, timestamps=True, tail=LOG_TAIL,
                                since=int(since) if since and since >= 1 else None)
        lines = raw.decode(errors="replace").splitlines()
        if since is not None:  # the engine's `since` has whole seconds
            lines = [line for line in lines if (_dated(line)[0] or since) >= since]
        return session_from_log(lines, connected_before=True)

    def healthy(self) -> bool:
        """The container runs with the same pid and tun0 still holds our VPN IP."""
        if self.state is None:
            return False
        found = self.runtime.inspect(self.state.container_id)
        if found is None or not found.running or found.pid != self.state.pid:
            return False
        addrs = Netns(self.state.pid).ipv4_addresses(TUN).get(TUN) or []
        return any(str(a.ip) == self.state.vpn_ip for a in addrs)

    def counters(self) -> TunnelCounters | None:
        """None too when the client's process is gone."""
        return read_counters(self.state.pid, TUN) if self.state else None

    # --- for the doctor (no agent state: another process may run the agent)
    def observe(self) -> Observed:
        found = self.runtime.inspect(self.cfg.vpn_container)
        if found is None:
            return Observed(None, None, "")
        address = None
        if found.running:
            address = next(iter(Netns(found.pid).ipv4_addresses(TUN).get(TUN) or []), None)
        return Observed(found, address, self._log_tail(found.id, 6, 400))

    def server_answers(self, size: int | None = None) -> tuple[bool, str, str]:
        found = self.runtime.inspect(self.cfg.vpn_container)
        if found is None or not found.running:
            return False, "", "the VPN client does not run"
        ns = Netns(found.pid)
        if size is None:
            address = next(iter(ns.ipv4_addresses(TUN).get(TUN) or []), None)
            if address is None:
                return False, "", "tun0 has no address"
            server = str(next(address.network.hosts()))  # topology subnet: the server holds the first address
            for _ in range(3):
                ping = ns.run(["ping", "-c", "1", "-W", "2", "-n", server], check=False)
                if ping.returncode == 0:
                    rtt = next((w.split("=", 1)[1] for w in ping.stdout.split() if w.startswith("time=")), "?")
                    return True, server, f"{rtt} ms"
            return False, server, "no answer to 3 pings (session lost)"
        server, _ = pathmtu.tunnel_server(ns, TUN)
        ping = ns.run(["ping", *pathmtu.PING_ARGS, "-s", str(size - pathmtu.IP_ICMP_HEADERS), server], check=False)
        return ping.returncode == 0, server, (ping.stdout.strip() or ping.stderr.strip())[-200:]
