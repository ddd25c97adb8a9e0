"""An in-memory fake of the runtime seam (vpnagent.runtime.Runtime), for unit tests of the
modules above it: the agent, the data plane and the doctor. It keeps containers, networks
and images as plain records and writes every call to `calls`, so a test can assert the
order of what happened. The Docker implementation is tested for real in
tests/integration/test_runtime.py."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Mapping

from vpnagent.runtime import Container, EngineError, Event, Image, Network, NetworkSpec, NotFound, WorkloadSpec


class FakeRuntime:
    def __init__(self) -> None:
        self.containers: dict[str, Container] = {}
        self.specs: dict[str, WorkloadSpec] = {}
        self.networks: dict[str, Network] = {}
        self.images: dict[str, Image] = {}
        self.log_text: dict[str, bytes] = {}
        self.log_calls: list[dict] = []
        self.log_follow: dict[str, list[bytes]] = {}  # container id -> chunks written while followed
        self.calls: list[str] = []
        self.exit_codes: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._pids = itertools.count(4242)

    # --- helpers for tests
    def add(self, container: Container) -> Container:
        self.containers[container.id] = container
        return container

    def set(self, ref: str, **changes) -> Container:
        c = self._get(ref)
        self.containers[c.id] = dataclasses.replace(c, **changes)
        return self.containers[c.id]

    def _get(self, ref: str) -> Container:
        for c in self.containers.values():
            if ref in (c.id, c.name):
                return c
        raise NotFound(f"no container {ref}")

    # --- Runtime
    def version(self) -> str:
        return "fake"

    def ensure_network(self, spec: NetworkSpec) -> Network:
        self.calls.append(f"ensure network {spec.name}")
        return self.networks.setdefault(spec.name, Network(spec.name, spec.subnet or "172.30.0.0/24", "172.30.0.1"))

    def network(self, name: str) -> Network | None:
        return self.networks.get(name)

    def remove_network(self, name: str) -> bool:
        self.calls.append(f"remove network {name}")
        return self.networks.pop(name, None) is not None

    def connect(self, network: str, container_id: str) -> None:
        self.calls.append(f"connect {container_id} to {network}")
        c = self._get(container_id)
        self.set(c.id, networks={**c.networks, network: f"172.30.0.{len(self.containers) + 1}"})

    def image(self, ref: str) -> Image | None:
        return self.images.get(ref)

    def _start(self, spec: WorkloadSpec, networks: Mapping[str, str]) -> Container:
        if any(c.name == spec.name for c in self.containers.values()):
            raise EngineError(f"the name {spec.name} is already in use")
        cid = f"c{next(self._ids)}"
        self.specs[cid] = spec
        self.calls.append(f"start {spec.name}")
        return self.add(Container(cid, spec.name, "running", dict(spec.labels), next(self._pids),
                                  f"sha256:{spec.image}", tuple(spec.command or ()),
                                  {m.target: m.source for m in spec.mounts}, dict(networks), 1.0))

    def start_holder(self, spec: WorkloadSpec) -> Container:
        return self._start(spec, {spec.network: f"172.30.0.{len(self.containers) + 2}"} if spec.network else {})

    def start_in_holder(self, holder_id: str, spec: WorkloadSpec) -> Container:
        return self._start(spec, {})

    def inspect(self, ref: str) -> Container | None:
        try:
            return self._get(ref)
        except NotFound:
            return None

    def list(self, labels: Mapping[str, str]) -> list[Container]:
        return [c for c in self.containers.values() if all(c.labels.get(k) == v for k, v in labels.items())]

    def wait(self, container_id: str, timeout: float | None = None) -> int:
        self._get(container_id)
        return self.exit_codes.get(container_id, 0)

    def logs(self, container_id: str, *, tail: int | None = None, since: float | None = None,
             until: float | None = None, timestamps: bool = False) -> bytes:
        self._get(container_id)
        self.log_calls.append({"tail": tail, "since": since, "until": until, "timestamps": timestamps})
        return self.log_text.get(container_id, b"")

    def log_stream(self, container_id: str, *, follow: bool = False) -> Iterator[bytes]:
        """The log so far; with `follow`, then each chunk of `log_follow` (what the container
        writes while it is followed), after which it exits, as a followed stream ends."""
        yield self.logs(container_id)
        if follow:
            self.log_calls[-1]["follow"] = True
            for chunk in self.log_follow.pop(container_id, []):
                self.log_text[container_id] = self.log_text.get(container_id, b"") + chunk
                yield chunk
            self.set(container_id, status="exited", pid=0)

    def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        c = self._get(container_id)
        self.calls.append(f"kill {c.name} {signal}")
        if signal == "SIGKILL":
            self.set(c.id, status="exited", pid=0)

    def stop(self, container_id: str, timeout: float = 3.0) -> None:
        c = self._get(container_id)
        self.calls.append(f"stop {c.name}")
        self.set(c.id, status="exited", pid=0)

    def remove(self, container_id: str) -> bool:
        try:
            c = self._get(container_id)
        except NotFound:
            return False
        self.calls.append(f"remove {c.name}")
        del self.containers[c.id]
        return True

    def events(self, labels: Mapping[str, str], since: float, until: float) -> Iterator[Event]:
        return iter(())

    def close(self) -> None:
        pass
