"""How big a packet crosses this node's tunnel, measured on the real path.

OpenVPN over UDP wraps every tunnel packet in one datagram. When that datagram is bigger
than the path between the node and the OpenVPN server allows, the kernel splits it into IP
fragments, and many real networks drop fragments (firewalls, NAT gateways, cloud load
balancers): then every full-size packet is lost and TCP stalls. A tunnel MTU is therefore
only used where it was seen to work: after connecting, the agent pings the OpenVPN server's
tunnel address through the tunnel with "don't fragment" set on the inner packet (the outer
datagram is sent as OpenVPN sends data, so it is fragmented exactly when real traffic would
be) and takes the largest size that came back. The result caps TCP's segment size (MSS
clamp) and tun0's MTU in the VPN client's namespace. An operator who knows the path sets
`tunnel_mtu` instead, and nothing is probed."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

from ..netns import Netns, NetnsError

log = logging.getLogger(__name__)

MIN_MTU = 576  # every IPv4 path carries this
IP_ICMP_HEADERS = 28
TCP_IP_HEADERS = 40
# A probe is two echo requests 0.2 s apart, each waited for 0.5 s: a lost ping is not read
# as "too big" unless both are lost.
PING_ARGS = ["-M", "do", "-c", "2", "-i", "0.2", "-W", "0.5", "-q"]
# When the probe gets no answer at all: fits a 1500-byte path with up to 220 bytes of
# encapsulation (OpenVPN over UDP needs about 60), PPPoE or one VPN layer in the path.
FALLBACK_MTU = 1280


@dataclass(frozen=True)
class PathMTU:
    """What the node settled on: the largest tunnel packet (IP header included) it uses."""

    mtu: int
    source: str  # "probed", "configured", or "fallback" (the probe got no answer at all)
    detail: str = ""

    @property
    def mss(self) -> int:
        return self.mtu - TCP_IP_HEADERS


def largest_passing(passes: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest size in [low, high] for which `passes(size)` is true, assuming that a size
    passes when a bigger one did (a path has one limit). `high` is tried first: on a path
    without a limit that is the only probe. None when even `low` does not pass."""
    if passes(high):
        return high
    if not passes(low):
        return None
    good, bad = low, high
    while bad - good > 8:  # 8-byte steps: finer gains nothing a TCP segment would notice
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good


def tunnel_server(ns: Netns, tun_if: str = "tun0") -> tuple[str, int]:
    """The OpenVPN server's tunnel address (first host of tun0's subnet: each server process
    takes .1 of its slice) and tun0's MTU."""
    link = json.loads(ns.run(["ip", "-j", "link", "show", "dev", tun_if]).stdout)[0]
    addrs = ns.ipv4_addresses(tun_if).get(tun_if) or []
    if not addrs:
        raise NetnsError(f"{tun_if} has no IPv4 address")
    return str(next(addrs[0].network.hosts())), int(link["mtu"])


def probe(ns: Netns, tun_if: str = "tun0") -> PathMTU:
    """Measure the tunnel's path MTU through `ns` (the VPN client's namespace)."""
    server, tun_mtu = tunnel_server(ns, tun_if)
    tries: list[str] = []

    def passes(size: int) -> bool:
        ok = ns.run(["ping", *PING_ARGS, "-s", str(size - IP_ICMP_HEADERS), server], check=False).returncode == 0
        tries.append(f"{size}{'+' if ok else '-'}")
        return ok

    found = largest_passing(passes, MIN_MTU, tun_mtu)
    if found is None:
        # the server does not answer pings at all (or the tunnel is not up yet): stay safe
        return PathMTU(FALLBACK_MTU, "fallback", f"no answer from {server} at any size ({' '.join(tries)}); "
                                                 f"using {FALLBACK_MTU}")
    return PathMTU(found, "probed", f"{server} answered up to {found} bytes ({' '.join(tries)})")


def settle(ns: Netns, configured: int | None, tun_if: str = "tun0") -> PathMTU:
    """The configured tunnel MTU, else the probed one (which never exceeds tun0's MTU)."""
    if configured is not None:
        return PathMTU(configured, "configured", f"tunnel_mtu {configured} from the node config")
    try:
        found = probe(ns, tun_if)
    except (NetnsError, ValueError, KeyError, IndexError) as exc:
        found = PathMTU(FALLBACK_MTU, "fallback", f"probe failed ({exc}); using {FALLBACK_MTU}")
    log.info("vpn: tunnel MTU %d (%s): %s", found.mtu, found.source, found.detail)
    return found


def apply_link_mtu(ns: Netns, path: PathMTU, tun_if: str = "tun0") -> None:
    """tun0 no bigger than the path: the kernel then fragments or refuses (ICMP) inside the
    tunnel, where fragments travel encrypted and whole, instead of outside it."""
    _, current = tunnel_server(ns, tun_if)
    if path.mtu < current:
        ns.run(["ip", "link", "set", "dev", tun_if, "mtu", str(path.mtu)])
