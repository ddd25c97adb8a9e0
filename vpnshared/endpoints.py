"""A WireGuard endpoint as both sides check it: the node when it reads `wireguard_endpoints`
from its config, the server when a node registers (PUT /node/wireguard). One rule, so a
config the node accepts is never refused by the server for its endpoints."""
from __future__ import annotations

import ipaddress

BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class EndpointError(ValueError):
    """An endpoint that does not parse, or one other nodes cannot send to; the message says
    which and how to write one."""


def unreachable(ip: ipaddress.IPv4Address, vpn_subnet: ipaddress.IPv4Network) -> str | None:
    """Why other nodes cannot use `ip` as a WireGuard endpoint, or None."""
    for test, why in ((ip.is_loopback, "a loopback address"), (ip.is_unspecified, "the unspecified address"),
                      (ip.is_multicast, "a multicast address"), (ip == BROADCAST, "the broadcast address"),
                      (ip.is_link_local, "a link-local address"),
                      (ip in vpn_subnet, f"inside the VPN subnet {vpn_subnet} (it would loop through the tunnel)")):
        if test:
            return f"{ip} is {why}"
    return None


def parse_endpoint(value: object, vpn_subnet: ipaddress.IPv4Network) -> str:
    """"a.b.c.d:port" as written canonically, with an address other nodes could send to
    from outside the VPN."""
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise EndpointError(f"endpoint {value!r} is not IPv4:port: give a dotted IPv4 address and a UDP port, "
                            "e.g. 192.0.2.10:51820") from None
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise EndpointError(f"endpoint {value!r} has no port within 1-65535 after the ':'")
    problem = unreachable(ip, vpn_subnet)
    if problem:
        raise EndpointError(f"endpoint {value!r}: {problem}; give an address other nodes reach outside the VPN")
    return f"{ip}:{int(port)}"
