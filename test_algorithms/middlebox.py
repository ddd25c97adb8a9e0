"""A middlebox in front of the OpenVPN server, as real networks have: it drops every IP
fragment (firewalls, NAT gateways and cloud load balancers often do; one lost fragment
loses the whole packet). iptables cannot show this (conntrack reassembles fragments before
its tables see them), so it is an nftables netdev table on the host side of the server
container's veth, with an ingress chain (server -> nodes) and an egress chain (nodes ->
server): every packet to or from the server passes one of them."""
from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field

from vpnagent.netns import Netns


class MiddleboxError(RuntimeError):
    pass


def host_veth(container_pid: int, ifname: str = "eth0") -> str:
    """The host-side name of a container interface's veth peer."""
    links = json.loads(Netns(container_pid).run(["ip", "-j", "link", "show", ifname]).stdout)
    peer_index = links[0]["link_index"]
    for link in json.loads(Netns(None).run(["ip", "-j", "link", "show"]).stdout):
        if link["ifindex"] == peer_index:
            return link["ifname"]
    raise MiddleboxError(f"no host interface with index {peer_index} (peer of {ifname} in pid {container_pid})")


@dataclass
class FragmentDropper:
    device: str
    table: str = field(default_factory=lambda: f"vatest_frag_{uuid.uuid4().hex[:6]}")

    def install(self) -> "FragmentDropper":
        rule = "ip frag-off & 0x3fff != 0 counter drop"  # any fragment: MF set or an offset
        for argv in (["add", "table", "netdev", self.table],
                     ["add", "chain", "netdev", self.table, "in",
                      f"{{ type filter hook ingress device {self.device} priority 0; }}"],
                     ["add", "chain", "netdev", self.table, "out",
                      f"{{ type filter hook egress device {self.device} priority 0; }}"],
                     ["add", "rule", "netdev", self.table, "in", *rule.split()],
                     ["add", "rule", "netdev", self.table, "out", *rule.split()]):
            _nft(argv)
        return self

    def dropped(self) -> int:
        """Fragments dropped so far, both ways."""
        data = json.loads(_nft(["-j", "list", "table", "netdev", self.table]))
        return sum(item["rule"]["expr"][-2]["counter"]["packets"] for item in data["nftables"] if "rule" in item)

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "netdev", self.table], capture_output=True, check=False)


def _nft(argv: list[str]) -> str:
    proc = subprocess.run(["nft", *argv], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise MiddleboxError(f"nft {' '.join(argv[:4])} failed: {proc.stderr.strip()}; apt-get install nftables")
    return proc.stdout
