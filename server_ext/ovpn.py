"""Rendering OpenVPN files from data: the server config, one client-config-dir entry per
node (its static VPN IP), and the inline client .ovpn handed to a node. A node runs only
what vpnagent/ovpncheck.py allows; every client config rendered here has to pass it."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from vpnshared.openvpn import CIPHERS, HOST

from .config import default
from .pki import SERVER_CN
from .tlscrypt import VERIFY_HOOK_NAME

CIPHER = "AES-256-GCM"


@dataclass(frozen=True)
class Profile:
    """Data-plane tuning, chosen by benchmarks/dataplane.py (docs/performance.md). Both
    ends get the same values; `None` leaves OpenVPN's default."""

    cipher: str = CIPHER
    tun_mtu: int | None = None
    mssfix: int | None = None
    sndbuf: int | None = None
    rcvbuf: int | None = None
    txqueuelen: int | None = None
    fast_io: bool = False
    fragment: int | None = None  # OpenVPN's own fragmentation of big tunnel packets (UDP only)

    def __post_init__(self) -> None:
        if not re.fullmatch(CIPHERS, self.cipher):
            raise ValueError(f"openvpn_profile cipher {self.cipher!r}: nodes accept AEAD data ciphers only "
                             "(AES-128-GCM, AES-192-GCM, AES-256-GCM, CHACHA20-POLY1305; ':'-separated)")

    def lines(self, proto: str) -> list[str]:
        out = []
        for key, value in (("tun-mtu", self.tun_mtu), ("mssfix", self.mssfix), ("sndbuf", self.sndbuf),
                           ("rcvbuf", self.rcvbuf), ("txqueuelen", self.txqueuelen)):
            if value is not None:
                out.append(f"{key} {int(value)}")
        if self.fast_io and proto == "udp":
            out.append("fast-io")
        if self.fragment is not None and proto == "udp":
            out.append(f"fragment {int(self.fragment)}")
        return out


VANTAGE6_PROFILE = Profile()  # UDP, AES-256-GCM, default buffers and MTU
# The default must work on any internet path: tun-mtu stays OpenVPN's 1500 and OpenVPN's own
# MSS clamp (1492-byte packets) stays on, so no tunnel packet is split into IP fragments on a
# 1500-byte path (many networks drop fragments). Each node measures its own path at connect
# and clamps further where it is smaller (vpnagent/dataplane/pathmtu.py). Within that envelope the
# buffers and fast-io were kept by measurement (docs/performance.md). A jumbo profile
# (tun_mtu 9000, mssfix 0) is faster on a LAN that carries it, and is the operator's choice.
DEFAULT_PROFILE = Profile(sndbuf=524288, rcvbuf=524288, fast_io=True)
# For vantage6's own nodes (the sidecar, docs/vantage6.md): their vpn-client runs OpenVPN
# without vpnagent's path-MTU clamp, so the tunnel itself must fit a 1500-byte path that
# drops fragments. tun-mtu 1400: the largest inner packet plus OpenVPN's UDP overhead
# (AES-GCM, tls-crypt-v2: 52 bytes over IPv4, 72 over IPv6) stays under 1500.
VANTAGE6_NODE_PROFILE = Profile(tun_mtu=1400, sndbuf=524288, rcvbuf=524288, fast_io=True)


@dataclass(frozen=True)
class VPNSettings:
    """What the OpenVPN server looks like from outside and in. With processes > 1 the
    subnet is cut into that many slices, one OpenVPN process each (its own port,
    remote_port + i, and tun device), and the kernel in the server container routes between
    them: OpenVPN is single-threaded, so one process per core lets the data plane use them."""
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network(default("vpn_subnet"))
    remote_host: str = default("openvpn_remote_host")
    remote_port: int = default("openvpn_remote_port")
    proto: str = default("openvpn_proto")  # udp or tcp
    config_dir_in_container: str = "/etc/openvpn/vpnagent"
    profile: Profile = DEFAULT_PROFILE
    processes: int = default("openvpn_processes")
    port_share: tuple[str, int] | None = None  # one-port mode: non-OpenVPN TCP goes to the API here

    def __post_init__(self) -> None:
        if self.proto not in ("udp", "tcp"):
            raise ValueError(f"openvpn proto must be udp or tcp, got {self.proto!r}")
        if not re.fullmatch(HOST, self.remote_host):
            raise ValueError(f"openvpn remote host {self.remote_host!r} must be a single word of letters, digits "
                             "and . _ : - (a DNS name or an IP address)")
        if not (self.config_dir_in_container.startswith("/") and re.fullmatch(r"[A-Za-z0-9/._-]+",
                                                                               self.config_dir_in_container)):
            raise ValueError(f"openvpn config dir {self.config_dir_in_container!r} must be an absolute path of "
                             "letters, digits and / . _ - (it is part of the verify hook's command line)")
        if not 1 <= self.processes <= 16:
            raise ValueError("openvpn processes must be within 1-16")
        if not (1 <= int(self.remote_port) and int(self.remote_port) + self.processes - 1 <= 65535):
            raise ValueError("openvpn port must be within 1-65535")
        if self.port_share and (self.proto != "tcp" or self.processes != 1):
            raise ValueError("one-port mode (port-share) needs proto tcp and a single OpenVPN process")
        if self.processes > 1 and self.subnet.prefixlen + (self.processes - 1).bit_length() > 29:
            raise ValueError(f"vpn subnet {self.subnet} is too small for {self.processes} OpenVPN processes")

    @property
    def slices(self) -> list[ipaddress.IPv4Network]:
        """Each process's share of the subnet (the whole subnet for one process)."""
        if self.processes == 1:
            return [self.subnet]
        return list(self.subnet.subnets(prefixlen_diff=(self.processes - 1).bit_length()))[:self.processes]

    def process_of(self, ip: str) -> int:
        addr = ipaddress.IPv4Address(ip)
        for i, net in enumerate(self.slices):
            if addr in net:
                return i
        raise ValueError(f"{ip} is outside the VPN subnet {self.subnet}")

    @property
    def server_ips(self) -> set[str]:
        """The servers' own tun addresses (.1 of each slice): never given to a node."""
        return {str(next(net.hosts())) for net in self.slices}


def _inline(tag: str, pem: str) -> str:
    return f"<{tag}>\n{pem.strip()}\n</{tag}>"


def ccd_dir(index: int) -> str:
    return "ccd" if index == 0 else f"ccd-{index}"


def management_socket(index: int) -> str:
    return "management.sock" if index == 0 else f"management-{index}.sock"


def render_server_conf(s: VPNSettings, ca: str, cert: str, key: str, tls_crypt_v2: str, index: int = 0) -> str:
    d = s.config_dir_in_container
    net = s.slices[index]
    lines = [
        f"port {s.remote_port + index}",
        "proto " + ("tcp-server" if s.proto == "tcp" else "udp"),
        f"dev tun{index}",
        "topology subnet",
        f"server {net.network_address} {net.netmask}",
        # Static IPs come from ccd files the server writes; a certificate without one is refused
        # (and a node whose IP belongs to another process has no entry here).
        f"client-config-dir {d}/{ccd_dir(index)}",
        "ccd-exclusive",
        f"crl-verify {d}/crl.pem",
        "client-to-client",
        "keepalive 10 60",
        "dh none",
        f"data-ciphers {s.profile.cipher}",
        "remote-cert-tls client",
        "verify-client-cert require",
        # The one script OpenVPN may run, on the server only: before TLS it refuses a client
        # key whose node has no ccd entry here (removed, or served by another process).
        "script-security 2",
        f'tls-crypt-v2-verify "/bin/sh {d}/{VERIFY_HOOK_NAME} {d}/{ccd_dir(index)}"',
        "persist-key",
        "persist-tun",
        f"status /tmp/openvpn-status-{index}.log 5",
        f"management /run/vpnagent/{management_socket(index)} unix",
        "verb 3",
    ]
    if s.processes > 1:
        # the other slices are reached through this process and the container's routing
        lines.append(f'push "route {s.subnet.network_address} {s.subnet.netmask}"')
    if s.port_share:
        lines.append(f"port-share {s.port_share[0]} {s.port_share[1]}")
    lines += s.profile.lines(s.proto)
    if s.proto == "tcp":
        lines.append("tcp-nodelay")  # without it small packets wait ~25 ms
    else:
        # On a restart the server tells every client to reconnect at once instead of each
        # finding out by its ping timeout (up to 60 s later).
        lines.append("explicit-exit-notify 1")
    lines += [_inline("ca", ca), _inline("cert", cert), _inline("key", key),
              _inline("tls-crypt-v2", tls_crypt_v2)]
    return "\n".join(lines) + "\n"


def render_ccd(vpn_ip: str, subnet: ipaddress.IPv4Network) -> str:
    ip = ipaddress.IPv4Address(vpn_ip)
    if ip not in subnet:
        raise ValueError(f"{ip} is outside the VPN subnet {subnet}")
    return f"ifconfig-push {ip} {subnet.netmask}\n"


def render_client(s: VPNSettings, ca: str, cert: str, key: str, tls_crypt_v2: str, index: int = 0) -> str:
    """The node's config; `tls_crypt_v2` is a client key made for this node (pki)."""
    lines = [
        "client",
        "dev tun",
        "proto " + ("tcp-client" if s.proto == "tcp" else "udp"),
        f"remote {s.remote_host} {s.remote_port + index}",
        "nobind",
        "resolv-retry infinite",
        "connect-retry 1 5",
        "remote-cert-tls server",
        # only the OpenVPN server's certificate: any other serverAuth one of our CA (the
        # API's HTTPS certificate) must not pass as the VPN server
        f"verify-x509-name {SERVER_CN} name",
        f"data-ciphers {s.profile.cipher}",
        "persist-key",
        "persist-tun",
        "verb 3",
        *s.profile.lines(s.proto),
        # a stopping node tells the server at once, instead of holding its session until
        # the keepalive times out (UDP only: TCP sees the connection close)
        *(["explicit-exit-notify 1"] if s.proto == "udp" else []),
    ]
    lines += [_inline("ca", ca), _inline("cert", cert), _inline("key", key),
              _inline("tls-crypt-v2", tls_crypt_v2)]
    return "\n".join(lines) + "\n"
