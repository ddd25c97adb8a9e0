"""The container-runtime seam: what the agent needs from a container engine, and nothing
more. Only this package talks to an engine (Docker today, in dockerengine.py); the agent,
the data plane and the doctor use `Runtime` and the plain records below.

The shape follows Kubernetes' CRI, so a Kubernetes implementation can sit behind it later:
a *holder* is a pod sandbox (it owns a network namespace on one network and runs nothing
that matters), an algorithm is a container started *in* a holder (it shares the holder's
namespace), and containers are found again by labels. A new implementation provides every
method of `Runtime`; docs/architecture.md ("Seams") says what each must guarantee."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Mapping, Protocol

RUNNING = "running"


def rfc3339_time(text: str) -> float:
    """Unix time of an engine timestamp ("2026-11-27T14:00:01.123456789Z"; Python takes at
    most microseconds, so the fraction is cut to 6 digits)."""
    match = re.fullmatch(r"(\S+?:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not match:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{base}.{(fraction or '0')[:6]:0<6}{zone}").timestamp()


class EngineError(RuntimeError):
    """The container engine refused or failed a call; the message says what and why."""


class NotFound(EngineError):
    """The container, image or network does not exist (any more)."""


@dataclass(frozen=True)
class Container:
    """One container as the engine reports it now (a snapshot; inspect again to refresh)."""

    id: str
    name: str
    status: str  # "running", "created", "exited", ... (RUNNING: the only one that matters)
    labels: Mapping[str, str] = field(default_factory=dict)
    pid: int = 0  # of its first process, in the host's pid namespace; 0 when not running
    image_id: str = ""
    command: tuple[str, ...] = ()
    mounts: Mapping[str, str] = field(default_factory=dict)  # path inside -> path on the host
    networks: Mapping[str, str] = field(default_factory=dict)  # network name -> its IPv4 address
    started_at: float | None = None  # Unix time

    @property
    def running(self) -> bool:
        return self.status == RUNNING


@dataclass(frozen=True)
class Image:
    id: str
    digests: tuple[str, ...] = ()  # registry digests ("name@sha256:..."), empty for a local build
    exposed_ports: tuple[str, ...] = ()  # as the image declares them ("8888/tcp")
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str  # IPv4 CIDR
    gateway: str  # the host's address on it (the node proxy listens there)


@dataclass(frozen=True)
class NetworkSpec:
    """The node's isolated network: internal (no route out), containers on it do not reach
    each other directly (every packet between runs passes the VPN client's rules)."""

    name: str
    bridge: str  # host interface name (the host firewall exception names it)
    subnet: str | None = None  # None: the engine picks one
    mtu: int | None = None
    allow_direct: bool = False  # test switch only: containers reach each other directly
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Mount:
    source: str  # on the host
    target: str  # inside the container
    read_only: bool = True


@dataclass(frozen=True)
class WorkloadSpec:
    """A container to start. Everything is explicit: no engine default is relied upon for
    isolation (capabilities, privileges, limits)."""

    name: str
    image: str
    command: tuple[str, ...] | None = None  # None: the image's own
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str | None = None  # for a holder: the network its namespace joins
    mounts: tuple[Mount, ...] = ()
    memory: int | None = None  # bytes; also the memory+swap limit (no swap)
    cpus: float | None = None
    pids: int | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ("NET_RAW",)  # no raw sockets: no forged source addresses
    devices: tuple[str, ...] = ()  # "/dev/net/tun"
    sysctls: Mapping[str, str] = field(default_factory=dict)
    no_new_privileges: bool = False
    bounded_logs: bool = False  # logs kept on the node's disk are capped (an algorithm's may be huge)


@dataclass(frozen=True)
class Event:
    """A container's life-cycle event ("start", "die", "destroy", ...)."""

    action: str
    container_id: str
    labels: Mapping[str, str]
    time: float


class Runtime(Protocol):
    """What the agent needs from a container engine. Every method raises NotFound for an
    object that does not exist (except where it returns None or False to say so) and
    EngineError for any other failure."""

    def version(self) -> str: ...

    # --- networks
    def ensure_network(self, spec: NetworkSpec) -> Network:
        """The network as spec says; an existing one of that name is kept as it is."""

    def network(self, name: str) -> Network | None: ...

    def remove_network(self, name: str) -> bool:
        """False when there was none."""

    def connect(self, network: str, container_id: str) -> None:
        """Attach a running container to one more network (the VPN client to the isolated one)."""

    # --- images
    def image(self, ref: str) -> Image | None:
        """A local image; None when it is not on this node (no registry is used)."""

    # --- containers
    def start_holder(self, spec: WorkloadSpec) -> Container:
        """A container that owns a network namespace on spec.network (a pod sandbox)."""

    def start_in_holder(self, holder_id: str, spec: WorkloadSpec) -> Container:
        """A container in the holder's network namespace (spec.network is ignored)."""

    def inspect(self, ref: str) -> Container | None:
        """By id or name; None when there is no such container."""

    def list(self, labels: Mapping[str, str]) -> list[Container]:
        """Containers carrying all these labels, running or not. One removed while it is
        listed is left out, not an error."""

    def wait(self, container_id: str, timeout: float | None = None) -> int:
        """Until the container exits; its exit code."""

    def logs(self, container_id: str, *, tail: int | None = None, since: float | None = None,
             until: float | None = None, timestamps: bool = False) -> bytes: ...

    def log_stream(self, container_id: str, *, follow: bool = False) -> Iterator[bytes]:
        """The whole log in chunks (read without holding it all in memory). With `follow`,
        also what the container writes from now on, until it exits (`vpnagent logs -f`)."""

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None: ...

    def stop(self, container_id: str, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""

    def remove(self, container_id: str) -> bool:
        """Stop and delete it; False when it was already gone."""

    def events(self, labels: Mapping[str, str], since: float, until: float) -> Iterator[Event]:
        """Life-cycle events of containers with these labels between two Unix times."""

    def close(self) -> None: ...


def connect_engine(timeout: float = 120.0) -> Runtime:
    """The runtime of this node: Docker, found the way the docker CLI finds it (DOCKER_HOST)."""
    from .dockerengine import DockerRuntime

    return DockerRuntime.from_env(timeout=timeout)
