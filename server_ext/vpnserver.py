"""The OpenVPN server: its files on disk (config, ccd entries, CRL, the tls-crypt-v2 verify
hook) and its container. OpenVPN re-reads the CRL and the ccd entry on every connection
(and the hook looks for the entry), so revoking a node or allocating an IP is a file
write, not a restart."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .ovpn import VPNSettings, ccd_dir, management_socket, render_ccd, render_server_conf
from .pki import PKI, write_private, write_public
from .tlscrypt import VERIFY_HOOK, VERIFY_HOOK_NAME

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)
VPN_IMAGE = "vpnagent/vpn:latest"
MGMT_DIR = "/run/vpnagent"  # in the container; the socket is management.sock there
RUNTIME_DIR = "openvpn-run"  # on the host, beside the config directory: MGMT_DIR is mounted from it
# Several OpenVPN processes in one container: start one per config given as arguments; when
# one ends, stop the rest and exit, so Docker's restart policy brings the set back whole.
# A fixed script: the config paths arrive as its arguments, never pasted into it.
SUPERVISOR = ("bash", "-c",
              'trap \'kill -TERM $(jobs -p) 2>/dev/null; wait; exit 0\' TERM INT; '
              'for conf in "$@"; do openvpn --config "$conf" & done; '
              'wait -n; kill -TERM $(jobs -p) 2>/dev/null; wait; exit 1', "vpnagent-openvpn")


class Management:
    """OpenVPN's management interface over its unix socket(s), one per server process:
    who is connected, and disconnecting a removed node at once (a CRL alone only stops
    its next handshake)."""

    def __init__(self, socket_path: Path | list[Path], timeout: float = 5.0) -> None:
        self.paths = socket_path if isinstance(socket_path, list) else [socket_path]
        self.timeout = timeout

    def _command(self, command: str, until: tuple[str, ...]) -> str:
        """The command on every process; their answers joined (any reachable one is enough)."""
        answers, error = [], None
        for path in self.paths:
            try:
                answers.append(self._command_one(path, command, until))
            except OSError as exc:
                error = exc
        if not answers and error is not None:
            raise error
        return "\n".join(answers)

    def _command_one(self, path: Path, command: str, until: tuple[str, ...]) -> str:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(str(path))
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
        out = self._command(f"kill {common_name}", ("SUCCESS", "ERROR"))
        return any(line.startswith("SUCCESS") for line in out.splitlines())


class VPNServerError(RuntimeError):
    """The OpenVPN server did not start; the message holds its last log lines."""


class OpenVPNFiles:
    """The directory mounted read-only into the OpenVPN server container."""

    def __init__(self, directory: Path, pki: PKI, settings: VPNSettings) -> None:
        """Writes nothing: write_all makes the directories and files."""
        self.dir = Path(directory)
        self.pki = pki
        self.settings = settings

    @staticmethod
    def conf_name(index: int) -> str:
        return "server.conf" if index == 0 else f"server-{index}.conf"

    def write_all(self) -> None:
        for i in range(self.settings.processes):
            (self.dir / ccd_dir(i)).mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        cert, key = self.pki.server_pair()
        for i in range(self.settings.processes):
            conf = render_server_conf(self.settings, self.pki.ca_pem, cert, key, self.pki.tls_crypt_v2_server_key(),
                                      index=i)
            write_private(self.dir / self.conf_name(i), conf)
        # Here rather than in the image: the hook changes with the configs that call it, and the
        # directory is mounted read-only, so the container cannot change it.
        write_public(self.dir / VERIFY_HOOK_NAME, VERIFY_HOOK, mode=0o755)
        self.write_crl()

    @property
    def management_sockets(self) -> list[Path]:
        return self.socket_paths(self.dir, self.settings)

    @staticmethod
    def socket_paths(directory: Path, settings: VPNSettings) -> list[Path]:
        """OpenVPN's management sockets for the files in `directory`, without touching it."""
        return [Path(directory).parent / RUNTIME_DIR / management_socket(i) for i in range(settings.processes)]

    def write_crl(self, revoked: list | None = None) -> None:
        """Sign a CRL of `revoked` (serial, when) pairs if given, and publish it to OpenVPN."""
        if revoked is not None:
            self.pki.write_crl(revoked)
        write_public(self.dir / "crl.pem", self.pki.crl_pem())

    @property
    def runtime_dir(self) -> Path:
        """Read-write beside the read-only config: OpenVPN's management socket lives here."""
        return self.dir.parent / RUNTIME_DIR

    def write_ccd(self, common_name: str, vpn_ip: str) -> None:
        """The node's entry, in the ccd directory of the process that serves its IP only."""
        index = self.settings.process_of(vpn_ip)
        self.remove_ccd(common_name)
        write_public(self.dir / ccd_dir(index) / common_name, render_ccd(vpn_ip, self.settings.slices[index]))

    def remove_ccd(self, common_name: str) -> None:
        for i in range(self.settings.processes):
            (self.dir / ccd_dir(i) / common_name).unlink(missing_ok=True)


class OpenVPNServer:
    """The OpenVPN server container (image built by `vpnagent images build`)."""

    def __init__(self, files: OpenVPNFiles, name: str = "vpnagent-openvpn", network: str | None = None,
                 image: str = VPN_IMAGE, client: docker.DockerClient | None = None) -> None:
        self.files = files
        self.name = name
        self.network = network
        self.image = image
        if client is None:
            import docker  # only the path that runs the container needs the Docker SDK

            client = docker.from_env()
        self.docker = client

    def ensure_running(self, timeout: float = 30.0) -> None:
        import docker.errors

        self.files.write_all()
        try:
            c = self.docker.containers.get(self.name)
            if c.status == "running":
                return
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        s = self.files.settings
        mount = s.config_dir_in_container
        proto = "tcp" if s.proto == "tcp" else "udp"
        confs = [f"{mount}/{self.files.conf_name(i)}" for i in range(s.processes)]
        command = ["openvpn", "--config", confs[0]] if s.processes == 1 else [*SUPERVISOR, *confs]
        c = self.docker.containers.run(
            self.image, command, detach=True, name=self.name,
            cap_add=["NET_ADMIN"], devices=["/dev/net/tun:/dev/net/tun"],
            # between the processes' tun devices the container's kernel routes
            sysctls={"net.ipv4.ip_forward": "1"} if s.processes > 1 else None,
            volumes={str(self.files.dir.resolve()): {"bind": mount, "mode": "ro"},
                     str(self.files.runtime_dir.resolve()): {"bind": MGMT_DIR, "mode": "rw"}},
            network=self.network, restart_policy={"Name": "unless-stopped"},
            labels={"vpnagent.role": "openvpn-server"},
            ports=None if self.network else {f"{s.remote_port + i}/{proto}": s.remote_port + i
                                             for i in range(s.processes)},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = c.logs().decode(errors="replace")
            if logs.count("Initialization Sequence Completed") >= s.processes:
                log.info("OpenVPN server %s is up (%d process%s)", self.name, s.processes,
                         "es" if s.processes > 1 else "")
                return
            c.reload()
            if c.status in ("exited", "dead"):
                break
            time.sleep(0.05)
        tail = "\n".join(c.logs().decode(errors="replace").splitlines()[-15:])
        raise VPNServerError(f"OpenVPN server container {self.name} did not start within {timeout:.0f} s:\n{tail}")

    def addresses(self) -> list[str]:
        """The container's IPv4 addresses on its Docker networks."""
        c = self.docker.containers.get(self.name)
        return [n["IPAddress"] for n in c.attrs["NetworkSettings"]["Networks"].values() if n.get("IPAddress")]

    def stop(self) -> None:
        import docker.errors

        try:
            self.docker.containers.get(self.name).remove(force=True)
        except docker.errors.NotFound:
            pass
