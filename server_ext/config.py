"""The server's configuration keys, described once.

SCHEMA is what `vpnagent-server` accepts in its YAML config (load_server_config checks key
names, types and values against it, for every command, before anything is written), where
the defaults of the CLI, the Flask extension and the HTTP server come from, and what
`vpnagent-server config-reference` renders into docs/operator-guide.md, so the documented
keys and allowed values cannot drift from the accepted ones. A new key goes here, with its
help text, default and allowed values (`check`), and nowhere else; a rule between keys goes
into CROSS_RULES.

The Flask extension reads the keys in EXTENSION_KEYS from app.config as VPNAGENT_<KEY>
(flask_key), plus the few of EXTENSION_ONLY that a YAML config does not take.

Nothing here imports the node agent: the Key format is the shared vpnshared.schema."""
from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from vpnshared.openvpn import CIPHERS, HOST
from vpnshared.schema import Check, Key, above, one_of, schema_table, within


class ServerConfigError(ValueError):
    """The server config (or a value in it) cannot be used; the message says what to fix."""


class ConfigProblems(ServerConfigError):
    """Everything wrong with one server config at once, each line naming the key, the value
    and the fix: an operator fixes them in one go instead of one per start."""

    def __init__(self, problems: list[str], where: str) -> None:
        self.problems = problems
        if len(problems) == 1:
            text = f"{where}: {problems[0]}"
        else:
            text = f"{where} has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text)


# --- value checks of single keys (the reference's "allowed" column comes from these)

def _network(value: str) -> str | None:
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        return "is not an IPv4 network: give address/prefix, e.g. 10.76.0.0/16"
    if net.prefixlen < 8:
        return f"is too big (/{net.prefixlen}): give a prefix from /8 to /29"
    if net.prefixlen > 29:
        return (f"holds too few addresses for nodes (/{net.prefixlen}): give a prefix from /8 to /29 "
                "(a /29 holds the server and 5 nodes)")
    if "/" in value and ipaddress.IPv4Address(value.split("/")[0]) != net.network_address:
        return f"has host bits set: give the network address, {net}"
    return None


def _problem_if(test: Callable[[Any], bool], message: str) -> Callable[[Any], str | None]:
    return lambda value: message if test(value) else None


_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?(?:{_DNS_LABEL}\.)*{_DNS_LABEL}\.?")
_DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _hostname_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return None if _DNS_NAME.fullmatch(name) else f"{name!r} is neither a DNS name nor an IP address"


def _tls_hostnames(value: list) -> str | None:
    if not value:
        return "is empty: list the names nodes put in server_url, or leave the key out for the defaults"
    bad = [p for p in map(_hostname_problem, value) if p]
    return f"{'; '.join(bad)}: give DNS names (vpn.example.org) or IP addresses" if bad else None


def _file(what: str) -> Check:
    return Check(f"an existing {what} file", _problem_if(lambda v: not Path(v).is_file(),
                                                        f"is not a file: give the path of the {what}"))


def _database_url(value: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from .store import URL_HELP

    try:
        url = make_url(value)
    except ArgumentError:
        return f"is not a database URL (SQLAlchemy's form): give {URL_HELP}"
    try:
        url.get_dialect()
    except NoSuchModuleError:
        return f"names an unknown database kind ({url.drivername!r}): give {URL_HELP}"
    return None


# Value ranges of the openvpn_profile fields (None leaves OpenVPN's default).
_PROFILE_NUMBERS = {"tun_mtu": (576, 65535), "mssfix": (0, 65535), "fragment": (0, 65535),
                    "sndbuf": (0, 1 << 28), "rcvbuf": (0, 1 << 28), "txqueuelen": (0, 1_000_000)}


def _profile(value: dict) -> str | None:
    fields = ("cipher", *_PROFILE_NUMBERS, "fast_io")
    bad = []
    for key, item in value.items():
        if key not in fields:
            bad.append(f"unknown openvpn_profile key {key!r}{_did_you_mean(str(key), fields)}")
        elif item is None:
            continue
        elif key == "cipher" and not (isinstance(item, str) and re.fullmatch(CIPHERS, item)):
            bad.append(f"cipher {item!r} must be AEAD ciphers nodes accept (AES-128-GCM, AES-192-GCM, "
                       "AES-256-GCM, CHACHA20-POLY1305; ':'-separated)")
        elif key == "fast_io" and not isinstance(item, bool):
            bad.append(f"fast_io {item!r} must be true or false")
        elif key in _PROFILE_NUMBERS:
            low, high = _PROFILE_NUMBERS[key]
            if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
                bad.append(f"{key} {item!r} must be a whole number within {low}-{high}")
    return "; ".join(bad) + f" (allowed keys: {', '.join(fields)})" if bad else None


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


DIRECTORY = Check("a directory path", _problem_if(
    lambda v: not v.strip() or (Path(v).exists() and not Path(v).is_dir()),
    "is empty or not a directory: give a directory path, e.g. /var/lib/vpnagent-server"))
SECONDS = above(0, 3600, "seconds")
SECRET_LENGTH = 32
# How algorithm traffic between nodes travels (issue 18): through the OpenVPN hub, or over
# direct WireGuard links between the nodes of a task family with the hub as fallback. The
# store keeps one per collaboration (NULL: the server's `data_plane`).
DATA_PLANES = ("openvpn", "wireguard")


# What one_port changes the defaults of: OpenVPN over TCP on the HTTPS port.
ONE_PORT_DEFAULTS: dict[str, Any] = {"openvpn_proto": "tcp", "openvpn_remote_port": 443}

SCHEMA: dict[str, Key] = {
    "data_dir": Key(str, "Directory of the server's state: pki/ (CA, OpenVPN server and tls-crypt keys, CRL, API "
                         "certificate), store.db (SQLite), secret (token signing key), openvpn/ (server.conf, "
                         "ccd/). Created 0700 (store.db, secret and keys 0600); an existing one with wider rights "
                         "is tightened to 0700, with a warning. Back it up.", required=True, check=DIRECTORY),
    "host": Key(str, "Address the API listens on.", "127.0.0.1",
                check=Check("an IP address or host name", _problem_if(
                    lambda v: not re.fullmatch(HOST, v),
                    "is not an address: give an IP address (0.0.0.0 for all) or a host name"))),
    "port": Key(int, "TCP port the API listens on (0: a free one the kernel picks; `serve` prints it).", 5000,
                check=Check("0-65535", _problem_if(lambda v: not 0 <= v <= 65535,
                                                   "must be within 1-65535 (or 0 for a free port)"))),
    "tls_cert": Key(str, "PEM certificate (chain) the API serves over HTTPS. Without it the server issues its own "
                         "from its CA (data_dir/pki/api.crt) for tls_hostnames; nodes then set server_ca_file "
                         "to data_dir/pki/ca.crt or pin the fingerprint `serve` prints.",
                    check=_file("PEM certificate")),
    "tls_key": Key(str, "PEM private key of tls_cert.", check=_file("PEM private key")),
    "tls_hostnames": Key(list, "Names and addresses nodes use to reach the API (the host of their server_url), "
                               "put in the self-issued certificate. Setting it replaces the default list.",
                         shown="`host` (unless 0.0.0.0), localhost, 127.0.0.1, `openvpn_remote_host`",
                         check=Check("DNS names and IP addresses", _tls_hostnames)),
    "insecure_http": Key(bool, "Serve the API over plain HTTP (local development only; the server warns).",
                         False),
    "database_url": Key(str, "SQLAlchemy URL of the store, e.g. postgresql+psycopg://user:pw@db/vpnagent "
                             "(see docs/database.md).", shown="SQLite `data_dir/store.db`",
                        check=Check("a SQLAlchemy URL", _database_url)),
    "secret": Key(str, "Key that signs the API's JWTs. Leave it out to have one "
                       "generated and kept in data_dir/secret (0600).", shown="generated",
                  check=Check(f"at least {SECRET_LENGTH} characters", _problem_if(
                      lambda v: len(v) < SECRET_LENGTH,
                      f"must be at least {SECRET_LENGTH} characters: make one with python3 -c 'import secrets; "
                      "print(secrets.token_urlsafe(48))', or leave the key out to have one generated")),
                  sensitive=True),
    "vpn_subnet": Key(str, "Subnet node VPN IPs are allocated from; every node config's vpn_subnet must "
                           "equal it.", "10.76.0.0/16",
                      check=Check("an IPv4 network, /8 to /29; a /29 or more per OpenVPN process (16 processes: "
                                  "/25 or shorter)", _network)),
    "openvpn_remote_host": Key(str, "Host name or address nodes put in `remote` to reach the OpenVPN "
                                    "server: the public name of this machine.", "127.0.0.1",
                               check=Check("a DNS name or IP address", _problem_if(
                                   lambda v: not re.fullmatch(HOST, v),
                                   "is not a host: give one DNS name or IP address (letters, digits, . _ : -)"))),
    "openvpn_remote_port": Key(int, "Port of the OpenVPN server (published on the host unless "
                                    "openvpn_network is set).", 1194,
                               check=Check("1-65535 (its last process's port, + openvpn_processes - 1, too)",
                                           within(1, 65535).problem)),
    "openvpn_proto": Key(str, "`udp` (faster) or `tcp` (for sites that only let TCP out).", "udp",
                         check=Check("`udp` or `tcp` (`tcp` with one_port)", one_of("udp", "tcp").problem)),
    "cert_days": Key((int, float), "Lifetime in days of the node certificates the CA issues.", 30,
                     check=above(0, 3650, "days")),
    "container_token_seconds": Key(int, "Lifetime in seconds of a container token (21600 is 6 h; 604800 is 7 days). "
                                        "The node renews the token of every live run before it expires, so runs "
                                        "may last longer; short values are for tests.", 21600,
                                   check=within(2, 604_800, "seconds")),
    "one_port": Key(bool, "One-port mode: OpenVPN runs over TCP on openvpn_remote_port (default "
                          f"{ONE_PORT_DEFAULTS['openvpn_remote_port']} here) and "
                          "passes every other connection to the API (OpenVPN port-share), so a node needs only "
                          "outgoing TCP to that one port. Nodes then use server_url https://<host>:443/api.",
                    False),
    "api_workers": Key(int, "API worker processes (gunicorn workers), each with api_threads threads and "
                            "api_max_connections connections. They share nothing but the database, as API servers "
                            "on separate hosts do; more than one wants PostgreSQL (SQLite has one writer).",
                       1, check=within(1, 64)),
    "api_threads": Key(int, "Threads serving API requests at once (per worker). More wait in the kernel's backlog.",
                       16, check=within(1, 1024)),
    "api_max_connections": Key(int, "Open API connections at most, busy and kept alive (more than api_threads); "
                                    "beyond it the server stops accepting until some close.", 256,
                               check=Check("more than api_threads, at most 100000", _problem_if(
                                   lambda v: v > 100_000, "must be at most 100000 (the rest are idle kept-alive "
                                                          "connections)"))),
    "api_header_timeout": Key((int, float), "Seconds a client has to deliver a request's headers (TLS handshake "
                                            "included) from when the server starts reading them; a slower one is "
                                            "disconnected.",
                              10, check=SECONDS),
    "api_request_timeout": Key((int, float), "Seconds a request may take from its headers to the end of the "
                                             "response (body upload and slow readers included); then it is cut.",
                               60, check=SECONDS),
    "api_keepalive": Key(int, "Seconds an idle connection is kept open for the client's next request.",
                         5, check=SECONDS),
    "api_event_streams": Key(int, "Node event streams (GET /node/events, the push to nodes) one API process "
                                  "holds open at most, each on a thread of its own that sleeps until there is "
                                  "something to send. Beyond it a node is asked to retry later and keeps working "
                                  "on its slow resync; 0 turns the push off (nodes poll every poll_interval).",
                             2000, check=within(0, 100_000)),
    "api_shutdown_timeout": Key(int, "Seconds `serve` gives requests in flight to finish after SIGTERM.",
                                10, check=SECONDS),
    "openvpn_processes": Key(int, "OpenVPN server processes, each serving a slice of vpn_subnet on its "
                                  "own port (openvpn_remote_port + i): OpenVPN uses one core per process. "
                                  "See docs/performance.md for when it pays.", 1,
                             check=Check("1-16 (1 with one_port)", within(1, 16).problem)),
    "openvpn_container": Key(str, "Name of the OpenVPN server container `serve --with-openvpn` starts.",
                             "vpnagent-openvpn", check=Check("a Docker container name", _problem_if(
                                 lambda v: not _DOCKER_NAME.fullmatch(v),
                                 "is not a Docker container name: give letters, digits and _ . - (not first)"))),
    "openvpn_network": Key(str, "Docker network to attach the OpenVPN server container to instead of "
                                "publishing its port on the host (tests and the demo use this).",
                           check=Check("a Docker network name", _problem_if(
                               lambda v: not _DOCKER_NAME.fullmatch(v),
                               "is not a Docker network name: give letters, digits and _ . - (not first)"))),
    "openvpn_profile": Key(dict, "Data-plane tuning overrides: cipher, tun_mtu, mssfix, sndbuf, rcvbuf, "
                                 "txqueuelen, fast_io (see docs/performance.md). The default works on any path "
                                 "(1500-byte tunnel MTU, no IP fragments); a bigger tun_mtu only where the path "
                                 "carries it, with the nodes' isolated_mtu and tunnel_mtu raised to match.",
                           shown="safe (tun_mtu 1500)",
                           check=Check("cipher: AEAD ciphers, ':'-separated; tun_mtu 576-65535; mssfix, fragment "
                                       "0-65535; sndbuf, rcvbuf 0-268435456; txqueuelen 0-1000000; fast_io "
                                       "true/false", _profile)),
    "vantage6_config": Key(str, "The vantage6 4.x server's own config file (YAML). Set, this server is a sidecar "
                                "beside that vantage6 server (docs/vantage6.md): it serves only /api/vpn, "
                                "/api/vpn/update and /api/vpn/algorithm/addresses, takes vantage6's tokens (its "
                                "jwt_secret_key) and reads its database (its uri) read-only. `serve --vantage6 FILE` "
                                "sets it too. Its defaults: cert_days 365, the openvpn_profile for vantage6's "
                                "vpn-client (tun_mtu 1400).", check=_file("vantage6 server config")),
    "data_plane": Key(str, "How algorithm traffic travels between nodes in every collaboration that sets no plane "
                           "of its own: `openvpn`, through the OpenVPN server (the hub); `wireguard`, over direct "
                           "WireGuard links between the nodes of a task family, with the hub as relay and "
                           "fallback. Per collaboration: `vpnagent-server set-data-plane`.", "openvpn",
                      check=one_of(*DATA_PLANES)),
}

# Keys the Flask extension reads (as VPNAGENT_<KEY>); the others are for `serve` (listening,
# TLS, the HTTP server's limits, the OpenVPN container).
EXTENSION_KEYS: tuple[str, ...] = (
    "data_dir", "database_url", "secret", "vpn_subnet", "openvpn_remote_host", "openvpn_remote_port",
    "openvpn_proto", "cert_days", "container_token_seconds", "openvpn_processes", "openvpn_profile",
    "api_event_streams", "data_plane", "vantage6_config")

# Keys of the Flask extension that a YAML config does not take.
EXTENSION_ONLY: dict[str, Key] = {
    "url_prefix": Key(str, "Path the extension's API routes are mounted under.", "/api"),
    "max_body": Key(int, "Largest request body (bytes) the extension's routes take; a larger one gets 413. "
                         "The host app's own routes keep their own limit (MAX_CONTENT_LENGTH).", 64 * 1024),
    "metrics": Key(bool, "Serve Prometheus metrics at /metrics, outside url_prefix (docs/metrics.md).", True),
    "openvpn_port_share": Key(str, "host:port that OpenVPN hands connections that are not OpenVPN to "
                                   "(port-share); `serve` sets it in one-port mode."),
}


def flask_key(key: str) -> str:
    """The app.config name of a key: data_dir -> VPNAGENT_DATA_DIR."""
    return f"VPNAGENT_{key.upper()}"


def setting(app_config: Mapping[str, Any], key: str) -> Any:
    """An extension setting from a Flask app's config, else the schema's default."""
    spec = SCHEMA[key] if key in SCHEMA else EXTENSION_ONLY[key]
    value = app_config.get(flask_key(key))
    return spec.default if value is None else value


def flask_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The app.config of the extension keys a YAML server config sets."""
    return {flask_key(key): raw[key] for key in EXTENSION_KEYS if raw.get(key) is not None}


def default(key: str) -> Any:
    """The schema's default of a server key."""
    return SCHEMA[key].default


def reference_markdown() -> str:
    """The server config reference table (docs/operator-guide.md embeds it)."""
    return schema_table(SCHEMA)


def extension_reference_markdown() -> str:
    """The Flask extension's app.config keys and their defaults (docs/operator-guide.md
    embeds it): the same descriptions as the YAML keys they mirror."""
    rows = ["| app.config key | type | default | meaning |", "|---|---|---|---|"]
    for key in (*EXTENSION_KEYS, *EXTENSION_ONLY):
        spec = SCHEMA[key] if key in SCHEMA else EXTENSION_ONLY[key]
        shown = "the app's `instance_path`" if key == "data_dir" else spec.default_markdown()
        meaning = spec.help if key in EXTENSION_ONLY else f"As `{key}` in the server config."
        rows.append(f"| `{flask_key(key)}` | {spec.type_names} | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


# --- rules between keys: each takes the config with defaults filled in and the keys that had
# no problem of their own, and returns its problems.

def _max_connections(c: Mapping[str, Any]) -> list[str]:
    if c["api_max_connections"] > c["api_threads"]:
        return []
    return [f"'api_max_connections' is {c['api_max_connections']}: must be more than api_threads "
            f"({c['api_threads']}), at most 100000 (the rest are idle kept-alive connections)"]


def _openvpn_ports(c: Mapping[str, Any]) -> list[str]:
    last = c["openvpn_remote_port"] + c["openvpn_processes"] - 1
    if last <= 65535:
        return []
    return [f"'openvpn_remote_port' is {c['openvpn_remote_port']}: its {c['openvpn_processes']} OpenVPN processes "
            f"would use ports up to {last}; give at most {65536 - c['openvpn_processes']}"]


def _subnet_slices(c: Mapping[str, Any]) -> list[str]:
    net, processes = ipaddress.IPv4Network(c["vpn_subnet"]), c["openvpn_processes"]
    need = (processes - 1).bit_length()
    if net.prefixlen + need <= 29:
        return []
    return [f"'vpn_subnet' is {c['vpn_subnet']!r}: too small for {processes} OpenVPN processes (each gets a "
            f"slice of it); give a prefix of /{29 - need} or shorter, or fewer openvpn_processes"]


def _tls_pair(c: Mapping[str, Any]) -> list[str]:
    if bool(c.get("tls_cert")) == bool(c.get("tls_key")):
        return []
    given, missing = ("tls_cert", "tls_key") if c.get("tls_cert") else ("tls_key", "tls_cert")
    return [f"'{given}' is {c[given]!r} but '{missing}' is not set: give both or neither"]


def _one_port(c: Mapping[str, Any]) -> list[str]:
    if not c.get("one_port"):
        return []
    out = []
    if c["openvpn_proto"] != "tcp":
        out.append(f"'openvpn_proto' is {c['openvpn_proto']!r}: one_port needs tcp (OpenVPN shares a TCP port "
                   "with HTTPS); set it to tcp or leave it out")
    if c["openvpn_processes"] != 1:
        out.append(f"'openvpn_processes' is {c['openvpn_processes']}: one_port serves one OpenVPN process; "
                   "set it to 1 or leave it out")
    return out


# (keys a rule reads, rule): a rule runs only when those keys passed their own checks.
CROSS_RULES: list[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], list[str]]]] = [
    (("api_threads", "api_max_connections"), _max_connections),
    (("openvpn_remote_port", "openvpn_processes"), _openvpn_ports),
    (("vpn_subnet", "openvpn_processes"), _subnet_slices),
    (("tls_cert", "tls_key"), _tls_pair),
    (("one_port", "openvpn_proto", "openvpn_processes"), _one_port),
]


def shown_value(key: str, value: Any) -> str:
    """A value as error messages show it: secrets are described, not printed."""
    spec = SCHEMA.get(key)
    if spec is not None and spec.sensitive and isinstance(value, str):
        return f"<{len(value)} characters, not shown>"
    if key == "database_url" and isinstance(value, str):  # all but the password
        return repr(re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", value))
    return repr(value)


def problems(raw: Mapping[str, Any], *, partial: bool = False) -> list[str]:
    """Everything wrong with a server config mapping (as loaded from YAML), one line each
    naming the key, the value and the fix; [] when it can be used. `partial`: a mapping of
    some keys only (the required ones may be absent)."""
    out: list[str] = []
    bad: set[str] = set()
    for key in raw:
        if key not in SCHEMA:
            hint = _did_you_mean(str(key), SCHEMA) or " (`vpnagent-server config-reference` lists the keys)"
            out.append(f"unknown key {str(key)!r}{hint}")
            bad.add(str(key))
    for key, spec in SCHEMA.items():
        value = raw.get(key)
        if value is None:
            if spec.required and not partial:
                out.append(f"'{key}' is missing: it is required (see `vpnagent-server config-reference`)")
                bad.add(key)
            continue
        if not spec.accepts(value):
            out.append(f"'{key}' has the wrong type ({type(value).__name__} {shown_value(key, value)}): "
                       f"give {spec.type_names}")
            bad.add(key)
            continue
        problem = spec.check.problem(value) if spec.check else None
        if problem:
            out.append(f"'{key}' is {shown_value(key, value)}: {problem}")
            bad.add(key)
    filled = {**{k: spec.default for k, spec in SCHEMA.items()},
              **(ONE_PORT_DEFAULTS if raw.get("one_port") is True else {}),
              **{k: v for k, v in raw.items() if v is not None}}
    for keys, rule in CROSS_RULES:
        if not bad.intersection(keys):
            out.extend(rule(filled))
    return out


def load_server_config(path: str | Path) -> dict[str, Any]:
    """The server config at `path`, checked: ConfigProblems lists every problem at once.
    Reads the file only; nothing is created."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ServerConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ServerConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ServerConfigError(f"{path} must be a mapping of key: value")
    found = problems(raw)
    if found:
        raise ConfigProblems(found, str(path))
    return raw


def default_tls_hostnames(raw: Mapping[str, Any]) -> list[str]:
    """The names of the self-issued API certificate when tls_hostnames is not set (the
    reference's default column says the same)."""
    names = (raw.get("host") or default("host"), "localhost", "127.0.0.1",
             raw.get("openvpn_remote_host") or default("openvpn_remote_host"))
    return list(dict.fromkeys(n for n in names if n != "0.0.0.0"))
