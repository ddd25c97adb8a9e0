"""The node's YAML configuration, validated up front so a typo fails at start with the
key and the fix in the message instead of half-way through wiring a run."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")


class ConfigError(ValueError):
    """The node configuration is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    server_url: str
    api_key: str
    data_dir: Path
    vpn_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.76.0.0/16")
    port_range: tuple[int, int] = (6000, 6999)
    isolated_subnet: ipaddress.IPv4Network | None = None
    vpn_client_network: str = "bridge"
    proxy_port: int = 8765
    poll_interval: float = 0.5
    max_concurrent_runs: int = 8
    isolated_mtu: int | None = 9000  # MTU of the isolated network: match the server profile's tun-mtu
    vpn_connect_timeout: float = 30.0
    vpn_image: str = "vpnagent/vpn:latest"
    holder_image: str = "vpnagent/algo-base:latest"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def isolated_network(self) -> str:
        return f"vpnagent-{self.name}-net"

    @property
    def bridge_name(self) -> str:
        # Linux limits interface names to 15 characters; NAME_RE keeps us under it.
        return f"va-{self.name}"[:15]

    @property
    def vpn_container(self) -> str:
        return f"vpnagent-{self.name}-vpn"

    @property
    def host_chain(self) -> str:
        return f"VA-HOST-{self.name}"


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "server_url": str,
    "api_key": str,
    "data_dir": str,
    "vpn_subnet": str,
    "port_range": (list, str),
    "isolated_subnet": str,
    "vpn_client_network": str,
    "proxy_port": int,
    "max_concurrent_runs": int,
    "isolated_mtu": int,
    "poll_interval": (int, float),
    "vpn_connect_timeout": (int, float),
    "vpn_image": str,
    "holder_image": str,
    "labels": dict,
}
_REQUIRED = ("name", "server_url", "api_key", "data_dir")


def parse_config(raw: Any, base_dir: Path | None = None) -> NodeConfig:
    """Validate a mapping (as loaded from YAML) into a NodeConfig."""
    if not isinstance(raw, dict):
        raise ConfigError("node config must be a YAML mapping of key: value")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    for key in _REQUIRED:
        if raw.get(key) in (None, ""):
            raise ConfigError(f"missing required key '{key}'")
    for key, value in raw.items():
        want = _FIELDS[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, want):
            names = want.__name__ if isinstance(want, type) else " or ".join(t.__name__ for t in want)
            raise ConfigError(f"'{key}' must be {names}, got {type(value).__name__} {value!r}")

    name = raw["name"]
    if not NAME_RE.match(name):
        raise ConfigError(f"'name' {name!r} must be 1-16 of a-z, 0-9 and '-' (it names containers and chains)")
    url = raw["server_url"].rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"'server_url' {url!r} must start with http:// or https://")

    kwargs: dict[str, Any] = {
        "name": name,
        "server_url": url,
        "api_key": raw["api_key"],
        "data_dir": _path(raw["data_dir"], base_dir),
    }
    if raw.get("vpn_subnet"):
        kwargs["vpn_subnet"] = _network("vpn_subnet", raw["vpn_subnet"])
    if raw.get("isolated_subnet"):
        kwargs["isolated_subnet"] = _network("isolated_subnet", raw["isolated_subnet"])
    if raw.get("port_range") is not None:
        kwargs["port_range"] = _port_range(raw["port_range"])
    if raw.get("proxy_port") is not None:
        if not 1 <= raw["proxy_port"] <= 65535:
            raise ConfigError(f"'proxy_port' {raw['proxy_port']} must be within 1-65535")
        kwargs["proxy_port"] = raw["proxy_port"]
    if raw.get("isolated_mtu") is not None:
        if not 1280 <= raw["isolated_mtu"] <= 65535:
            raise ConfigError("'isolated_mtu' must be within 1280-65535")
        kwargs["isolated_mtu"] = raw["isolated_mtu"]
    if raw.get("max_concurrent_runs") is not None:
        if not 1 <= raw["max_concurrent_runs"] <= 1000:
            raise ConfigError("'max_concurrent_runs' must be within 1-1000")
        kwargs["max_concurrent_runs"] = raw["max_concurrent_runs"]
    for key in ("poll_interval", "vpn_connect_timeout"):
        if raw.get(key) is not None:
            if raw[key] <= 0:
                raise ConfigError(f"'{key}' must be a positive number of seconds")
            kwargs[key] = float(raw[key])
    for key in ("vpn_client_network", "vpn_image", "holder_image"):
        if raw.get(key):
            kwargs[key] = raw[key]
    if raw.get("labels"):
        kwargs["labels"] = {str(k): str(v) for k, v in raw["labels"].items()}
    return NodeConfig(**kwargs)


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read node config {path}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(raw, base_dir=path.parent)


def _path(value: str, base_dir: Path | None) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p.resolve()


def _network(key: str, value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ConfigError(f"'{key}' {value!r} is not an IPv4 network like 10.76.0.0/16: {exc}") from exc
    if net.prefixlen > 29:
        raise ConfigError(f"'{key}' {value!r} is too small; use a /29 or larger")
    return net


def _port_range(value: list | str) -> tuple[int, int]:
    parts = value.split("-") if isinstance(value, str) else value
    try:
        low, high = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"'port_range' {value!r} must be two ports, like [6000, 6999] or '6000-6999'") from None
    if not (1024 <= low <= high <= 65535):
        raise ConfigError(f"'port_range' {value!r} must satisfy 1024 <= low <= high <= 65535")
    return low, high
