"""Raw WireGuard peers for benchmarks/dataplane.py, path (e): the userspace implementation
(Debian's wireguard-go; these machines have no kernel WireGuard) in containers of the VPN
image, peer to peer with no hub.

Each peer is a container whose main process is `wireguard-go -f wg0`: it runs in the
container's namespaces and dies with it, so removing the container is the whole clean-up.
The interface is configured from the host: `ip` with nsenter into the network namespace,
`wg` (the image's binary) with nsenter into the network and mount namespaces, because
wireguard-go's control socket (/var/run/wireguard/wg0.sock) lives in the container's
filesystem. Argument lists only; private keys go to `wg` on stdin, never on a command line.
"""
from __future__ import annotations

import base64
import ipaddress
import subprocess
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

WG_IMAGE = "vpnagent/vpn:latest"
WG_PORT = 51820
WG_MTU = 1420  # the product default (and wg-quick's): 1500 - 20 (IPv4) - 8 (UDP) - 32 (WireGuard) - 20 spare for IPv6
KEEPALIVE_S = 25


class WireGuardError(RuntimeError):
    pass


def keypair() -> tuple[str, str]:
    """(private, public) X25519 keys, base64 as `wg` reads and prints them."""
    key = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


@dataclass
class WgPeer:
    container: object  # docker Container
    pid: int
    wan_ip: str  # its address on the scenario's network (where the encrypted UDP goes)
    wg_ip: str  # its address inside the tunnel
    private: str
    public: str

    def run(self, argv: list[str], stdin: str | None = None, mount: bool = False, timeout: float = 30) -> str:
        # the container's mount namespace has the container's /proc: `wg` reading the key from
        # /dev/stdin (/proc/self/fd/0) needs the pid namespace too (nsenter forks into it)
        ns = [f"--net=/proc/{self.pid}/ns/net"]
        if mount:
            ns += [f"--mount=/proc/{self.pid}/ns/mnt", f"--pid=/proc/{self.pid}/ns/pid"]
        proc = subprocess.run(["nsenter", *ns, "--", *argv], input=stdin, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise WireGuardError(f"{' '.join(argv[:3])} in {self.container.name}: "
                                 f"{(proc.stderr or proc.stdout).strip()[-400:]}")
        return proc.stdout

    def wg(self, argv: list[str], stdin: str | None = None) -> str:
        return self.run(["wg", *argv], stdin=stdin, mount=True)


def start_peer(client, name: str, network: str, wg_ip: str, labels: dict[str, str]) -> WgPeer:
    """A container running wireguard-go on `network`, wg0 with `wg_ip`/24, MTU 1420, up,
    listening on WG_PORT with a fresh private key; no peers yet (connect() adds them)."""
    c = client.containers.run(WG_IMAGE, ["wireguard-go", "-f", "wg0"], detach=True, name=name,
                              cap_add=["NET_ADMIN"], devices=["/dev/net/tun:/dev/net/tun"], network=network,
                              labels=labels)
    try:
        c.reload()
        pid = int(c.attrs["State"]["Pid"])
        private, public = keypair()
        peer = WgPeer(c, pid, c.attrs["NetworkSettings"]["Networks"][network]["IPAddress"], wg_ip, private, public)
        for _ in range(250):  # wg answers once wireguard-go has made wg0 and its control socket
            try:
                peer.wg(["show", "wg0"])
                break
            except WireGuardError:
                time.sleep(0.02)
        else:
            c.reload()
            raise WireGuardError(f"wireguard-go in {name} made no wg0 (`wg show wg0` failed 250 times over 5 s or "
                                 f"more; {c.status}): "
                                 f"{c.logs(tail=10).decode(errors='replace')}")
        peer.wg(["set", "wg0", "listen-port", str(WG_PORT), "private-key", "/dev/stdin"], stdin=private + "\n")
        peer.run(["ip", "address", "add", f"{wg_ip}/24", "dev", "wg0"])
        peer.run(["ip", "link", "set", "dev", "wg0", "mtu", str(WG_MTU), "up"])
        return peer
    except BaseException:
        c.remove(force=True)
        raise


def connect(a: WgPeer, b: WgPeer, endpoint_of_b: str | None = None, endpoint_of_a: str | None = None) -> None:
    """Make a and b each other's only peer (allowed-ips: the other's tunnel address),
    keepalive 25 s. The endpoints default to the other's WAN address and WG_PORT (a relay's
    address when the scenario puts one between them)."""
    for me, other, endpoint in ((a, b, endpoint_of_b), (b, a, endpoint_of_a)):
        me.wg(["set", "wg0", "peer", other.public, "allowed-ips", f"{other.wg_ip}/32",
               "endpoint", endpoint or f"{other.wan_ip}:{WG_PORT}",
               "persistent-keepalive", str(KEEPALIVE_S)])


def wait_handshake(a: WgPeer, b: WgPeer, timeout: float = 10.0) -> float:
    """Seconds until a has a handshake with b (pinging b once a second until then)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        # a ping may fail before the handshake: only the handshake decides
        subprocess.run(["nsenter", f"--net=/proc/{a.pid}/ns/net", "--", "ping", "-c", "1", "-W", "1", b.wg_ip],
                       capture_output=True, timeout=5)
        shakes = a.wg(["show", "wg0", "latest-handshakes"]).split()
        if len(shakes) == 2 and shakes[0] == b.public and int(shakes[1]) > 0:
            return time.monotonic() - t0
    raise WireGuardError(f"no WireGuard handshake {a.container.name} -> {b.container.name} within {timeout:.0f} s: "
                         f"{a.wg(['show', 'wg0'])}")


def tunnel_address(subnet: str, index: int) -> str:
    return str(ipaddress.IPv4Network(subnet).network_address + 1 + index)
