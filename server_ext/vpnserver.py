"""The OpenVPN server: its files on disk (config, ccd entries, CRL) and its container.
OpenVPN re-reads the CRL and the ccd entry on every connection, so revoking a node or
allocating an IP is a file write, not a restart."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import docker
import docker.errors

from .ovpn import VPNSettings, render_ccd, render_server_conf
from .pki import PKI, write_private, write_public

log = logging.getLogger(__name__)
VPN_IMAGE = "vpnagent/vpn:latest"
MGMT_DIR = "/run/vpnagent"  # in the container; the socket is management.sock there


class Management:
    """OpenVPN's management interface over its unix socket: who is connected, and
    disconnecting a removed node at once (a CRL alone only stops its next handshake)."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.path = socket_path
        self.timeout = timeout

    def _command(self, command: str, until: tuple[str, ...]) -> str:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(str(self.path))
            reader = sock.makefile("r", encoding="utf-8", errors="replace")
            reader.readline()  # the >INFO banner
            sock.sendall(command.encode() + b"\n")
            lines = []
            for _ in range(100000):
                line = reader.readline()
                if not line:
                    break
                if line.startswith(">"):
                    continue  # real-time notifications
                lines.append(line.rstrip("\r\n"))
                if line.startswith(until):
                    break
            sock.sendall(b"quit\n")
            return "\n".join(lines)

    def connected(self) -> set[str]:
        """Common names of connected clients (status format 3: tab-separated)."""
        out = self._command("status 3", ("END",))
        return {line.split("\t")[1] for line in out.splitlines() if line.startswith("CLIENT_LIST\t")}

    def kill(self, common_name: str) -> bool:
        if any(c in common_name for c in " \t\r\n"):
            raise ValueError("a common name has no whitespace")
        return self._command(f"kill {common_name}", ("SUCCESS", "ERROR")).startswith("SUCCESS")


class VPNServerError(RuntimeError):
    """The OpenVPN server did not start; the message holds its last log lines."""


class OpenVPNFiles:
    """The directory mounted read-only into the OpenVPN server container."""

    def __init__(self, directory: Path, pki: PKI, settings: VPNSettings) -> None:
        self.dir = Path(directory)
        self.pki = pki
        self.settings = settings
        (self.dir / "ccd").mkdir(parents=True, exist_ok=True)

    def write_all(self) -> None:
        cert, key = self.pki.server_pair()
        conf = render_server_conf(self.settings, self.pki.ca_pem, cert, key, self.pki.tls_crypt_key())
        write_private(self.dir / "server.conf", conf)
        self.write_crl()

    def write_crl(self, revoked: list | None = None) -> None:
        """Sign a CRL of `revoked` (serial, when) pairs if given, and publish it to OpenVPN."""
        if revoked is not None:
            self.pki.write_crl(revoked)
        write_public(self.dir / "crl.pem", self.pki.crl_pem())

    @property
    def runtime_dir(self) -> Path:
        """Read-write beside the read-only config: OpenVPN's management socket lives here."""
        path = self.dir.parent / "openvpn-run"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def write_ccd(self, common_name: str, vpn_ip: str) -> None:
        write_public(self.dir / "ccd" / common_name, render_ccd(vpn_ip, self.settings.subnet))

    def remove_ccd(self, common_name: str) -> None:
        (self.dir / "ccd" / common_name).unlink(missing_ok=True)


class OpenVPNServer:
    """The OpenVPN server container (image built by `vpnagent images build`)."""

    def __init__(self, files: OpenVPNFiles, name: str = "vpnagent-openvpn", network: str | None = None,
                 image: str = VPN_IMAGE, client: docker.DockerClient | None = None) -> None:
        self.files = files
        self.name = name
        self.network = network
        self.image = image
        self.docker = client or docker.from_env()

    def ensure_running(self, timeout: float = 30.0) -> None:
        self.files.write_all()
        try:
            c = self.docker.containers.get(self.name)
            if c.status == "running":
                return
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        mount = self.files.settings.config_dir_in_container
        proto = "tcp" if self.files.settings.proto == "tcp" else "udp"
        c = self.docker.containers.run(
            self.image, ["openvpn", "--config", f"{mount}/server.conf"], detach=True, name=self.name,
            cap_add=["NET_ADMIN"], devices=["/dev/net/tun:/dev/net/tun"],
            volumes={str(self.files.dir.resolve()): {"bind": mount, "mode": "ro"},
                     str(self.files.runtime_dir.resolve()): {"bind": MGMT_DIR, "mode": "rw"}},
            network=self.network, restart_policy={"Name": "unless-stopped"},
            labels={"vpnagent.role": "openvpn-server"},
            ports=None if self.network else {f"{self.files.settings.remote_port}/{proto}": self.files.settings.remote_port},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = c.logs().decode(errors="replace")
            if "Initialization Sequence Completed" in logs:
                log.info("OpenVPN server %s is up", self.name)
                return
            c.reload()
            if c.status in ("exited", "dead"):
                break
            time.sleep(0.05)
        tail = "\n".join(c.logs().decode(errors="replace").splitlines()[-15:])
        raise VPNServerError(f"OpenVPN server container {self.name} did not start within {timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        try:
            self.docker.containers.get(self.name).remove(force=True)
        except docker.errors.NotFound:
            pass
