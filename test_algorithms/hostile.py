"""The hostile algorithm: an ordinary algorithm container, with its own ordinary token, whose
job is to break out. It tries every path out it knows of and reports each attempt:

    {"attack": <name>, "target": <what it tried>, "expect": "blocked" | "ok",
     "outcome": "blocked" | "ESCAPED" | "ok" | "FAILED", "detail": <what happened>}

"expect": "blocked" is an attack: it must end "blocked" ("ESCAPED" is a hole). "expect": "ok"
is a positive control beside the attacks (its own task's peers, its own address through the
VPN, its own node proxy): it must end "ok" ("FAILED" means the probe itself is broken, so
the attacks' "blocked" would prove nothing).

Adding an attack is one function decorated with @attack: it gets the Context (the client,
the hints the test passes, helpers) and returns its attempts. Methods (input "method"):
- "attack": start the own-family controls (child runs at this node and another), reach them
  and the other controls, run every attack, return the attempts;
- "serve": a child of "attack": serve the echo port until the parent reached it;
- "output": leave a trick in place of the output file (symlink, FIFO, huge sparse file,
  directory) and exit 0: the node must fail the run with a reason, and read nothing else.
Standard library only (plus iproute2 of the algorithm base image).
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from test_algorithms.echo import ECHO_PORT, EchoServer, probe, wait_for_org_addresses
from vpnagent.algorithm_client import AlgorithmClient, AlgorithmClientError

HOSTILE_IMAGE = "vpnagent/hostile:latest"
# Built like the echo image (vpnagent.runtime.docker_images.build_algorithm_image): these files under /app.
# vpnagent/algorithm_client.py finds the client package in /app/clients/python (PYTHONPATH is /app).
FILES: tuple[str, ...] = ("vpnagent/__init__.py", "vpnagent/algorithm_client.py",
                          "clients/python/vpnagent_algorithm/__init__.py",
                          "clients/python/vpnagent_algorithm/client.py",
                          "clients/python/vpnagent_algorithm/environment.py",
                          "clients/python/vpnagent_algorithm/errors.py",
                          "clients/python/vpnagent_algorithm/mock.py",
                          "test_algorithms/__init__.py", "test_algorithms/echo.py", "test_algorithms/hostile.py")
DOCKERFILE = """\
FROM vpnagent/algo-base:latest
COPY app/ /app/
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1
WORKDIR /app
EXPOSE 8888
LABEL p8888=echo
CMD ["python3", "-m", "test_algorithms.hostile"]
"""
CONNECT_TIMEOUT_S = 2.0
SCAN_HOSTS = 48  # own /24 of the isolated network, first addresses (where Docker puts containers)


def _log(msg: str) -> None:
    print(f"[hostile {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Context:
    client: AlgorithmClient
    hints: dict[str, Any]  # what the test knows about the machine (an attacker who knows everything)
    own_ip: str = ""
    gateway: str = ""
    children: dict[int, dict] = field(default_factory=dict)  # org id -> own child's VPN address


Attempt = dict[str, Any]
ATTACKS: dict[str, Callable[[Context], list[Attempt]]] = {}


def attack(fn: Callable[[Context], list[Attempt]]) -> Callable[[Context], list[Attempt]]:
    ATTACKS[fn.__name__] = fn
    return fn


def _attempt(name: str, target: str, expect: str, escaped: bool, detail: str) -> Attempt:
    if expect == "ok":
        outcome = "ok" if escaped else "FAILED"
    else:
        outcome = "ESCAPED" if escaped else "blocked"
    return {"attack": name, "target": target, "expect": expect, "outcome": outcome, "detail": detail[:300]}


def tcp(ip: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> tuple[bool, str]:
    """(connected?, what happened). A refused connection also proves a packet got there, but
    only a completed connection counts as reaching a service."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((ip, int(port)))
            return True, "connected"
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"


def connect_all(name: str, targets: list[tuple[str, str, int]], expect: str = "blocked") -> list[Attempt]:
    """TCP connects to (label, ip, port) targets, concurrently (each bounded by the timeout)."""
    out: list[Attempt | None] = [None] * len(targets)

    def one(i: int, label: str, ip: str, port: int) -> None:
        ok, detail = tcp(ip, port)
        out[i] = _attempt(name, f"{label} {ip}:{port}", expect, ok, detail)

    threads = [threading.Thread(target=one, args=(i, *t), daemon=True) for i, t in enumerate(targets[:600])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CONNECT_TIMEOUT_S + 5)
    return [a for a in out if a is not None]


# --------------------------------------------------------------------------- attacks
@attack
def same_node_runs_over_the_bridge(ctx: Context) -> list[Attempt]:
    """Other runs on this node, straight over the isolated bridge: the holder addresses the
    test names, and a scan of the own /24 (Docker hands out addresses from the bottom)."""
    hinted = [(f"holder of run {h['run_id']}", h["ip"], h.get("port", ECHO_PORT))
              for h in ctx.hints.get("same_node_holders", [])]
    net = ipaddress.IPv4Network(f"{ctx.own_ip}/24", strict=False)
    skip = {ctx.own_ip, ctx.gateway, ctx.hints.get("vpn_client_iso_ip", "")} | {h[1] for h in hinted}
    scanned = [("scanned address", str(ip), ECHO_PORT) for ip in list(net.hosts())[:SCAN_HOSTS] if str(ip) not in skip]
    return connect_all("same_node_runs_over_the_bridge", hinted + scanned)


@attack
def same_node_runs_by_docker_dns_name(ctx: Context) -> list[Attempt]:
    """Docker's embedded DNS resolves container names on a user-defined network: find the
    other runs' holders by name, then connect. Only names that exist are asked (Docker
    answers them itself): an unknown name would be forwarded to the host's resolvers, and
    the test sends nothing off this machine."""
    out = []
    for name in dict.fromkeys(ctx.hints.get("holder_names", [])):
        try:
            ip = socket.getaddrinfo(name, ECHO_PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except OSError as exc:
            out.append(_attempt("same_node_runs_by_docker_dns_name", name, "blocked", False, f"not resolved: {exc}"))
            continue
        ok, detail = tcp(ip, ECHO_PORT)
        out.append(_attempt("same_node_runs_by_docker_dns_name", f"{name} -> {ip}:{ECHO_PORT}", "blocked", ok, detail))
    return out


@attack
def other_tasks_over_the_vpn(ctx: Context) -> list[Attempt]:
    """Another task's runs, at their VPN address and port, on this node (hairpin) and others;
    and the ports of the node ranges that no run holds."""
    targets = [(f"run {t['run_id']} of another task", t["ip"], t["port"]) for t in ctx.hints.get("other_task_ports", [])]
    targets += [(f"node VPN IP, port {p}", ip, p) for ip in ctx.hints.get("node_vpn_ips", []) for p in (22, 8765, 1194)]
    return connect_all("other_tasks_over_the_vpn", targets)


@attack
def node_host_services(ctx: Context) -> list[Attempt]:
    """The node host from its bridge: a service the test listens with on all addresses, the
    agent's metrics port, the server's API port, ssh; every port but the node proxy's."""
    ports = [22, *ctx.hints.get("host_ports", [])]
    return connect_all("node_host_services", [("node host", ctx.gateway, p) for p in ports])


@attack
def other_nodes_proxies_and_bridges(ctx: Context) -> list[Attempt]:
    targets = [(f"node proxy of {name}", ip, ctx.hints.get("proxy_port", 8765))
               for name, ip in ctx.hints.get("other_gateways", {}).items()]
    return connect_all("other_nodes_proxies_and_bridges", targets)


@attack
def openvpn_server(ctx: Context) -> list[Attempt]:
    targets = [("OpenVPN server", ip, p) for ip in ctx.hints.get("openvpn_ips", [])
               for p in (1194, 443, *ctx.hints.get("host_ports", []))]
    return connect_all("openvpn_server", targets)


@attack
def vpn_client_container(ctx: Context) -> list[Attempt]:
    """The node's VPN client on the bridge: nothing may open a connection to it."""
    ip = ctx.hints.get("vpn_client_iso_ip")
    return connect_all("vpn_client_container", [("VPN client", ip, p) for p in (22, 53, 1194, 8888)]) if ip else []


def udp(ip: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> tuple[bool, str]:
    """(answered?, what happened): one datagram, and a wait for any reply."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"hostile canary probe", (ip, int(port)))
            data, src = s.recvfrom(2048)
            return True, f"answered from {src[0]}:{src[1]}: {data[:40]!r}"
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"


@attack
def udp_across_the_tunnels(ctx: Context) -> list[Attempt]:
    """UDP to UDP echo canaries the test runs inside other runs' namespaces, at their node's
    VPN address and forwarded port (over tun0, or wg0 on the WireGuard plane) and at their
    holder address on this node's bridge: only TCP to the family's ports is forwarded, and
    never another task's. The test shows each canary answers from its own network first."""
    out = []
    for c in ctx.hints.get("udp_canaries", []):
        ok, detail = udp(c["ip"], c["port"])
        out.append(_attempt("udp_across_the_tunnels", f"{c['name']} {c['ip']}:{c['port']}", "blocked", ok, detail))
    return out


def _http(ctx: Context, method: str, path: str, body: bytes | None = None, token: bool = True) -> tuple[int, str]:
    """One raw HTTP/1.1 request to the own node proxy, the path sent exactly as given (no
    client-side normalisation): (status, first bytes of the body); status 0 = no answer."""
    host, port = ctx.gateway, int(ctx.hints.get("proxy_port", 8765))
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    if token:
        head.append(f"Authorization: Bearer {ctx.client.token}")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
    return _raw_http(host, port, raw)


def _raw_http(host: str, port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(raw)
            data = b""
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    try:
        status = int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, f"no HTTP answer: {data[:80]!r}"
    return status, data.split(b"\r\n\r\n", 1)[-1][:200].decode(errors="replace")


@attack
def server_api_beyond_the_token(ctx: Context) -> list[Attempt]:
    """Through the own node proxy, with the own container token: other collaborations'
    tasks, node-only endpoints, another image, and paths outside /api (the server's /metrics
    sits at the root of the same origin)."""
    other_task = ctx.hints.get("foreign_task_id", 999999)
    body = json.dumps({"collaboration_id": ctx.client.collaboration_id, "organizations": [ctx.client.organization_id],
                       "image": "some/other-image:latest", "input": {}}).encode()
    other_job, other_run = ctx.hints.get("other_job_task_id", 999998), ctx.hints.get("other_job_run_id", 999998)
    foreign_org = ctx.hints.get("foreign_organization_id", 999997)
    foreign_collab = ctx.hints.get("foreign_collaboration_id", 999997)
    tries = [("GET", f"/api/task/{other_task}", None), ("GET", "/api/vpn", None), ("GET", "/api/node/self", None),
             ("POST", "/api/vpn/update", b'{"vpn_config": "x"}'), ("POST", "/api/task", body),
             ("GET", "/api/run", None), ("GET", "/api/node/peers", None), ("GET", "/api/node/events", None),
             # vantage6's read calls: another job of the same collaboration, another collaboration
             ("GET", f"/api/task/{other_job}", None), ("GET", f"/api/task/{other_job}/status", None),
             ("GET", f"/api/result?task_id={other_job}", None), ("GET", f"/api/run?task_id={other_job}", None),
             ("GET", f"/api/result/{other_run}", None), ("GET", f"/api/run/{other_run}", None),
             ("GET", f"/api/result?task_id={other_task}", None), ("GET", f"/api/organization/{foreign_org}", None),
             ("GET", f"/api/collaboration/{foreign_collab}", None),
             ("GET", f"/api/organization?collaboration_id={foreign_collab}", None)]
    # positive controls: the same calls for the own job answer
    own = [f"/api/task/{ctx.client.task_id}/status", f"/api/run?task_id={ctx.client.task_id}",
           f"/api/result?task_id={ctx.client.task_id}", f"/api/collaboration/{ctx.client.collaboration_id}",
           f"/api/organization/{ctx.client.organization_id}"]
    traversal = ["/api/../metrics", "/api/%2e%2e/metrics", "/api/..%2fmetrics", "/api/.%2e/metrics",
                 "/api//../metrics", "/api/%2E%2E/metrics", "/api/..\\metrics", "http://127.0.0.1/metrics",
                 "/api/health/../../metrics"]
    out = []
    for method, path, data in tries:
        status, text = _http(ctx, method, path, data)
        out.append(_attempt("server_api_beyond_the_token", f"{method} {path}", "blocked", 200 <= status < 300,
                            f"HTTP {status} {text[:120]}"))
    for path in own:
        status, text = _http(ctx, "GET", path)
        out.append(_attempt("control: own job through the proxy", f"GET {path}", "ok", 200 <= status < 300,
                            f"HTTP {status} {text[:120]}"))
    for path in traversal:
        status, text = _http(ctx, "GET", path)
        escaped = 200 <= status < 300 and "vpnagent_server" in text
        out.append(_attempt("server_api_beyond_the_token", f"GET {path}", "blocked", escaped, f"HTTP {status} {text[:120]}"))
    # the API server directly, past the proxy (its port on the host)
    out += connect_all("server_api_beyond_the_token",
                       [("API server port on the node host", ctx.gateway, p) for p in ctx.hints.get("api_ports", [])])
    return out


def _forged(claims: dict) -> str:
    """A JWT with these claims and a signature that is not the server's."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    return ".".join([b64(b'{"alg":"HS256","typ":"JWT"}'), b64(json.dumps(claims).encode()), b64(b"not-the-key")])


@attack
def forged_tokens_through_the_proxy(ctx: Context) -> list[Attempt]:
    """The node proxy swaps a token of the caller's own run for the run's current one (runs
    outlive their tokens). Forged tokens naming another run (another job's, the own
    child's) must not be swapped into that run's identity; a forged one naming the own run
    gets only what the run has anyway (the positive control: the swap is on)."""
    payload = ctx.client.token.split(".")[1]
    own = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    others = {"another job's run": ctx.hints.get("other_job_run_id", 999998)}
    try:
        for a in ctx.client.vpn.get_child_addresses():
            others.setdefault("own child's run", a.get("run_id"))
    except AlgorithmClientError:
        pass
    out = []
    for what, run_id in others.items():
        forged = _forged({**own, "sub": {**own["sub"], "run_id": run_id}, "exp": int(time.time()) + 3600})
        status, text = _http_with(ctx, "GET", "/api/vpn/algorithm/addresses", forged)
        out.append(_attempt("forged_tokens_through_the_proxy", f"a token naming {what} ({run_id})", "blocked",
                            200 <= status < 300, f"HTTP {status} {text[:120]}"))
    expired_own = _forged({**own, "exp": int(time.time()) - 60})
    status, text = _http_with(ctx, "GET", "/api/vpn/algorithm/addresses", expired_own)
    out.append(_attempt("control: own run's token swapped by the proxy", "a forged, expired token of the own run",
                        "ok", status == 200, f"HTTP {status} {text[:120]}"))
    return out


def _http_with(ctx: Context, method: str, path: str, token: str) -> tuple[int, str]:
    host, port = ctx.gateway, int(ctx.hints.get("proxy_port", 8765))
    raw = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
           f"Authorization: Bearer {token}\r\n\r\n").encode()
    return _raw_http(host, port, raw)


@attack
def oversized_and_malformed_requests_to_the_proxy(ctx: Context) -> list[Attempt]:
    """Bodies past the proxy's limit by every framing, then a normal request must still work."""
    host, port = ctx.gateway, int(ctx.hints.get("proxy_port", 8765))
    big = b"x" * (256 * 1024)
    auth = f"Authorization: Bearer {ctx.client.token}\r\n"
    frames = {
        "Content-Length: -1": f"POST /api/task HTTP/1.1\r\nHost: h\r\n{auth}Content-Length: -1\r\n\r\n".encode() + big,
        "chunked 256 KiB": (f"POST /api/task HTTP/1.1\r\nHost: h\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
                            f"{len(big):x}\r\n").encode() + big + b"\r\n0\r\n\r\n",
        "Content-Length 256 KiB": f"POST /api/task HTTP/1.1\r\nHost: h\r\n{auth}Content-Length: {len(big)}\r\n\r\n".encode() + big,
        "two Content-Length": f"POST /api/task HTTP/1.1\r\nHost: h\r\n{auth}Content-Length: 2\r\nContent-Length: 300000\r\n\r\n{{}}".encode(),
    }
    out = []
    for what, raw in frames.items():
        status, text = _raw_http(host, port, raw)
        # a 2xx means it was taken as a request; the controls then show the proxy still serves
        out.append(_attempt("oversized_and_malformed_requests_to_the_proxy", what, "blocked", 200 <= status < 300,
                            f"HTTP {status} {text[:100]}"))
    return out


@attack
def raw_sockets_and_routes(ctx: Context) -> list[Attempt]:
    """No NET_RAW: no forged packets; no NET_ADMIN: no own routes or addresses."""
    out = []
    for what, args in (("raw ICMP socket", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                       ("packet socket", (socket.AF_PACKET, socket.SOCK_RAW, 0))):
        try:
            socket.socket(*args).close()
            out.append(_attempt("raw_sockets_and_routes", what, "blocked", True, "opened"))
        except OSError as exc:
            out.append(_attempt("raw_sockets_and_routes", what, "blocked", False, f"{type(exc).__name__}: {exc}"))
    for what, argv in (("replace the default route", ["ip", "route", "replace", "default", "via", ctx.gateway]),
                       ("add an address", ["ip", "addr", "add", "10.255.255.7/32", "dev", "eth0"])):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out.append(_attempt("raw_sockets_and_routes", what, "blocked", proc.returncode == 0,
                                (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"))
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.append(_attempt("raw_sockets_and_routes", what, "blocked", False, str(exc)))
    return out


@attack
def ipv6(ctx: Context) -> list[Attempt]:
    """Docker gives the isolated network no IPv6; a link-local path would bypass every IPv4
    rule. Try the all-routers/any link-local neighbours the kernel knows."""
    targets = [("link-local all-nodes", "ff02::1%eth0", ECHO_PORT), ("link-local gateway", "fe80::1%eth0", ECHO_PORT)]
    targets += [("IPv6 neighbour", ip, ECHO_PORT) for ip in _ipv6_neighbours()]
    return connect_all("ipv6", targets)


def _ipv6_neighbours() -> list[str]:
    try:
        proc = subprocess.run(["ip", "-6", "neigh", "show"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [f"{line.split()[0]}%{line.split()[2]}" for line in proc.stdout.splitlines() if len(line.split()) > 2]


@attack
def process_limit(ctx: Context) -> list[Attempt]:
    """A fork bomb, bounded: start twice the node's pids limit (only when the test names a
    small one) and count how many the kernel let through."""
    limit = ctx.hints.get("pids_limit")
    if not limit or limit > 256:
        return []
    procs: list[subprocess.Popen] = []
    error = "none"
    try:
        for _ in range(2 * limit):
            try:
                procs.append(subprocess.Popen(["sleep", "30"]))
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
    finally:
        started = len(procs)
        for proc in procs:
            proc.kill()
            proc.wait()
    return [_attempt("process_limit", f"start {2 * limit} processes (pids limit {limit})", "blocked",
                     started >= limit, f"started {started}, then {error}")]


# --------------------------------------------------------------------------- controls
def controls(ctx: Context) -> list[Attempt]:
    """What the attacks' "blocked" is measured against: the same kinds of connection, allowed."""
    out = []
    for org, addr in sorted(ctx.children.items()):
        pair = probe(addr["ip"], addr["port"], "hostile-parent", f"org{org}", retry_for=15)
        out.append(_attempt("control: own child over the VPN", f"org{org} {addr['ip']}:{addr['port']}", "ok",
                            pair["ok"], pair["error"] or f"echo in {pair['ms']} ms"))
    try:
        own = ctx.client.vpn.get_addresses(only_self=True)
        out += connect_all("control: own address over the VPN", [("own", a["ip"], a["port"]) for a in own], "ok")
    except AlgorithmClientError as exc:
        out.append(_attempt("control: own address over the VPN", "get_addresses", "ok", False, str(exc)))
    status, text = _http(ctx, "GET", "/api/vpn/algorithm/addresses")
    out.append(_attempt("control: own node proxy", "GET /api/vpn/algorithm/addresses", "ok", status == 200,
                        f"HTTP {status} {text[:80]}"))
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        out.append(_attempt("control: an ordinary socket", "AF_INET stream", "ok", True, "opened"))
    except OSError as exc:
        out.append(_attempt("control: an ordinary socket", "AF_INET stream", "ok", False, str(exc)))
    return out


# --------------------------------------------------------------------------- methods
def _own_addresses(client: AlgorithmClient) -> tuple[str, str]:
    """Own IPv4 address, and the node host's address on the bridge: where the node proxy
    listens (the holder's default route points at the VPN client, not at the host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # UDP connect sends nothing
        s.connect(("10.255.255.255", 9))
        own = s.getsockname()[0]
    return own, urllib.parse.urlsplit(client.server_url).hostname or ""


def run_attack(client: AlgorithmClient, hints: dict | None = None, child_orgs: list[int] | None = None,
               timeout: float = 60, only: list[str] | None = None) -> dict:
    """Children first (own-family controls on this node and another), then every attack."""
    ctx = Context(client, hints or {})
    ctx.own_ip, proxy_host = _own_addresses(client)
    ctx.gateway = ctx.hints.get("gateway") or proxy_host
    server = EchoServer("0.0.0.0", ECHO_PORT).start()  # the own address control reaches this
    try:
        if child_orgs:
            sub = client.task.create(input_={"method": "serve", "kwargs": {"timeout": timeout}},
                                     organizations=child_orgs, name="hostile children")
            got = wait_for_org_addresses(
                lambda: [a for a in client.vpn.get_child_addresses() if a.get("task_id") == sub["id"]],
                child_orgs, timeout=timeout)
            ctx.children = got
        # the controls first: the children serve until their parent reached them
        attempts: list[Attempt] = controls(ctx)
        for name, fn in ATTACKS.items():
            if only and name not in only:
                continue
            t0 = time.monotonic()
            try:
                attempts += fn(ctx)
            except Exception as exc:  # noqa: BLE001 - a crashed attack is reported, not hidden
                attempts.append(_attempt(name, "(the attack itself)", "ok", False, f"crashed: {type(exc).__name__}: {exc}"))
            _log(f"{name}: {time.monotonic() - t0:.1f} s")
    finally:
        server.stop()
    escaped = [a for a in attempts if a["outcome"] == "ESCAPED"]
    failed = [a for a in attempts if a["outcome"] == "FAILED"]
    return {"attempts": attempts, "escaped": len(escaped), "controls_failed": len(failed),
            "own_ip": ctx.own_ip, "gateway": ctx.gateway}


def serve(client: AlgorithmClient, timeout: float = 60) -> dict:
    """A child: serve the echo port until the parent (or the timeout) came by."""
    server = EchoServer("0.0.0.0", ECHO_PORT).start()
    try:
        got = server.wait_for_senders(1, timeout)
    finally:
        server.stop()
    return {"reached_by": sorted(got)}


def output_trick(client: AlgorithmClient, trick: str, target: str = "/etc/hostname") -> dict:
    """Put something other than a small regular file where the node reads the output."""
    out = os.environ.get("VPNAGENT_OUTPUT_FILE", "/mnt/run/output.json")
    if os.path.lexists(out):
        os.remove(out)
    if trick == "symlink":
        os.symlink(target, out)
    elif trick == "fifo":
        os.mkfifo(out)
    elif trick == "huge":
        with open(out, "wb") as f:  # sparse: costs no disk, but its size is 1 GiB
            f.truncate(1 << 30)
    elif trick == "directory":
        os.mkdir(out)
    else:
        raise ValueError(f"unknown trick {trick!r}")
    return {}


def main() -> int:
    in_path = os.environ.get("VPNAGENT_INPUT_FILE", "/mnt/run/input.json")
    out_path = os.environ.get("VPNAGENT_OUTPUT_FILE", "/mnt/run/output.json")
    with open(in_path) as f:
        task_input = json.load(f)
    method, kwargs = task_input.get("method"), task_input.get("kwargs") or {}
    client = AlgorithmClient()
    if method == "output":
        output_trick(client, **kwargs)
        return 0
    result = {"attack": run_attack, "serve": serve}[method](client, **kwargs)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


def build(client: Any = None, progress: Callable[[str], None] = print) -> str:
    """The hostile image, on the host (needs `vpnagent images build` first)."""
    from vpnagent.runtime.docker_images import build_algorithm_image

    return build_algorithm_image(HOSTILE_IMAGE, FILES, DOCKERFILE, client=client, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
