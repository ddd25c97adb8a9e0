"""Which ports a run exposes (from untrusted image metadata) and which VPN-side port each
gets. Allocation is kept in a file so a restarted agent never hands out a port twice."""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8888
MAX_PORTS_PER_RUN = 32
LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class PortError(ValueError):
    """A run's ports cannot be served; only that run fails."""


@dataclass(frozen=True)
class PortSpec:
    """A TCP port the algorithm listens on inside its container, and its label."""

    port: int
    label: str | None


def exposed_ports(image_config: dict[str, Any] | None) -> list[PortSpec]:
    """Ports from the image's EXPOSE (TCP only) with labels `p<port>=<label>`; 8888 when the
    image exposes none. Image metadata is untrusted: odd values are rejected, not guessed."""
    config = image_config or {}
    exposed = config.get("ExposedPorts") or {}
    labels = config.get("Labels") or {}
    if not isinstance(exposed, dict) or not isinstance(labels, dict):
        raise PortError("image metadata is malformed (ExposedPorts/Labels must be mappings)")
    ports: set[int] = set()
    for key in exposed:
        number, _, proto = str(key).partition("/")
        if (proto or "tcp") != "tcp":
            continue  # only TCP is forwarded over the VPN
        if not number.isdigit() or not 1 <= int(number) <= 65535:
            raise PortError(f"image exposes an invalid port {key!r}")
        ports.add(int(number))
    if not ports:
        ports = {DEFAULT_PORT}
    if len(ports) > MAX_PORTS_PER_RUN:
        raise PortError(f"image exposes {len(ports)} ports; at most {MAX_PORTS_PER_RUN} are forwarded per run")
    specs = []
    for port in sorted(ports):
        label = labels.get(f"p{port}")
        if label is not None and not LABEL_RE.match(str(label)):
            raise PortError(f"label p{port} must be 1-64 of A-Z a-z 0-9 _ . - (got {str(label)[:40]!r})")
        specs.append(PortSpec(port, label))
    return specs


class PortAllocator:
    """Exact, persistent allocation of VPN-side ports from a range, keyed by run id."""

    def __init__(self, low: int, high: int, state_file: Path) -> None:
        self.low, self.high = low, high
        self.state_file = state_file
        self._lock = threading.Lock()
        self._by_port: dict[int, int] = self._load()

    def _load(self) -> dict[int, int]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PortError(f"port state {self.state_file} is unreadable ({exc}); remove it after "
                            "`vpnagent cleanup` to start fresh") from exc
        return {int(port): int(run) for port, run in raw.items()}

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(p): r for p, r in sorted(self._by_port.items())}))
        os.replace(tmp, self.state_file)

    def allocate(self, run_id: int, count: int) -> list[int]:
        """Ports for a run; the same run asking again gets the ports it already has."""
        with self._lock:
            have = sorted(p for p, r in self._by_port.items() if r == run_id)
            if len(have) >= count:
                return have[:count]
            free = (p for p in range(self.low, self.high + 1) if p not in self._by_port)
            new = []
            for port in free:
                new.append(port)
                if len(have) + len(new) == count:
                    break
            if len(have) + len(new) < count:
                raise PortError(f"no free VPN port left in {self.low}-{self.high} for run {run_id} "
                                f"({len(self._by_port)} in use); widen port_range in the node config")
            for port in new:
                self._by_port[port] = run_id
            self._save()
            return have + new

    def release(self, run_id: int) -> list[int]:
        with self._lock:
            freed = [p for p, r in self._by_port.items() if r == run_id]
            for port in freed:
                del self._by_port[port]
            if freed:
                self._save()
            return freed

    def runs(self) -> set[int]:
        with self._lock:
            return set(self._by_port.values())

    def ports_of(self, run_id: int) -> list[int]:
        with self._lock:
            return sorted(p for p, r in self._by_port.items() if r == run_id)
