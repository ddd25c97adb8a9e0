"""The Docker implementation of the runtime seam (docker-py). The only module of the agent
that imports docker: every docker error becomes NotFound or EngineError here."""
from __future__ import annotations

import contextlib
import ipaddress
from typing import Any, Iterator, Mapping

import docker
import docker.errors
import requests.exceptions

from . import Container, EngineError, Event, Image, Network, NetworkSpec, NotFound, WorkloadSpec, rfc3339_time

# Docker keeps a bounded log per container on the node's disk when the spec asks for it.
BOUNDED_LOG = docker.types.LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"})


@contextlib.contextmanager
def _engine(what: str) -> Iterator[None]:
    """docker-py's exceptions (and requests' below it) as the seam's two error types."""
    try:
        yield
    except (docker.errors.NotFound, docker.errors.ImageNotFound) as exc:
        raise NotFound(f"{what}: {_explain(exc)}") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise EngineError(f"{what}: {_explain(exc)}") from None


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)[:500]


def _time(text: str | None) -> float | None:
    """Docker's zero time ("0001-01-01T00:00:00Z") is "never"."""
    return None if not text or text.startswith("0001-") else rfc3339_time(text)


def _container(c: Any) -> Container:
    attrs = c.attrs or {}
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    nets = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return Container(
        id=c.id, name=(attrs.get("Name") or c.name or "").lstrip("/"), status=state.get("Status") or c.status,
        labels=dict(config.get("Labels") or {}), pid=int(state.get("Pid") or 0), image_id=attrs.get("Image", ""),
        command=tuple(config.get("Cmd") or ()),
        mounts={m.get("Destination", ""): m.get("Source", "") for m in attrs.get("Mounts") or []},
        networks={name: (n or {}).get("IPAddress", "") for name, n in nets.items()},
        started_at=_time(state.get("StartedAt")),
    )


def _run_kwargs(spec: WorkloadSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        image=spec.image, name=spec.name, detach=True, environment=dict(spec.env), labels=dict(spec.labels),
        cap_drop=list(spec.cap_drop) or None, cap_add=list(spec.cap_add) or None,
        devices=[f"{d}:{d}" for d in spec.devices] or None, sysctls=dict(spec.sysctls) or None,
        volumes={m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts} or None,
        pids_limit=spec.pids, security_opt=["no-new-privileges"] if spec.no_new_privileges else None,
        log_config=BOUNDED_LOG if spec.bounded_logs else None,
    )
    if spec.command is not None:
        kwargs["command"] = list(spec.command)
    if spec.memory is not None:
        kwargs.update(mem_limit=spec.memory, memswap_limit=spec.memory)
    if spec.cpus is not None:
        kwargs["nano_cpus"] = int(spec.cpus * 1e9)
    return {k: v for k, v in kwargs.items() if v is not None}


class DockerRuntime:
    """Runtime on a Docker engine. Holders are containers on the isolated network; an
    algorithm joins its holder's namespace with network_mode container:<holder>."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def from_env(cls, timeout: float = 120.0) -> "DockerRuntime":
        with _engine("connect to the Docker engine (start dockerd, or fix DOCKER_HOST)"):
            return cls(docker.from_env(timeout=int(timeout)))

    def version(self) -> str:
        with _engine("docker version"):
            return str(self.client.version().get("Version", "?"))

    # --- networks
    def ensure_network(self, spec: NetworkSpec) -> Network:
        found = self.network(spec.name)
        if found is not None:
            return found
        ipam = None
        if spec.subnet:
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=spec.subnet)])
        options = {"com.docker.network.bridge.name": spec.bridge,
                   "com.docker.network.bridge.enable_icc": str(spec.allow_direct).lower()}
        if spec.mtu:
            options["com.docker.network.driver.mtu"] = str(spec.mtu)
        with _engine(f"create network {spec.name}"):
            self.client.networks.create(spec.name, driver="bridge", internal=True, ipam=ipam, options=options,
                                        labels=dict(spec.labels))
        made = self.network(spec.name)
        if made is None:
            raise EngineError(f"network {spec.name} vanished right after it was created")
        return made

    def network(self, name: str) -> Network | None:
        try:
            with _engine(f"inspect network {name}"):
                net = self.client.networks.get(name)
        except NotFound:
            return None
        conf = ((net.attrs.get("IPAM") or {}).get("Config") or [{}])[0]
        subnet = conf.get("Subnet", "")
        gateway = conf.get("Gateway") or ""
        if not gateway and subnet:
            gateway = str(next(ipaddress.IPv4Network(subnet).hosts()))
        return Network(name, subnet, gateway)

    def remove_network(self, name: str) -> bool:
        try:
            with _engine(f"remove network {name}"):
                self.client.networks.get(name).remove()
        except NotFound:
            return False
        return True

    def connect(self, network: str, container_id: str) -> None:
        with _engine(f"attach container {container_id[:12]} to network {network}"):
            self.client.networks.get(network).connect(container_id)

    # --- images
    def image(self, ref: str) -> Image | None:
        try:
            with _engine(f"inspect image {ref}"):
                img = self.client.images.get(ref)
        except NotFound:
            return None
        config = img.attrs.get("Config") or {}
        return Image(img.id, tuple(img.attrs.get("RepoDigests") or ()),
                     tuple(config.get("ExposedPorts") or ()), dict(config.get("Labels") or {}))

    # --- containers
    def start_holder(self, spec: WorkloadSpec) -> Container:
        with _engine(f"start container {spec.name} from {spec.image}"):
            c = self.client.containers.run(network=spec.network, **_run_kwargs(spec))
            c.reload()
        return _container(c)

    def start_in_holder(self, holder_id: str, spec: WorkloadSpec) -> Container:
        with _engine(f"start container {spec.name} from {spec.image}"):
            c = self.client.containers.run(network_mode=f"container:{holder_id}", **_run_kwargs(spec))
            c.reload()
        return _container(c)

    def inspect(self, ref: str) -> Container | None:
        try:
            with _engine(f"inspect container {ref}"):
                return _container(self.client.containers.get(ref))
        except NotFound:
            return None

    def list(self, labels: Mapping[str, str]) -> list[Container]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with _engine("list containers"):
            # ignore_removed: a run's own teardown may remove its containers while this lists them
            return [_container(c) for c in self.client.containers.list(all=True, filters=filters,
                                                                       ignore_removed=True)]

    def wait(self, container_id: str, timeout: float | None = None) -> int:
        with _engine(f"wait for container {container_id[:12]}"):
            return int(self.client.containers.get(container_id).wait(timeout=timeout)["StatusCode"])

    def logs(self, container_id: str, *, tail: int | None = None, since: float | None = None,
             until: float | None = None, timestamps: bool = False) -> bytes:
        kwargs: dict[str, Any] = {"timestamps": timestamps}
        if tail is not None:
            kwargs["tail"] = tail
        if since is not None:
            kwargs["since"] = since
        if until is not None:
            kwargs["until"] = until
        with _engine(f"read the log of container {container_id[:12]}"):
            return self.client.containers.get(container_id).logs(**kwargs)

    def log_stream(self, container_id: str, *, follow: bool = False) -> Iterator[bytes]:
        with _engine(f"read the log of container {container_id[:12]}"):
            stream = self.client.containers.get(container_id).logs(stream=True, follow=follow)
        with _engine(f"read the log of container {container_id[:12]}"):
            yield from stream

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        with _engine(f"send {signal} to container {container_id[:12]}"):
            self.client.containers.get(container_id).kill(signal=signal)

    def stop(self, container_id: str, timeout: float = 3.0) -> None:
        with _engine(f"stop container {container_id[:12]}"):
            self.client.containers.get(container_id).stop(timeout=int(timeout))

    def remove(self, container_id: str) -> bool:
        try:
            with _engine(f"remove container {container_id[:12]}"):
                self.client.containers.get(container_id).remove(force=True)
        except NotFound:
            return False
        except EngineError as exc:
            if "is already in progress" in str(exc):  # another thread removes it right now
                return False
            raise
        return True

    def events(self, labels: Mapping[str, str], since: float, until: float) -> Iterator[Event]:
        filters = {"type": "container", "label": [f"{k}={v}" for k, v in labels.items()]}
        with _engine("read container events"):
            stream = self.client.events(since=since, until=until, filters=filters, decode=True)
        with _engine("read container events"):
            for ev in stream:
                actor = ev.get("Actor") or {}
                yield Event(str(ev.get("Action") or ev.get("status") or ""), str(actor.get("ID") or ev.get("id")),
                            dict(actor.get("Attributes") or {}), ev.get("timeNano", 0) / 1e9 or float(ev.get("time", 0)))

    def close(self) -> None:
        self.client.close()

