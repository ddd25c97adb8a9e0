"""`vpnagent doctor`: checks, in the order an operator would debug a node, that everything
the agent needs is in place, and says for each failure what to do in one line.

Each check is a small function that returns what it found (the detail of a PASS) or raises
CheckFailed with the detail and the fix. A check names the checks it needs; when one of those
failed (or was skipped because of a failure) it is reported SKIP with the reason instead of
failing again with a confusing message. Facts found by one check (the container runtime and
the data plane on it, the VPN client's pid, the VPN IP) are handed to later ones through the Context.

The self-test wires an echo container into the node's own VPN IP the way a run is wired and
probes it from inside the VPN client. Everything it adds is named so the running agent's
reconcile leaves it alone (chain VA-DOCTOR-*, not VA-<run>-N/F; container role "doctor", not
holder/algorithm), and is removed again in a finally, also on Ctrl-C and SIGTERM.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from . import firewall
from .config import NodeConfig
from .dataplane import DataPlane
from .netns import Netns, NetnsError
from .runtime import EngineError, Runtime, WorkloadSpec
from .tls import short_reason

PASS, FAIL, SKIP, WARN = "pass", "fail", "skip", "warn"
# The Docker release that fixed isolation bugs of internal networks: before 25.0.5 (26.0.0),
# a container on an --internal network could still send DNS queries out through the
# embedded resolver (CVE-2024-29018), a channel out for data the network is meant to keep in.
DOCKER_ISOLATION_FIXED = (25, 0, 5)
TUN_MAJOR, TUN_MINOR = 10, 200
ECHO_PORT = 8888
SELFTEST_ROLE = "doctor"
SELFTEST_CHAIN_PREFIX = "VA-DOCTOR-"  # never matches firewall.RUN_CHAIN_RE: reconcile ignores it
# The self-test port on the VPN IP: outside any port range a node hands to runs is not
# needed (the DNAT sits in nat OUTPUT, which only the VPN client's own sockets traverse, so it
# cannot shadow a run's PREROUTING DNAT), but a fixed high range keeps it recognisable.
SELFTEST_PORTS = (59000, 59999)
# Tests set this to hold the self-test with its wiring in place (cleanup on Ctrl-C, reconcile).
PAUSE_S = float(os.environ.get("VPNAGENT_DOCTOR_PAUSE_S", "0"))

# Tiny line echo server for the self-test container (argv, not a shell string).
ECHO_SERVER = r"""
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(65536)
        self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", %d), H).serve_forever()
""" % ECHO_PORT

# Runs inside a network namespace via nsenter with the host's python: connect, send a nonce
# line, expect it back. Prints "ok <ms>" or the error.
PROBE = r"""
import socket, sys, time
ip, port, nonce = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode() + b"\n"
t0 = time.perf_counter()
try:
    with socket.create_connection((ip, port), timeout=3) as s:
        s.settimeout(3)
        s.sendall(nonce)
        got = s.makefile("rb").readline()
    print(f"ok {(time.perf_counter() - t0) * 1e3:.1f}" if got == nonce else f"bad echo {got[:40]!r}")
except OSError as exc:
    print(f"error {exc}")
"""


class CheckFailed(Exception):
    """A check found a problem: what it found and the one-line fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


class NotApplicable(Exception):
    """The check does not apply to this node's config (reported SKIP, not a failure)."""


class CheckWarning(Exception):
    """The node works, but with a known weakness: reported WARN with the fix, exit code 0."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # PASS, FAIL, WARN or SKIP
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        if self.status == PASS:
            return f"PASS {self.name}" + (f" ({self.detail})" if self.detail else "")
        if self.status in (FAIL, WARN):
            return f"{self.status.upper()} {self.name}: {self.detail} -> fix: {self.fix}"
        return f"SKIP {self.name}: {self.detail}"


@dataclass
class Context:
    """The node config plus what earlier checks found out (for the later ones)."""

    cfg: NodeConfig
    config_path: str = "node.yaml"
    tun_path: Path = Path("/dev/net/tun")
    runtime: Runtime | None = None
    dataplane: DataPlane | None = None
    host_filter: firewall.TableState | None = None
    vpn_pid: int | None = None
    vpn_ip: ipaddress.IPv4Interface | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Context], str]
    needs: tuple[str, ...] = ()


def run_checks(checks: list[Check], ctx: Context) -> list[CheckResult]:
    """Run the checks in order. A check whose dependency failed, or was skipped because of
    a failure, is skipped naming it; a NotApplicable skip does not block dependents."""
    results: list[CheckResult] = []
    blocked: set[str] = set()
    for check in checks:
        missing = [n for n in check.needs if n in blocked]
        if missing:
            results.append(CheckResult(check.name, SKIP, f"needs {', '.join(missing)}"))
            blocked.add(check.name)
            continue
        try:
            results.append(CheckResult(check.name, PASS, check.fn(ctx)))
        except CheckFailed as exc:
            results.append(CheckResult(check.name, FAIL, exc.detail, exc.fix))
            blocked.add(check.name)
        except NotApplicable as exc:
            results.append(CheckResult(check.name, SKIP, f"not applicable: {exc}"))
        except CheckWarning as exc:
            results.append(CheckResult(check.name, WARN, exc.detail, exc.fix))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a broken check must not hide the others
            results.append(CheckResult(check.name, FAIL, f"unexpected {type(exc).__name__}: {exc}",
                                       "this is a bug in the check; run with -v and report it"))
            blocked.add(check.name)
    return results


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def render_text(results: list[CheckResult]) -> str:
    return "\n".join(r.line() for r in results) + "\n"


def render_json(node: str, results: list[CheckResult]) -> str:
    return json.dumps({"node": node, "ok": exit_code(results) == 0,
                       "checks": [asdict(r) for r in results]}, indent=2) + "\n"


# --------------------------------------------------------------------------- host checks
def check_docker(ctx: Context) -> str:
    from .dataplane.openvpn import OpenVPN
    from .runtime import connect_engine

    try:
        runtime = connect_engine(timeout=30)
        version = runtime.version()
    except Exception as exc:  # noqa: BLE001 - EngineError, a bad DOCKER_HOST, ...
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise CheckFailed(f"cannot talk to the Docker engine at {where}: {short_reason(exc)}",
                          "start dockerd (or fix DOCKER_HOST) and run the doctor as root") from None
    ctx.runtime, ctx.dataplane = runtime, OpenVPN(ctx.cfg, runtime, api=None)
    return version


def docker_version(text: str) -> tuple[int, int, int] | None:
    """'20.10.24+dfsg1' -> (20, 10, 24); None when it does not start with a version."""
    parts = text.split("+")[0].split("-")[0].split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
        patch = int("".join(c for c in parts[2] if c.isdigit()) or 0) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        return None
    return major, minor, patch


def isolation_fixed(version: tuple[int, int, int]) -> bool:
    return version >= DOCKER_ISOLATION_FIXED


def check_docker_isolation(ctx: Context) -> str:
    text = ctx.runtime.version()
    version = docker_version(text)
    if version is None:
        raise CheckWarning(f"cannot read the Docker version {text!r}",
                           "make sure the engine is Docker >= 25.0.5 (isolation fixes for internal networks)")
    if not isolation_fixed(version):
        raise CheckWarning(f"Docker {text} predates 25.0.5: containers on internal networks can send DNS queries "
                           "out through Docker's embedded resolver (CVE-2024-29018)",
                           "upgrade the Docker engine to 25.0.5 or later (26.0.0+); vpnagent's firewall does "
                           "not cover that channel")
    return f"Docker {text} has the internal-network isolation fixes"


def check_tun(ctx: Context) -> str:
    path = ctx.tun_path
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckFailed(f"{path}: {exc.strerror}", "mkdir -p /dev/net && mknod /dev/net/tun c 10 200 "
                          "(in a container: run it with --device /dev/net/tun)") from None
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (TUN_MAJOR, TUN_MINOR):
        raise CheckFailed(f"{path} is not the TUN character device 10:200",
                          f"rm {path} && mknod {path} c 10 200")
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        raise CheckFailed(f"{path} cannot be opened: {exc.strerror}",
                          "run as root; when it says 'No such device', load the tun module (modprobe tun)") from None
    return "character device 10:200"


def iptables_backend(version_line: str) -> str | None:
    """'iptables v1.8.9 (nf_tables)' -> 'nf_tables'; 'iptables v1.8.7 (legacy)' -> 'legacy'."""
    if "(" in version_line and version_line.rstrip().endswith(")"):
        return version_line.rsplit("(", 1)[1].rstrip().rstrip(")")
    return None


def check_iptables(ctx: Context) -> str:
    host = Netns(None)
    try:
        version = host.run(["iptables", "-V"]).stdout.strip()
        ctx.host_filter = firewall.parse_save(host.run(["iptables-save", "-t", "filter"]).stdout)
    except NetnsError as exc:
        raise CheckFailed(str(exc), "apt-get install iptables and run the doctor as root") from None
    backend = iptables_backend(version)
    if backend not in ("nf_tables", "legacy"):
        raise CheckFailed(f"unknown iptables backend in {version!r}",
                          "install iptables >= 1.8 (update-alternatives --display iptables shows the choice)")
    return f"{backend}, {version.split(' (')[0]}"


def docker_user_problem(state: firewall.TableState, host_chain: str, agent_running: bool) -> str | None:
    """Why DOCKER-USER cannot carry the node's host exception, or None when it can."""
    if "DOCKER-USER" not in state.chains.get("filter", set()):
        return "the filter table has no DOCKER-USER chain"
    if not agent_running:
        return None
    jump = f"-A DOCKER-USER -j {host_chain}"
    rules = [r for r in state.rules.get("filter", []) if r.startswith("-A DOCKER-USER ")]
    if jump not in rules:
        return f"the running agent's jump DOCKER-USER -> {host_chain} is missing"
    for rule in rules[:rules.index(jump)]:
        if rule.endswith(("-j DROP", "-j REJECT")) or " -j REJECT " in rule:
            return f"a rule before the jump to {host_chain} drops traffic first: {rule}"
    return None


def check_docker_user(ctx: Context) -> str:
    agent_running = bool((_agent_status(ctx.cfg) or {}).get("vpn", {}).get("connected"))
    problem = docker_user_problem(ctx.host_filter, ctx.cfg.host_chain, agent_running)
    if problem is None:
        return f"jump to {ctx.cfg.host_chain} in place" if agent_running else "present; agent not running, no jump to check"
    if "no DOCKER-USER" in problem:
        fix = ("dockerd and the iptables command use different backends or dockerd runs with iptables=false: "
               "make them match (update-alternatives --set iptables /usr/sbin/iptables-nft) and restart dockerd")
    elif "drops traffic first" in problem:
        fix = "move that rule after the vpnagent jump, or make it spare the isolated bridge " + ctx.cfg.bridge_name
    else:
        fix = "the agent restores it within 10 s; if it stays missing, restart `vpnagent run`"
    raise CheckFailed(problem, fix)


# --------------------------------------------------------------------------- server checks
def _server_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def check_server_reachable(ctx: Context) -> str:
    host, port = _server_address(ctx.cfg.server_url)
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        raise CheckFailed(f"no TCP connection to {host}:{port}: {exc.strerror or exc}",
                          f"check server_url ({ctx.cfg.server_url}), that the server runs and that this node "
                          f"may connect to port {port} (firewall, proxy)") from None
    return f"{host}:{port} in {(time.perf_counter() - t0) * 1e3:.0f} ms"


def _session(cfg: NodeConfig):
    from .tls import make_session

    return make_session(cfg.tls_verify, cfg.server_fingerprint)


def check_tls(ctx: Context) -> str:
    import requests

    cfg = ctx.cfg
    if not cfg.server_url.startswith("https://"):
        raise NotApplicable("plain HTTP (allow_insecure_http); use https:// outside local development")
    try:
        resp = _session(cfg).get(f"{cfg.server_url}/health", timeout=10)
    except requests.exceptions.SSLError as exc:
        host, port = _server_address(cfg.server_url)
        try:
            from .tls import format_fingerprint, server_fingerprint

            seen = format_fingerprint(server_fingerprint(host, port))
        except OSError:
            seen = "unknown"
        if cfg.server_fingerprint:
            fix = (f"set server_fingerprint to the one `vpnagent-server serve` prints, if it is {seen} "
                   "(compare it out of band: a mismatch can be an interception)")
        else:
            fix = "set server_ca_file to the server's pki/ca.crt (or server_fingerprint to the printed fingerprint)"
        raise CheckFailed(f"the certificate of {host}:{port} was not accepted ({short_reason(exc)}); "
                          f"it presents SHA-256 {seen}", fix) from None
    except requests.RequestException as exc:
        raise CheckFailed(f"HTTPS request failed: {short_reason(exc)}",
                          "check that server_url points at the vpnagent server's API") from None
    if resp.status_code >= 400:
        raise CheckFailed(f"GET /health answered {resp.status_code}",
                          "server_url must end in the API's base path, e.g. https://host:5000/api")
    how = ["pinned fingerprint" if cfg.server_fingerprint else "",
           f"CA {cfg.server_ca_file.name}" if cfg.server_ca_file else ("" if cfg.server_fingerprint else "system CAs")]
    return "certificate accepted: " + " + ".join(h for h in how if h)


def check_token(ctx: Context) -> str:
    from .serverapi import ServerAPI, ServerError

    api = ServerAPI(ctx.cfg.server_url, ctx.cfg.api_key, timeout=10, session=_session(ctx.cfg))
    try:
        me = api.node_self()
    except ServerError as exc:
        if exc.status in (401, 403):
            raise CheckFailed(f"the server refused the node's API key ({exc.msg})",
                              "join again with a new join string (`vpnagent-server join-token NODE_ID` on "
                              "the server, then `vpnagent join --force`), or put the key `vpnagent-server "
                              "add-node --api-key` printed into api_key; a removed node needs a new node") from None
        raise CheckFailed(str(exc), "see the server's log for the request; check server_url's base path") from None
    ctx.facts["node"] = me
    return f"node id {me.get('id')}, organisation {me.get('organization_id')}"


STREAM_WAIT_S = 5.0  # the server sends its hello at once: anything longer is a buffering proxy


def check_event_stream(ctx: Context) -> str:
    """The event stream through whatever lies between node and server: its first event
    must arrive at once, or a proxy holds the stream back and runs wait for the resync."""
    import requests

    from .push import parse
    from .serverapi import ServerAPI, ServerError

    if not ctx.cfg.push:
        raise NotApplicable("push: false in the node config; the agent polls every poll_interval")
    api = ServerAPI(ctx.cfg.server_url, ctx.cfg.api_key, timeout=10, session=_session(ctx.cfg))
    t0 = time.monotonic()
    try:
        resp = api.open_events(read_timeout=STREAM_WAIT_S)
    except ServerError as exc:
        if exc.status in (404, 405, 501):
            raise CheckWarning(f"the server has no event stream ({exc.msg})",
                               "the agent polls every poll_interval instead; upgrade the server, or set "
                               "api_event_streams above 0 there") from None
        if exc.status == 503:
            raise CheckWarning(f"the server holds as many event streams as it may ({exc.msg})",
                               "the agent retries and works on its resyncs meanwhile; raise api_event_streams on "
                               "the server, or add API workers") from None
        raise CheckFailed(str(exc), "see the server's log for the request") from None
    try:
        first = next(parse(resp.iter_lines(chunk_size=None, decode_unicode=True)), None)
    except (requests.RequestException, OSError):
        first = None
    finally:
        resp.close()
    took = time.monotonic() - t0
    if first is None or first.kind != "hello":
        raise CheckFailed(f"the event stream opened, but its first event did not arrive within {STREAM_WAIT_S:g} s: "
                          "something between this node and the server holds the response back",
                          "turn response buffering off for /api/node/events in the reverse proxy (nginx honours "
                          "the X-Accel-Buffering: no the server sends; others: proxy_buffering off or the like); "
                          "runs still start, at the next resync_interval")
    return f"open; the server's first event arrived after {took * 1000:.0f} ms"


# --------------------------------------------------------------------------- VPN checks
def check_vpn_handshake(ctx: Context) -> str:
    """The tunnel is alive now: the VPN client runs, its tunnel has an address, and the
    VPN server answers through it (the tunnel keeps its address even when the session is
    gone, so an address alone proves nothing)."""
    dp = ctx.dataplane
    name, tun = ctx.cfg.vpn_container, dp.tunnel_if
    run_it = f"vpnagent run --config {ctx.config_path}"
    seen = dp.observe()
    if seen.container is None:
        raise CheckFailed(f"the VPN client container {name} does not exist (agent not running, or running "
                          "without VPN: see `vpnagent status`)", f"start the agent: {run_it}")
    if not seen.container.running:
        raise CheckFailed(f"the VPN client container {name} is {seen.container.status}: {seen.log_tail}",
                          f"read `docker logs {name}`; restart the agent: {run_it}")
    if seen.address is None:
        raise CheckFailed(f"{tun} has no address: the handshake did not complete; {dp.name} says: {seen.log_tail}",
                          f"check that this node reaches the {dp.name} server's host and port (UDP 1194 by default) "
                          "and that its certificate is valid (`docker logs " + name + "`)")
    answered, server_ip, how = dp.server_answers()
    if not answered:
        raise CheckFailed(f"{tun} has {seen.address} but the VPN server {server_ip} does not answer through the "
                          "tunnel (session lost)", f"check that the {dp.name} server runs and is reachable; the agent "
                          "reconnects within 30 s, or restart it: " + run_it)
    ctx.vpn_pid, ctx.vpn_ip = seen.container.pid, seen.address
    return f"{name}: {tun} {seen.address}, server {server_ip} answers in {how}"


def check_vpn_ip(ctx: Context) -> str:
    ip, subnet = ctx.vpn_ip, ctx.cfg.vpn_subnet
    if ip.ip not in subnet:
        raise CheckFailed(f"the tunnel has {ip}, outside vpn_subnet {subnet}",
                          f"set vpn_subnet in the node config to the server's vpn_subnet (the tunnel says {ip.network})")
    status_ip = ((_agent_status(ctx.cfg) or {}).get("vpn") or {}).get("vpn_ip")
    if status_ip and status_ip != str(ip.ip):
        raise CheckFailed(f"the agent reports VPN IP {status_ip} but the tunnel has {ip.ip}",
                          "the agent's health check replaces the client within seconds; if not, restart the agent")
    return f"{ip.ip} in {subnet}"


def check_tunnel_mtu(ctx: Context) -> str:
    """The tunnel size the agent settled on still crosses the path now: a ping of exactly
    that size through the tunnel, don't-fragment set."""
    vpn = (_agent_status(ctx.cfg) or {}).get("vpn") or {}
    size, source = vpn.get("tunnel_mtu"), vpn.get("tunnel_mtu_source")
    if not size:
        raise NotApplicable("the agent has not reported a tunnel MTU (an agent from before this check)")
    answered, server, _ = ctx.dataplane.server_answers(size)
    if not answered:
        raise CheckFailed(f"{size}-byte packets ({source}) no longer cross the tunnel to {server}: the path between "
                          "this node and the OpenVPN server got smaller, or drops what it carried",
                          "restart the agent (it probes the path again at connect), or set tunnel_mtu lower")
    return f"{size} bytes cross the tunnel to {server} ({source}: {vpn.get('tunnel_mtu_detail') or '-'})"


def check_peer_paths(ctx: Context) -> str:
    """On the WireGuard data plane: wg0 is up with the key the server has, and which peers
    are direct and which go through the OpenVPN hub (a relayed peer works, only slower)."""
    from .dataplane.wireguard import KEY_FILE, SESSION_S, WG_IF, parse_dump, read_public_key
    from .serverapi import ServerAPI, ServerError

    api = ServerAPI(ctx.cfg.server_url, ctx.cfg.api_key, timeout=10, session=_session(ctx.cfg))
    try:
        view = api.wireguard()
    except ServerError as exc:
        if exc.status in (404, 405):
            raise NotApplicable("the server has no WireGuard data plane (an older server): OpenVPN hub only") from None
        raise CheckFailed(str(exc), "see the server's log for the request") from None
    if view.get("data_plane") != "wireguard":
        return "OpenVPN hub: this node's collaboration sends every peer's traffic through the server"
    key_path = ctx.cfg.data_dir / "vpn" / KEY_FILE
    if view.get("public_key") and view["public_key"] != read_public_key(key_path):
        raise CheckFailed(f"the server has another WireGuard key for this node than {key_path}: peers would drop "
                          "its packets", "restart the agent: it registers its key again")
    shown = Netns(ctx.vpn_pid).run(["wg", "show", WG_IF, "dump"], check=False, mount=True)
    if shown.returncode != 0:
        return (f"WireGuard plane; {WG_IF} is not up (it is made when this node has a run with peers); "
                "until then every peer goes through the OpenVPN hub")
    _, peers = parse_dump(shown.stdout)
    now = time.time()
    direct = {k for k, p in peers.items() if p.latest_handshake and now - p.latest_handshake < SESSION_S}
    agent = {p.get("vpn_ip"): p for p in (((_agent_status(ctx.cfg) or {}).get("data_plane") or {}).get("peers") or [])}
    relayed = sorted(f"{ip} ({p.get('detail')})" for ip, p in agent.items() if p.get("path") != "direct")
    summary = f"WireGuard plane: {len(direct)} of {len(peers)} peer(s) with a live direct session"
    if relayed:
        raise CheckWarning(f"{summary}; through the OpenVPN hub: {'; '.join(relayed)}",
                           f"they still work, slower; for direct paths let UDP {ctx.cfg.wireguard_port} (wireguard_port) "
                           "reach this node's VPN client from the peers (e.g. a port forward, with its public "
                           "address in wireguard_endpoints)")
    return summary


# --------------------------------------------------------------------------- self-test
def check_self_test(ctx: Context) -> str:
    """An echo container on the isolated network, reachable at VPN_IP:port through a DNAT in
    the VPN client's namespace (like a run's), probed from inside that namespace."""
    cfg, vpn_ip, runtime = ctx.cfg, str(ctx.vpn_ip.ip), ctx.runtime
    vpn_c = runtime.inspect(cfg.vpn_container)
    if runtime.network(cfg.isolated_network) is None:
        raise CheckFailed(f"the isolated network {cfg.isolated_network} does not exist",
                          f"start the agent: vpnagent run --config {ctx.config_path}")
    iso_ip = vpn_c.networks.get(cfg.isolated_network) if vpn_c else None
    if not iso_ip:
        raise CheckFailed(f"the VPN client is not attached to {cfg.isolated_network}",
                          "restart the agent; it attaches the VPN client at start")
    token = secrets.token_hex(3)
    chain = f"{SELFTEST_CHAIN_PREFIX}{token}"
    port = SELFTEST_PORTS[0] + secrets.randbelow(SELFTEST_PORTS[1] - SELFTEST_PORTS[0] + 1)
    vpn_ns = Netns(ctx.vpn_pid)
    echo = None
    wired = False
    try:
        name = f"vpnagent-{cfg.name}-doctor-{token}"
        try:
            echo = runtime.start_holder(WorkloadSpec(
                name=name, image=cfg.holder_image, command=("python3", "-c", ECHO_SERVER),
                network=cfg.isolated_network,
                labels={**cfg.labels, "vpnagent.node": cfg.name, "vpnagent.role": SELFTEST_ROLE}))
        except EngineError as exc:
            runtime.remove(name)  # created but not started (e.g. no python3 in the image)
            raise CheckFailed(f"the echo container did not start from {cfg.holder_image}: {str(exc)[:200]}",
                              "holder_image needs python3: `vpnagent images build` (or fix holder_image)") from None
        if not echo.running:
            raise CheckFailed(f"the echo container exited at once: {_log_tail(runtime, echo.id)}",
                              "holder_image needs python3: `vpnagent images build` (or fix holder_image)")
        echo_ip = echo.networks[cfg.isolated_network]
        echo_ns = Netns(echo.pid)
        echo_ns.set_default_route(iso_ip)  # as for a run's holder: replies go back via the VPN client
        _wait_listening(echo_ns, runtime, echo.id)
        vpn_ns.iptables_restore(render_selftest(chain, vpn_ip, port, echo_ip, present=True))
        wired = True
        if PAUSE_S:
            time.sleep(PAUSE_S)
        out = _probe(vpn_ns, vpn_ip, port)
        if not out.startswith("ok"):
            raise CheckFailed(f"{vpn_ip}:{port} -> echo container {echo_ip}:{ECHO_PORT} from inside the VPN "
                              f"client: {out}", f"run `vpnagent status` for reconcile corrections; check the host "
                              f"exception {cfg.host_chain} and `sysctl net.bridge` settings, then restart the agent")
        return f"{vpn_ip}:{port} -> echo {echo_ip}:{ECHO_PORT} round trip {out.split()[1]} ms"
    finally:
        if wired:
            try:
                vpn_ns.iptables_restore(render_selftest(chain, vpn_ip, port, "", present=False))
            except NetnsError:
                pass  # the VPN client was replaced meanwhile: its namespace, and our rules, are gone
        if echo is not None:
            runtime.remove(echo.id)


def render_selftest(chain: str, vpn_ip: str, port: int, echo_ip: str, present: bool) -> str:
    """The self-test's DNAT as one batch (or its removal). In nat OUTPUT: the probe is sent
    by the VPN client's own namespace, whose packets do not pass PREROUTING."""
    firewall._check(chain, vpn_ip, *([echo_ip] if present else []))  # Docker's values go into a rule
    jump = f"OUTPUT -d {vpn_ip}/32 -p tcp -m tcp --dport {int(port)} -j {chain}"
    if present:
        body = [f":{chain} - [0:0]",
                f"-A {chain} -d {vpn_ip}/32 -p tcp -m tcp --dport {int(port)} "
                f"-j DNAT --to-destination {echo_ip}:{ECHO_PORT}", f"-A {jump}"]
    else:
        body = [f"-D {jump}", f":{chain} - [0:0]", f"-X {chain}"]
    return "\n".join(["*nat", *body, "COMMIT"]) + "\n"


def _wait_listening(ns: Netns, runtime: Runtime, container_id: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = _probe(ns, "127.0.0.1", ECHO_PORT)
        if out.startswith("ok"):
            return
        found = runtime.inspect(container_id)
        if found is None or not found.running:
            break
        time.sleep(0.1)
    raise CheckFailed(f"the echo container did not serve port {ECHO_PORT} ({out}): {_log_tail(runtime, container_id)}",
                      "holder_image needs python3: `vpnagent images build` (or fix holder_image)")


def _probe(ns: Netns, ip: str, port: int) -> str:
    try:
        proc = ns.run([sys.executable, "-c", PROBE, ip, str(port), secrets.token_hex(8)], check=False)
    except subprocess.TimeoutExpired:
        return "error probe timed out"
    return (proc.stdout.strip() or proc.stderr.strip() or "error no output")[-300:]


# --------------------------------------------------------------------------- helpers
def _agent_status(cfg: NodeConfig) -> dict | None:
    try:
        return json.loads((cfg.data_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None


def _log_tail(runtime: Runtime, container_id: str) -> str:
    try:
        tail = runtime.logs(container_id, tail=6).decode(errors="replace").strip().replace("\n", " | ")
    except EngineError:  # the logs are a hint only
        return "(no logs)"
    return tail[-400:] or "(no output)"


CHECKS: list[Check] = [
    Check("docker reachable", check_docker),
    Check("/dev/net/tun", check_tun),
    Check("iptables backend", check_iptables),
    Check("DOCKER-USER chain", check_docker_user, needs=("iptables backend",)),
    Check("docker isolation fixes", check_docker_isolation, needs=("docker reachable",)),
    Check("server reachable", check_server_reachable),
    Check("server TLS valid", check_tls, needs=("server reachable",)),
    Check("token valid", check_token, needs=("server TLS valid",)),
    Check("event stream", check_event_stream, needs=("token valid",)),
    Check("VPN handshake", check_vpn_handshake, needs=("docker reachable",)),
    Check("own VPN IP in vpn_subnet", check_vpn_ip, needs=("VPN handshake",)),
    Check("tunnel MTU", check_tunnel_mtu, needs=("VPN handshake",)),
    Check("peer paths", check_peer_paths, needs=("VPN handshake", "token valid")),
    Check("self-test", check_self_test, needs=("own VPN IP in vpn_subnet", "DOCKER-USER chain")),
]


def diagnose(cfg: NodeConfig, config_path: str = "node.yaml", checks: list[Check] | None = None) -> list[CheckResult]:
    """Run every check for this node; the results in order."""
    return run_checks(checks or CHECKS, Context(cfg, config_path=config_path))
