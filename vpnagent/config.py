"""The node's YAML configuration, validated up front so a typo fails at start with the
key and the fix in the message instead of half-way through wiring a run.

SCHEMA is the one description of every key (vpnshared/schema.py's Key): parse_config checks
against it, NodeConfig takes its defaults from it and `vpnagent config-reference` renders the
reference in docs/operator-guide.md from it."""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpnshared.endpoints import EndpointError, parse_endpoint
from vpnshared.names import NODE as NODE_NAME
from vpnshared.schema import Key, schema_table

NAME_RE = re.compile(f"^{NODE_NAME.pattern}\\Z")  # the server's add-node checks the same rule
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    """The node configuration is invalid; the message names the key and the fix."""


DB_LABEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DB_TYPES = ("csv", "excel", "parquet", "sql", "sparql", "omop", "other")


@dataclass(frozen=True)
class Database:
    """A data source the node offers runs of the vantage6 contract (by label). `kind`: a
    host `file` or `dir` (mounted read-only), or a `uri` passed as is (a database server)."""
    label: str
    uri: str
    type: str
    kind: str
    env: dict[str, str] = field(default_factory=dict)


SCHEMA: dict[str, Key] = {
    "name": Key(str, "This node's name: 1-16 of a-z, 0-9 and '-'. It names the node's containers, "
                     "network and firewall chains.", required=True),
    "server_url": Key(str, "Base URL of the server API, e.g. https://vpn.example.org/api. https:// is required "
                           "unless allow_insecure_http is true.", required=True),
    "api_key": Key(str, "The node's API key: written by `vpnagent join`, or printed once by `vpnagent-server "
                     "add-node --api-key` for a config written by hand.", required=True),
    "data_dir": Key(str, "Directory for the VPN config, port records and status.json (relative paths are "
                         "relative to the config file).", required=True),
    "server_ca_file": Key(str, "PEM file of the CA that signed the server's HTTPS certificate (the server's "
                               "data_dir/pki/ca.crt by default). Without it the system CAs are used."),
    "server_fingerprint": Key(str, "SHA-256 fingerprint of the server's HTTPS certificate (hex, colons allowed), "
                                   "printed by `vpnagent-server serve`. When set, only that certificate is accepted."),
    "allow_insecure_http": Key(bool, "Allow an http:// server_url (local development only; the API key and tokens "
                                     "then cross the network in clear, and the agent warns at start).", False),
    "vpn_subnet": Key(str, "The VPN subnet the server hands out addresses from; must match the server.",
                      "10.76.0.0/16"),
    "port_range": Key((list, str), "Host-unique range the agent allocates VPN ports for algorithm ports from, "
                                   "as [low, high] or 'low-high'.", [6000, 6999]),
    "isolated_subnet": Key(str, "Subnet of the node's isolated algorithm network (default: chosen by Docker)."),
    "vpn_client_network": Key(str, "Docker network the VPN client container's outside leg joins.", "bridge"),
    "proxy_port": Key(int, "Port of the node proxy algorithms reach the server through.", 8765),
    "max_concurrent_runs": Key(int, "Top-level runs this node executes at the same time (1-1000); more wait at "
                                    "the server.", 8),
    "max_concurrent_subtasks": Key(int, "Subtask runs (created by a running algorithm) this node executes at the "
                                        "same time besides (1-4000). They have their own limit and are taken "
                                        "first: their parents hold run slots while they wait for them, so a "
                                        "shared limit could be filled by parents alone.",
                                   shown="4 x max_concurrent_runs"),
    "isolated_mtu": Key(int, "MTU of the isolated network (Docker's default when absent). Raise it only with a "
                             "jumbo server profile on a path that carries it.",
                        shown="Docker's (1500)"),
    "tunnel_mtu": Key((str, int), "Largest packet the tunnel carries (bytes): `auto` probes the path to the OpenVPN "
                                  "server at every connect (pings through the tunnel with don't-fragment); a number "
                                  "skips the probe. Shown in `vpnagent status` and checked by `vpnagent doctor`.",
                      "auto"),
    "wireguard_port": Key(int, "UDP port the VPN client listens on for direct WireGuard links to other nodes, "
                               "when the server puts this node's collaboration on the WireGuard data plane. "
                               "No inbound port is needed: without one, peers that cannot reach it go through "
                               "the OpenVPN hub.", 51820),
    "wireguard_endpoints": Key(list, "Extra addresses other nodes may reach this node's WireGuard port at, as "
                                     "'IPv4:port' (e.g. a public address with a port forward to wireguard_port). "
                                     "The agent also offers the VPN client's own addresses; the server adds the "
                                     "address it sees the node's requests come from."),
    "wireguard_mtu": Key(int, "MTU of the WireGuard interface (bytes): 60 below the path for IPv4 underlay, 80 "
                              "for IPv6; 1420 fits a 1500-byte path either way.", 1420),
    "push": Key(bool, "Hold an event stream open to the server (GET /node/events), so it tells this node of new "
                      "runs, peer changes and its removal as they happen. Off, or against a server without the "
                      "stream, the agent polls every poll_interval.", True),
    "resync_interval": Key((int, float), "Seconds between full resyncs with the server while the event stream is "
                                         "open (new runs, peers, the runs it holds), the safety net for an event "
                                         "lost on the way; each node adds up to 10 % of jitter. Every new stream "
                                         "resyncs at once, so only an event lost by a server that stayed up "
                                         "waits this long.", 120),
    "poll_interval": Key((int, float), "Seconds between polls of the server for new runs when there is no event "
                                       "stream (push off, or a server without it).", 0.5),
    "vpn_connect_timeout": Key((int, float), "Seconds to wait for the VPN tunnel before going on without VPN.",
                               30),
    "cert_renew_days": Key((int, float), "Renew the VPN certificate through /vpn/update when it expires within "
                                         "this many days.", 7),
    "metrics_listen": Key(str, "host:port for the Prometheus metrics endpoint (/metrics), e.g. 127.0.0.1:9477; "
                               "off when absent."),
    "vpn_image": Key(str, "Image of the VPN client container.", "vpnagent/vpn:latest"),
    "holder_image": Key(str, "Image of the per-run network holder container.", "vpnagent/algo-base:latest"),
    "labels": Key(dict, "Extra labels put on every container the agent starts (VPN client, holders, algorithms, "
                        "the doctor's echo container). Keys starting with `vpnagent.` are the agent's own and refused."),
    "algorithm_memory": Key((str, int), "Memory limit of each algorithm container, in bytes or with a unit "
                                        "(512m, 4g).", shown="half the host's memory"),
    "algorithm_cpus": Key((int, float), "CPU limit of each algorithm container, in CPUs (1.5 = one and a half "
                                        "cores).", shown="host CPUs - 1, at least 1"),
    "algorithm_pids": Key(int, "Process (and thread) limit of each algorithm container.", 1024),
    "allowed_images": Key(list, "Images this node runs: patterns matched against the task's image reference "
                                "(vpnagent/*, registry.example.org/fl/*:1.*) or a digest (sha256:<image id>, "
                                "name@sha256:<repo digest>). A run of any other image is refused and reported "
                                "failed. Absent: every image present on the node may run (the agent warns)."),
    "databases": Key(list, "Data sources runs of the vantage6 contract may ask for by label: a list of "
                           "{label, uri, type, env}. `uri` is a file or directory on this host (mounted "
                           "read-only, only into runs whose task asks for that label) or a URI like "
                           "postgresql://...; `type` is one of " + ", ".join(DB_TYPES) + "; `env` (optional) "
                           "becomes <LABEL>_DB_PARAM_<KEY> variables."),
    "max_output_bytes": Key(int, "Largest result file an algorithm may leave; a bigger one (or a link, FIFO or "
                                 "directory in its place) fails the run with the reason.", 48 * 1024),
}



def _default(key: str) -> Any:
    """The schema's default of a key: NodeConfig's fields take theirs from here."""
    return SCHEMA[key].default


@dataclass(frozen=True)
class NodeConfig:
    name: str
    server_url: str
    api_key: str
    data_dir: Path
    server_ca_file: Path | None = None
    server_fingerprint: str | None = None
    allow_insecure_http: bool = _default("allow_insecure_http")
    vpn_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network(_default("vpn_subnet"))
    port_range: tuple[int, int] = tuple(_default("port_range"))
    isolated_subnet: ipaddress.IPv4Network | None = None
    vpn_client_network: str = _default("vpn_client_network")
    proxy_port: int = _default("proxy_port")
    poll_interval: float = float(_default("poll_interval"))
    push: bool = _default("push")
    resync_interval: float = float(_default("resync_interval"))
    max_concurrent_runs: int = _default("max_concurrent_runs")
    wireguard_port: int = _default("wireguard_port")
    wireguard_endpoints: tuple[str, ...] = ()
    wireguard_mtu: int = _default("wireguard_mtu")
    max_concurrent_subtasks: int | None = None  # None: 4 x max_concurrent_runs
    isolated_mtu: int | None = None  # MTU of the isolated network (None: Docker's, 1500)
    tunnel_mtu: int | None = None  # None: probe the path at connect (pathmtu.py)
    vpn_connect_timeout: float = float(_default("vpn_connect_timeout"))
    cert_renew_days: float = float(_default("cert_renew_days"))
    metrics_listen: tuple[str, int] | None = None
    vpn_image: str = _default("vpn_image")
    holder_image: str = _default("holder_image")
    labels: dict[str, str] = field(default_factory=dict)
    # Per algorithm container. None: the defaults below, taken from the host at start.
    algorithm_memory: int | None = None  # bytes
    algorithm_cpus: float | None = None
    algorithm_pids: int = _default("algorithm_pids")
    allowed_images: tuple[str, ...] | None = None  # None: any image present on the node
    max_output_bytes: int = _default("max_output_bytes")
    databases: tuple[Database, ...] = ()

    def run_limits(self) -> tuple[int, float, int]:
        """(memory bytes, CPUs, pids) of one algorithm container: as configured, else half
        the host's memory and all but one of its CPUs (at least one), so a run cannot take
        the memory or every core the agent and the VPN client need."""
        memory = self.algorithm_memory or _host_memory() // 2
        cpus = self.algorithm_cpus or float(max(1, (os.cpu_count() or 1) - 1))
        return memory, cpus, self.algorithm_pids

    @property
    def subtask_limit(self) -> int:
        return self.max_concurrent_subtasks or 4 * self.max_concurrent_runs

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

    @property
    def tls_verify(self) -> str | bool:
        """What `requests` checks the server's certificate against: the configured CA
        file, else the system's CAs. A pinned fingerprint is checked on top (serverapi)."""
        return str(self.server_ca_file) if self.server_ca_file else True


MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", re.I)
IMAGE_PATTERN_RE = re.compile(r"^[A-Za-z0-9._/:@*?\[\]-]{1,300}$")


def parse_config(raw: Any, base_dir: Path | None = None) -> NodeConfig:
    """Validate a mapping (as loaded from YAML) into a NodeConfig."""
    if not isinstance(raw, dict):
        raise ConfigError("node config must be a YAML mapping of key: value")
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SCHEMA)}")
    for key, spec in SCHEMA.items():
        if spec.required and raw.get(key) in (None, ""):
            raise ConfigError(f"missing required key '{key}'")
    for key, value in raw.items():
        if value is not None and not SCHEMA[key].accepts(value):
            raise ConfigError(f"'{key}' must be {SCHEMA[key].type_names}, got {type(value).__name__} {value!r}")

    name = raw["name"]
    if not NAME_RE.match(name):
        raise ConfigError(f"'name' {name!r} must be {NODE_NAME.says} ({NODE_NAME.why})")
    url = raw["server_url"].rstrip("/")
    insecure = bool(raw.get("allow_insecure_http"))
    if url.startswith("http://"):
        if not insecure:
            raise ConfigError(f"'server_url' {url!r} is plain HTTP: use https:// (with server_ca_file or "
                              "server_fingerprint), or set allow_insecure_http: true for local development")
    elif not url.startswith("https://"):
        raise ConfigError(f"'server_url' {url!r} must start with https://")

    kwargs: dict[str, Any] = {
        "name": name,
        "server_url": url,
        "api_key": raw["api_key"],
        "data_dir": _path(raw["data_dir"], base_dir),
        "allow_insecure_http": insecure,
    }
    if raw.get("push") is not None:
        kwargs["push"] = raw["push"]
    if raw.get("server_ca_file"):
        ca = _path(raw["server_ca_file"], base_dir)
        if not ca.is_file():
            raise ConfigError(f"'server_ca_file' {ca} does not exist; copy the server's pki/ca.crt there")
        kwargs["server_ca_file"] = ca
    if raw.get("server_fingerprint"):
        fp = raw["server_fingerprint"].replace(":", "").lower()
        if not FINGERPRINT_RE.match(fp):
            raise ConfigError("'server_fingerprint' must be the 64 hex digits of a SHA-256 fingerprint "
                              "(as `vpnagent-server serve` prints it)")
        kwargs["server_fingerprint"] = fp
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
    if raw.get("tunnel_mtu") not in (None, "auto"):
        value = raw["tunnel_mtu"]
        if isinstance(value, str) or not 576 <= value <= 65535:
            raise ConfigError(f"'tunnel_mtu' {value!r} must be auto or a number of bytes within 576-65535")
        kwargs["tunnel_mtu"] = value
    kwargs.update(_wireguard(raw, kwargs.get("vpn_subnet", NodeConfig.vpn_subnet)))
    if raw.get("max_concurrent_runs") is not None:
        if not 1 <= raw["max_concurrent_runs"] <= 1000:
            raise ConfigError("'max_concurrent_runs' must be within 1-1000")
        kwargs["max_concurrent_runs"] = raw["max_concurrent_runs"]
    if raw.get("max_concurrent_subtasks") is not None:
        if not 1 <= raw["max_concurrent_subtasks"] <= 4000:
            raise ConfigError(f"'max_concurrent_subtasks' {raw['max_concurrent_subtasks']} must be within 1-4000")
        kwargs["max_concurrent_subtasks"] = raw["max_concurrent_subtasks"]
    for key in ("poll_interval", "resync_interval", "vpn_connect_timeout", "cert_renew_days"):
        if raw.get(key) is not None:
            if raw[key] <= 0:
                raise ConfigError(f"'{key}' must be a positive number")
            kwargs[key] = float(raw[key])
    if raw.get("metrics_listen"):
        kwargs["metrics_listen"] = _host_port("metrics_listen", raw["metrics_listen"])
    for key in ("vpn_client_network", "vpn_image", "holder_image"):
        if raw.get(key):
            kwargs[key] = raw[key]
    if raw.get("labels"):
        kwargs["labels"] = {str(k): str(v) for k, v in raw["labels"].items()}
        own = sorted(k for k in kwargs["labels"] if k.startswith("vpnagent."))
        if own:  # the agent finds its containers by these: a config must not be able to forge them
            raise ConfigError(f"labels: {', '.join(own)}: keys starting with 'vpnagent.' are the agent's own; "
                              "choose another prefix (e.g. org.example.team)")
    kwargs.update(_run_limits(raw))
    if raw.get("databases") is not None:
        kwargs["databases"] = _databases(raw["databases"], base_dir)
    return NodeConfig(**kwargs)


def _wireguard(raw: dict, vpn_subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if raw.get("wireguard_port") is not None:
        if not 1 <= raw["wireguard_port"] <= 65535:
            raise ConfigError(f"'wireguard_port' {raw['wireguard_port']} must be within 1-65535")
        out["wireguard_port"] = raw["wireguard_port"]
    if raw.get("wireguard_mtu") is not None:
        if not 1280 <= raw["wireguard_mtu"] <= 65455:
            raise ConfigError(f"'wireguard_mtu' {raw['wireguard_mtu']} must be within 1280-65455 (IPv6 needs 1280)")
        out["wireguard_mtu"] = raw["wireguard_mtu"]
    if raw.get("wireguard_endpoints"):
        if len(raw["wireguard_endpoints"]) > 8:
            raise ConfigError("'wireguard_endpoints' takes at most 8 addresses")
        try:  # the server's rule too (vpnshared/endpoints.py): what passes here, it takes
            out["wireguard_endpoints"] = tuple(parse_endpoint(e, vpn_subnet) for e in raw["wireguard_endpoints"])
        except EndpointError as exc:
            raise ConfigError(f"'wireguard_endpoints': {exc}") from None
    return out


def _databases(value: list, base_dir: Path | None) -> tuple[Database, ...]:
    out: list[Database] = []
    for i, entry in enumerate(value):
        where = f"'databases' entry {i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with label, uri and type")
        unknown = sorted(set(entry) - {"label", "uri", "type", "env"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: label, uri, type, env")
        label, uri, kind = entry.get("label"), entry.get("uri"), entry.get("type")
        if not isinstance(label, str) or not DB_LABEL_RE.match(label):
            raise ConfigError(f"{where}: label {label!r} must be 1-32 of a-z, 0-9 and _, starting with a letter "
                              "(it becomes <LABEL>_DATABASE_URI)")
        if any(db.label == label for db in out):
            raise ConfigError(f"{where}: label {label!r} is used twice")
        if kind not in DB_TYPES:
            raise ConfigError(f"{where} ({label}): type {kind!r} must be one of {', '.join(DB_TYPES)}")
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"{where} ({label}): uri must be a path on this host or a URI like postgresql://...")
        env = entry.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and k.isidentifier() for k in env):
            raise ConfigError(f"{where} ({label}): env must map names (letters, digits, _) to values")
        if "://" in uri:
            out.append(Database(label, uri, kind, "uri", {k: str(v) for k, v in env.items()}))
            continue
        path = _path(uri, base_dir)
        if not path.exists():
            raise ConfigError(f"{where} ({label}): {path} does not exist")
        out.append(Database(label, str(path), kind, "dir" if path.is_dir() else "file",
                            {k: str(v) for k, v in env.items()}))
    return tuple(out)


def _run_limits(raw: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if raw.get("algorithm_memory") is not None:
        out["algorithm_memory"] = _memory(raw["algorithm_memory"])
    if raw.get("algorithm_cpus") is not None:
        if not 0.01 <= raw["algorithm_cpus"] <= 1024:
            raise ConfigError("'algorithm_cpus' must be within 0.01-1024 (CPUs)")
        out["algorithm_cpus"] = float(raw["algorithm_cpus"])
    if raw.get("algorithm_pids") is not None:
        if not 16 <= raw["algorithm_pids"] <= 1_000_000:
            raise ConfigError("'algorithm_pids' must be within 16-1000000")
        out["algorithm_pids"] = raw["algorithm_pids"]
    if raw.get("max_output_bytes") is not None:
        if not 1 <= raw["max_output_bytes"] <= 1 << 30:
            raise ConfigError("'max_output_bytes' must be within 1 and 1073741824")
        out["max_output_bytes"] = raw["max_output_bytes"]
    if raw.get("allowed_images") is not None:
        patterns = raw["allowed_images"]
        bad = [p for p in patterns if not isinstance(p, str) or not IMAGE_PATTERN_RE.match(p)]
        if bad or not patterns:
            raise ConfigError(f"'allowed_images' must be a non-empty list of image patterns like vpnagent/* or "
                              f"sha256:<id>; not usable: {bad[:3] or patterns!r}")
        out["allowed_images"] = tuple(patterns)
    return out


def _memory(value: str | int) -> int:
    """4g, 512m, 1048576 -> bytes; at least 16 MiB (less cannot start python)."""
    match = MEMORY_RE.match(str(value).strip())
    if not match:
        raise ConfigError(f"'algorithm_memory' {value!r} must be bytes or a number with k, m or g, like 4g")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])
    if size < 16 << 20:
        raise ConfigError(f"'algorithm_memory' {value!r} is below 16m; an algorithm cannot run in that")
    return size


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30  # unknown host: a limit that still lets a typical algorithm run


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


def reference_markdown() -> str:
    """The node config reference table (docs/operator-guide.md embeds it)."""
    return schema_table(SCHEMA)


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


def _host_port(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"'{key}' {value!r} must be host:port, like 127.0.0.1:9477")
    return host, int(port)


def _port_range(value: list | str) -> tuple[int, int]:
    parts = value.split("-") if isinstance(value, str) else value
    try:
        low, high = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"'port_range' {value!r} must be two ports, like [6000, 6999] or '6000-6999'") from None
    if not (1024 <= low <= high <= 65535):
        raise ConfigError(f"'port_range' {value!r} must satisfy 1024 <= low <= high <= 65535")
    return low, high
