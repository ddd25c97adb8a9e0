"""Direct WireGuard links between nodes: the peer-to-peer part of the WireGuard data plane.

The node keeps its OpenVPN tunnel (tun0): it is the control path to the server, it holds
the node's VPN IP, and it is the relay. Beside it, in the same client namespace, wg0 holds
the same VPN IP (/32) with one WireGuard peer per node this node shares a task family with
(the server's GET /node/peers says which, with their public keys and endpoint candidates).
A peer whose handshake worked and that is still heard from gets a /32 route through wg0,
more specific than tun0's subnet route: traffic to it goes direct. Every other peer keeps
going through the hub, so a pair that cannot reach each other (NAT, a firewall) still works.
Each side decides for itself; a reply may come back the other way (conntrack does not mind).

WireGuard accepts a peer's packets only from its allowed-ips, here that peer's VPN IP, so
the firewall's source-address rules mean on wg0 what they mean on tun0 (firewall.py).

Kernel WireGuard is used when the host has it (`ip link add type wireguard` works in the
namespace), otherwise Debian's wireguard-go, started in the client container's namespaces so
that it ends with the container. Both are configured with `wg` from the client image."""
from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..netns import Netns, NetnsError

log = logging.getLogger(__name__)

WG_IF = "wg0"
KEY_FILE = "wg.key"  # in the client's /vpn mount: `wg set ... private-key` reads it there
KEEPALIVE_S = 25  # also keeps a NAT's mapping open
LIVE_S = 2 * KEEPALIVE_S + 10  # a live peer sends at least one keepalive per KEEPALIVE_S
SESSION_S = 180  # WireGuard's Reject-After-Time: an older handshake's keys carry nothing
RETRY_S = 5.0  # a peer not reached: its next endpoint candidate (and a new handshake) this often
DIRECT, RELAY = "direct", "relay"


class WireGuardError(RuntimeError):
    """wg0 could not be made or configured; the message says which step and why."""


@dataclass(frozen=True)
class Peer:
    """A node this node may talk to directly, as the server describes it."""

    node_id: int
    vpn_ip: str
    public_key: str
    endpoints: tuple[str, ...]  # 'IPv4:port' candidates, the server's preferred first


@dataclass(frozen=True)
class DumpPeer:
    """One peer as `wg show wg0 dump` shows it."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # Unix time; 0 = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class PeerPath:
    """Which way traffic to one peer goes now, and why (for status and the doctor)."""

    node_id: int
    vpn_ip: str
    path: str  # DIRECT or RELAY
    endpoint: str | None
    handshake_age: float | None  # seconds; None: no handshake yet
    detail: str


def parse_dump(text: str) -> tuple[int | None, dict[str, DumpPeer]]:
    """(listen port, peers by public key) from `wg show IF dump`: the interface line first
    (private key, public key, port, fwmark), then one tab-separated line per peer."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines:
        return None, {}
    head = lines[0]
    port = int(head[2]) if len(head) >= 3 and head[2].isdigit() else None
    peers = {}
    for f in lines[1:]:
        if len(f) < 8 or not (f[4].isdigit() and f[5].isdigit() and f[6].isdigit()):
            continue
        peers[f[0]] = DumpPeer(f[0], None if f[2] == "(none)" else f[2],
                               tuple(a for a in f[3].split(",") if a and a != "(none)"),
                               int(f[4]), int(f[5]), int(f[6]))
    return port, peers


def read_public_key(path: Path) -> str | None:
    """The public key of the private key in `path`; None when there is no usable one."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        key = X25519PrivateKey.from_private_bytes(base64.b64decode(path.read_text().strip(), validate=True))
    except (OSError, ValueError):
        return None
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_or_create_key(path: Path) -> str:
    """This node's public key; the private key is made here once (0600) and never leaves
    the node: the server gets only the public key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    public = read_public_key(path)
    if public is not None:
        return public
    if path.exists():
        log.warning("wireguard: %s is not a WireGuard private key; making a new key", path)
    text = base64.b64encode(X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                                                      NoEncryption())).decode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)
    return read_public_key(path)


def peer_args(peer: Peer, endpoint: str | None, fresh: bool, keepalive: int = KEEPALIVE_S) -> list[str]:
    """`wg set` arguments that make one peer as wanted. `fresh`: remove it first, which
    drops its handshake state, so setting the keepalive sends a new handshake at once
    (WireGuard gives up after 90 s without traffic, and a relayed peer has none)."""
    args = ["peer", peer.public_key, "remove"] if fresh else []
    args += ["peer", peer.public_key, "allowed-ips", f"{peer.vpn_ip}/32", "persistent-keepalive", str(keepalive)]
    return args + (["endpoint", endpoint] if endpoint else [])


@dataclass
class _Seen:
    """What the links remember of a peer between passes."""

    rx: int = -1
    heard: float = 0.0  # monotonic time its received bytes last grew
    tried: int = -1  # index of the endpoint candidate last set
    tried_at: float = float("-inf")


@dataclass
class PeerLinks:
    """wg0 in one client namespace, made to match a wanted peer list (`set_peers`) and kept
    there (`refresh`): peers, endpoints and the per-peer routes."""

    key_dir: Path
    listen_port: int
    mtu: int
    pid: int | None = None
    vpn_ip: str | None = None
    mode: str | None = None  # "kernel" or "userspace" while wg0 is up
    keepalive_s: int = KEEPALIVE_S  # (tests shorten these three)
    live_s: float = LIVE_S
    retry_s: float = RETRY_S
    wanted: dict[str, Peer] = field(default_factory=dict)
    paths: list[PeerPath] = field(default_factory=list)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _public: str | None = None

    @property
    def key_path(self) -> Path:
        return self.key_dir / KEY_FILE

    def public_key(self) -> str:
        """Read (or made) once: every set_peers asks for it, and the file does not change
        under a running agent."""
        if self._public is None:
            self._public = load_or_create_key(self.key_path)
        return self._public

    # --- the interface
    def up(self, pid: int, vpn_ip: str) -> None:
        """wg0 with this node's key, port, MTU and VPN IP, in the namespace of `pid`. A wg0
        already there (an adopted client) is reconfigured as it is; a new namespace starts
        with no peers."""
        if (pid, vpn_ip) != (self.pid, self.vpn_ip):
            self._seen.clear()
            self.paths = []
        self.public_key()  # the key file exists before wg reads it
        ns = Netns(pid)
        if ns.link_mtu(WG_IF) is None:
            self.mode = self._create(ns)
        elif self.mode is None:  # adopted: wireguard-go leaves its control socket, the kernel none
            sock = Path(f"/proc/{pid}/root/var/run/wireguard/{WG_IF}.sock")
            self.mode = "userspace" if sock.exists() else "kernel"
        try:
            self._wg(ns, ["wg", "set", WG_IF, "listen-port", str(self.listen_port), "private-key", f"/vpn/{KEY_FILE}"])
            ns.run(["ip", "addr", "replace", f"{vpn_ip}/32", "dev", WG_IF])
            ns.run(["ip", "link", "set", WG_IF, "mtu", str(self.mtu), "up"])
        except NetnsError as exc:
            raise WireGuardError(f"cannot configure {WG_IF}: {exc}") from None
        self.pid, self.vpn_ip = pid, vpn_ip

    def _create(self, ns: Netns) -> str:
        if ns.run(["ip", "link", "add", WG_IF, "type", "wireguard"], check=False).returncode == 0:
            log.info("wireguard: kernel WireGuard (%s)", WG_IF)
            return "kernel"
        # wireguard-go forks itself into the background: entering the container's pid
        # namespace puts it there, so it ends with the client container
        argv = ["nsenter", f"--net=/proc/{ns.pid}/ns/net", f"--mount=/proc/{ns.pid}/ns/mnt",
                f"--pid=/proc/{ns.pid}/ns/pid", "--", "wireguard-go", WG_IF]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=10, env={"LOG_LEVEL": "error", "PATH": os.defpath})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WireGuardError(f"cannot start wireguard-go: {exc}") from None
        deadline = time.monotonic() + 3
        while ns.link_mtu(WG_IF) is None:
            if proc.returncode != 0 or time.monotonic() > deadline:
                raise WireGuardError(f"wireguard-go did not make {WG_IF} (exit {proc.returncode}); is it in the "
                                     "VPN image (vpnagent images build)?")
            time.sleep(0.02)
        log.info("wireguard: no kernel WireGuard here; userspace wireguard-go (%s)", WG_IF)
        return "userspace"

    def down(self) -> None:
        """Remove wg0 (wireguard-go exits with it): every peer goes through the hub."""
        if self.pid is not None:
            Netns(self.pid).run(["ip", "link", "del", WG_IF], check=False)
        self.pid = self.vpn_ip = self.mode = None
        self.wanted, self.paths = {}, []
        self._seen.clear()

    def forget(self) -> None:
        """The namespace is gone (a new client): nothing of it is kept."""
        self.pid = self.vpn_ip = self.mode = None
        self.paths = []
        self._seen.clear()

    @property
    def is_up(self) -> bool:
        return self.pid is not None

    # --- peers
    def set_peers(self, peers: list[Peer]) -> None:
        own = self.public_key()
        self.wanted = {p.public_key: p for p in peers if p.public_key != own}
        self.refresh()

    def refresh(self) -> None:
        """One pass: read wg0, make its peers the wanted ones (new endpoint candidates for
        peers not reached), route the peers that are direct through wg0 and the rest not."""
        if self.pid is None:
            return
        ns = Netns(self.pid)
        try:
            _, current = parse_dump(self._wg(ns, ["wg", "show", WG_IF, "dump"]))
            now, mono = time.time(), time.monotonic()
            args: list[str] = []
            for key in sorted(set(current) - set(self.wanted)):
                args += ["peer", key, "remove"]
                self._seen.pop(key, None)
            paths = []
            for key, peer in sorted(self.wanted.items(), key=lambda kv: kv[1].vpn_ip):
                path, more = self._peer_pass(peer, current.get(key), now, mono)
                paths.append(path)
                args += more
            if args:
                self._wg(ns, ["wg", "set", WG_IF, *args])
            self._route(ns, {p.vpn_ip for p in paths if p.path == DIRECT})
        except NetnsError as exc:
            raise WireGuardError(f"cannot read or set {WG_IF}: {exc}") from None
        for old, new in _changes(self.paths, paths):
            log.info("wireguard: node %s (%s): %s -> %s (%s)", new.node_id, new.vpn_ip, old, new.path, new.detail)
        self.paths = paths

    def _peer_pass(self, peer: Peer, found: DumpPeer | None, now: float, mono: float) -> tuple[PeerPath, list[str]]:
        seen = self._seen.setdefault(peer.public_key, _Seen())
        age = now - found.latest_handshake if found and found.latest_handshake else None
        if found is not None and found.rx_bytes != seen.rx:
            seen.rx, seen.heard = found.rx_bytes, mono
        settled = (found is not None and found.allowed_ips == (f"{peer.vpn_ip}/32",))
        live = age is not None and age < SESSION_S and mono - seen.heard < self.live_s
        if live and settled:
            return PeerPath(peer.node_id, peer.vpn_ip, DIRECT, found.endpoint, age,
                            f"handshake {age:.0f} s ago, heard {mono - seen.heard:.0f} s ago"), []
        # not reached (yet): try the next candidate every RETRY_S, from a clean handshake state
        args: list[str] = []
        if not settled or mono - seen.tried_at >= self.retry_s:
            seen.tried = (seen.tried + 1) % len(peer.endpoints) if peer.endpoints else -1
            seen.tried_at = mono
            endpoint = peer.endpoints[seen.tried] if peer.endpoints else None
            args = peer_args(peer, endpoint, fresh=found is not None, keepalive=self.keepalive_s)
        if not peer.endpoints:
            detail = "no endpoint known (the peer offers none); waiting for it to reach this node"
        elif age is None:
            detail = f"no handshake yet; trying {len(peer.endpoints)} endpoint(s): {', '.join(peer.endpoints)}"
        else:
            detail = f"last handshake {age:.0f} s ago, not heard for {mono - seen.heard:.0f} s"
        return PeerPath(peer.node_id, peer.vpn_ip, RELAY, found.endpoint if found else None, age, detail), args

    def _route(self, ns: Netns, direct: set[str]) -> None:
        """The /32 routes through wg0 are exactly the direct peers' (level-triggered: read,
        then change only what differs)."""
        shown = ns.run(["ip", "-j", "-4", "route", "show", "dev", WG_IF], check=False)
        have = {r["dst"] for r in json.loads(shown.stdout or "[]")} if shown.returncode == 0 else set()
        have = {d.removesuffix("/32") for d in have}
        batch = [f"route del {ip}/32 dev {WG_IF}" for ip in sorted(have - direct)]
        batch += [f"route replace {ip}/32 dev {WG_IF}" for ip in sorted(direct - have)]
        if batch:
            ns.run(["ip", "-force", "-batch", "-"], stdin="\n".join(batch) + "\n")

    def _wg(self, ns: Netns, argv: list[str], check: bool = True) -> str:
        proc = ns.run(argv, check=check, mount=True)
        return proc.stdout if proc.returncode == 0 else ""

    def summary(self) -> dict:
        """For status.json: the interface and each peer's path."""
        return {"interface": WG_IF if self.is_up else None, "mode": self.mode, "listen_port": self.listen_port,
                "peers": [vars(p) | {"handshake_age": None if p.handshake_age is None else round(p.handshake_age, 1)}
                          for p in self.paths]}


def _changes(before: list[PeerPath], after: list[PeerPath]) -> list[tuple[str, PeerPath]]:
    old = {p.vpn_ip: p.path for p in before}
    return [(old.get(p.vpn_ip, "new"), p) for p in after if old.get(p.vpn_ip) != p.path]
