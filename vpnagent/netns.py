"""Entering a container's network namespace from the host. One fork of nsenter (~1-3 ms)
instead of a helper container per command (~70 ms); always argument lists, never a shell.
pyroute2 was measured for the link, address and route calls and not taken (issue 15): its
safe use (a fresh socket per call) saves ~1.4 ms a route and has no timeout, its fast use
(a socket kept per namespace) keeps dead namespaces alive and was seen to hang, while a
forked nsenter is bounded by `timeout` and fails clearly when the process is gone
(benchmarks/netns_calls.py, docs/performance.md)."""
from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass


class NetnsError(RuntimeError):
    """A command inside a network namespace failed; the message holds its stderr."""


@dataclass(frozen=True)
class Netns:
    """The network namespace of a process (a container's init), addressed by pid."""

    pid: int | None  # None = the host's own namespace

    def run(self, argv: list[str], stdin: str | None = None, check: bool = True,
            mount: bool = False) -> subprocess.CompletedProcess:
        """`mount`: also enter the process's mount namespace, so `argv[0]` and the files it
        opens are the container's (wg finds wireguard-go's socket under its /var/run)."""
        enter = [f"--net=/proc/{self.pid}/ns/net"] + ([f"--mount=/proc/{self.pid}/ns/mnt"] if mount else [])
        cmd = argv if self.pid is None else ["nsenter", *enter, "--", *argv]
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
        except FileNotFoundError as exc:
            raise NetnsError(f"{cmd[0]} is not installed; apt-get install iproute2 iptables util-linux") from exc
        if check and proc.returncode != 0:
            where = "host" if self.pid is None else f"netns of pid {self.pid}"
            raise NetnsError(f"{' '.join(argv[:3])} failed in {where}: {proc.stderr.strip()[:500]}")
        return proc

    def ipv4_addresses(self, ifname: str | None = None) -> dict[str, list[ipaddress.IPv4Interface]]:
        """Interface name → IPv4 addresses, read from `ip -j` (JSON, not human output)."""
        argv = ["ip", "-j", "-4", "addr", "show"] + (["dev", ifname] if ifname else [])
        proc = self.run(argv, check=False)
        if proc.returncode != 0:
            return {}
        result: dict[str, list[ipaddress.IPv4Interface]] = {}
        for link in json.loads(proc.stdout or "[]"):
            addrs = [
                ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
                for a in link.get("addr_info", [])
                if a.get("family") == "inet"
            ]
            result[link["ifname"]] = addrs
        return result

    def link_mtu(self, ifname: str) -> int | None:
        """The link's current MTU; None when there is no such link."""
        proc = self.run(["ip", "-j", "link", "show", "dev", ifname], check=False)
        links = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
        return int(links[0]["mtu"]) if links else None

    def interface_in(self, subnet: ipaddress.IPv4Network) -> str | None:
        """The interface holding an address in `subnet` (which docker network is which eth)."""
        for name, addrs in self.ipv4_addresses().items():
            if any(a.ip in subnet for a in addrs):
                return name
        return None

    def set_default_route(self, gateway: str) -> None:
        self.run(["ip", "route", "replace", "default", "via", gateway])

    def iptables_save(self) -> str:
        return self.run(["iptables-save"]).stdout

    def iptables_restore(self, batch: str) -> None:
        """Apply one batch atomically; --noflush keeps everything we did not name."""
        self.run(["iptables-restore", "-w", "5", "--noflush"], stdin=batch)
