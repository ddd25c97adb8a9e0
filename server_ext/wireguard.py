"""The server's side of the WireGuard data plane (issue 18): what a node may register as its
WireGuard peer (PUT /node/wireguard), and what other nodes are told about it (GET
/node/peers). The server never sees a private key and allocates nothing: the node keeps its
VPN IP, and a peer's allowed-ips are that IP/32, which the node works out itself.

Every value here comes from a node and ends up in other nodes' WireGuard configs, so it is
checked hard: a key is 32 bytes, an endpoint a public-looking IPv4 address and port. An
endpoint inside the VPN subnet is refused, as WireGuard would send its packets through the
OpenVPN tunnel it is meant to bypass."""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Any

from vpnshared.endpoints import EndpointError, parse_endpoint, unreachable

from .store import Collaboration, Node

MAX_ENDPOINTS = 8
KEY_LENGTH = 44  # standard base64 of 32 bytes, one '=' of padding


class RegistrationError(ValueError):
    """A registration the server refuses (HTTP 400); the message names the value and the fix."""


@dataclass(frozen=True)
class Registration:
    """A node's WireGuard peer, checked."""
    public_key: str
    port: int
    endpoints: tuple[str, ...]


def parse_registration(data: dict[str, Any], vpn_subnet: ipaddress.IPv4Network) -> Registration:
    """The body of PUT /node/wireguard, checked (types by api.body first)."""
    endpoints = data.get("endpoints") or []
    if len(endpoints) > MAX_ENDPOINTS:
        raise RegistrationError(f"field 'endpoints' lists {len(endpoints)} endpoints; give at most {MAX_ENDPOINTS}")
    checked = (check_endpoint(e, vpn_subnet) for e in endpoints)
    return Registration(check_public_key(data["public_key"]), check_port("field 'port'", data["port"]),
                        tuple(dict.fromkeys(checked)))


def check_public_key(value: str) -> str:
    """A WireGuard public key as `wg pubkey` prints it: standard base64 of 32 bytes."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(value) != KEY_LENGTH or len(raw) != 32:
        raise RegistrationError("field 'public_key' is not a WireGuard public key: give the standard base64 of its "
                                f"32 bytes ({KEY_LENGTH} characters, as `wg pubkey` prints it)")
    return value


def check_port(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RegistrationError(f"{what} is {value!r}: give a UDP port within 1-65535")
    return value


def check_endpoint(value: Any, vpn_subnet: ipaddress.IPv4Network) -> str:
    """"a.b.c.d:port", with an address other nodes could send to from outside the VPN (the
    rule the node's config applies too: vpnshared/endpoints.py)."""
    try:
        return parse_endpoint(value, vpn_subnet)
    except EndpointError as exc:
        raise RegistrationError(str(exc)) from None


def seen_ip(remote_addr: str | None, vpn_subnet: ipaddress.IPv4Network) -> str | None:
    """The address a registration came from, when other nodes could send to it: an IPv4
    address (IPv4-mapped IPv6 included) that passes the endpoint rules. Loopback (a local
    reverse proxy, tests) and anything else are not kept."""
    try:
        ip = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped
    if ip is None or unreachable(ip, vpn_subnet):
        return None
    return str(ip)


def register(node: Node, reg: Registration, seen: str | None, now: dt.datetime) -> bool:
    """Store a registration on the node; False when it already held exactly this (then
    nothing is written and no node is told)."""
    wanted = {"wg_public_key": reg.public_key, "wg_port": reg.port, "wg_endpoints": list(reg.endpoints),
              "wg_seen_ip": seen}
    changed = {name: value for name, value in wanted.items() if getattr(node, name) != value}
    for name, value in changed.items():
        setattr(node, name, value)
    if changed:
        node.wg_updated_at = now
    return bool(changed)


def plane_of(collab: Collaboration, default: str) -> str:
    """The data plane a collaboration's nodes use: its own, else the server's."""
    return collab.data_plane or default


def seen_endpoint(node: Node) -> str | None:
    return f"{node.wg_seen_ip}:{node.wg_port}" if node.wg_seen_ip and node.wg_port else None


def registration_view(node: Node, plane: str) -> dict[str, Any]:
    """What GET and PUT /node/wireguard answer."""
    return {"data_plane": plane, "public_key": node.wg_public_key, "port": node.wg_port,
            "endpoints": list(node.wg_endpoints or []), "seen": seen_endpoint(node)}


def peer_entry(peer: Node, plane: str, caller_id: int) -> dict[str, Any] | None:
    """The `wireguard` of one peer in GET /node/peers: its key and where to reach it, the
    address the server saw first (it worked from somewhere), then what it reported. None
    where no WireGuard link is to be made: plane openvpn, no key yet, or the caller itself."""
    if plane != "wireguard" or not peer.wg_public_key or peer.id == caller_id:
        return None
    candidates = [seen_endpoint(peer), *(peer.wg_endpoints or [])]
    return {"public_key": peer.wg_public_key, "endpoints": list(dict.fromkeys(c for c in candidates if c))}
