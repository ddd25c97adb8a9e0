"""The data-plane seam: the VPN tunnel of a node, whatever carries it. Only this package
knows the implementation (OpenVPN today, in openvpn.py: tun0, SIGHUP, its log lines); the
agent, metrics and the doctor use `DataPlane` and the records below.

The tunnel lives in a network namespace of its own (a client container), attached to the
node's isolated network: the firewall rules of every run go into that namespace, and each
run's holder routes through the client's address on the isolated network. The WireGuard
data plane (wireguard.py) adds direct links between nodes in that same namespace, with the
OpenVPN tunnel as the relay; docs/architecture.md ("Seams") says what each method must
guarantee."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..runtime import Container, Network
from .pathmtu import FALLBACK_MTU, PathMTU
from .wireguard import Peer


class VPNError(RuntimeError):
    """The VPN could not be brought up or renewed; the message says which step failed and why."""


@dataclass(frozen=True)
class Tunnel:
    """A tunnel that is up: where it lives and what it carries."""

    container_id: str  # the client container owning the namespace
    pid: int  # a process in that namespace (rules and counters are read through it)
    vpn_ip: str  # this node's address on the VPN
    iso_ip: str  # the client's address on the isolated network: every holder's gateway
    iso_if: str  # the client's interface on the isolated network
    since: float
    path: PathMTU = PathMTU(FALLBACK_MTU, "fallback")  # what the tunnel carries (pathmtu.py)


@dataclass(frozen=True)
class SessionState:
    """Whether the tunnel's session with the server is up. The tunnel interface keeps its
    address while the session is lost and re-made, so the address alone cannot tell."""

    state: str  # "up", "reconnecting" (lost after it was up) or "starting" (never up yet)
    since: float | None  # Unix time of the event that decided it, when known
    detail: str  # what said so (for "reconnecting": the latest reason it is not back)


@dataclass(frozen=True)
class TunnelCounters:
    """Kernel counters of the tunnel interface (since the interface was made)."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True)
class Observed:
    """The client as found now, with no agent state (what the doctor inspects)."""

    container: Container | None
    address: ipaddress.IPv4Interface | None  # on the tunnel interface
    log_tail: str  # the client's last words, for an error message


class DataPlane(Protocol):
    """One node's tunnel. `state` is None while there is no tunnel (the node then runs
    without VPN, and says why in `last_error`)."""

    name: str  # "OpenVPN": in the doctor's messages ("the OpenVPN server")
    tunnel_if: str  # the tunnel interface inside the client's namespace
    state: Tunnel | None
    last_error: str | None
    cert_expires: float | None  # Unix time the node's VPN credential expires
    renewals: int  # credential renewals done in place by this process

    def bring_up(self, network: Network) -> Tunnel | None:
        """A tunnel attached to the isolated network: credentials on disk, else renewed,
        else fetched; None (with last_error) when none works. Forwarding is closed until
        the rules are applied: the client's namespace starts with a DROP policy."""

    def adopt(self, network: Network) -> Tunnel | None:
        """Take over the client an earlier agent left running, changing nothing in it, when
        it is exactly what bring_up would start now; None (reason logged) otherwise."""

    def healthy(self) -> bool:
        """The client runs, in the same namespace, and the tunnel holds the VPN IP."""

    def session(self) -> SessionState: ...

    def reconnects(self) -> int:
        """Sessions re-made inside the running client since the last call (planned
        renewals not counted): the tunnel interface does not show them."""

    def renew_in_place(self, timeout: float = 30.0) -> float:
        """A new credential, taken into use without replacing the namespace (every rule
        stays); returns the seconds the session was away."""

    def counters(self) -> TunnelCounters | None: ...

    def observe(self) -> Observed: ...

    def server_answers(self, size: int | None = None) -> tuple[bool, str, str]:
        """(answered, server's tunnel address, round-trip or reason): a ping through the
        tunnel, of `size` bytes with don't-fragment when given."""

    def stop(self) -> None:
        """Remove the client (it says goodbye to the server first)."""

    # --- direct links to peers (the WireGuard data plane; wireguard.py)
    plane: str  # the data plane the server set for the node's collaboration: "openvpn" or "wireguard"
    peer_if: str | None  # the interface of the direct links while it is up (firewall rules cover it too)
    peer_mss: int | None  # TCP MSS clamp for it

    def set_peers(self, plane: str, peers: list[Peer]) -> None:
        """Make the direct links match the server's word: on "wireguard", one link per
        peer (a node sharing a task family), each direct when it works and through the hub
        otherwise; on "openvpn", none (everything through the hub). Idempotent."""

    def refresh_peers(self) -> bool:
        """One pass over the direct links (new handshakes, lost peers, endpoints to try);
        False when they were lost and set_peers must make them again."""

    def peer_summary(self) -> dict: ...


def parse_net_dev(text: str, ifname: str) -> TunnelCounters | None:
    """One interface's counters from the text of /proc/net/dev (two header lines, then
    `name: rx_bytes rx_packets ... (8 fields) tx_bytes tx_packets ...`)."""
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep or name.strip() != ifname:
            continue
        fields = rest.split()
        if len(fields) < 16 or not all(f.isdigit() for f in fields):
            return None
        return TunnelCounters(rx_bytes=int(fields[0]), rx_packets=int(fields[1]),
                              tx_bytes=int(fields[8]), tx_packets=int(fields[9]))
    return None


def read_counters(pid: int, ifname: str) -> TunnelCounters | None:
    """An interface's counters in the network namespace of `pid`. /proc/<pid>/net/dev shows
    the interfaces of that process's namespace, so this is a file read from the host: no
    nsenter fork, unlike /sys/class/net, which shows the namespace of whoever mounted /sys."""
    try:
        text = Path(f"/proc/{pid}/net/dev").read_text()
    except OSError:
        return None  # the container went away between the snapshot and the read
    return parse_net_dev(text, ifname)
