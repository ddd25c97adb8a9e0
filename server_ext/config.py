"""The server's configuration keys, described once.

SCHEMA is what `vpnagent-server` accepts in its YAML config (load_server_config in cli.py
checks key names and types against it), where the defaults of the CLI, the Flask extension
and the HTTP server come from, and what `vpnagent-server config-reference` renders into
docs/operator-guide.md, so the documented keys cannot drift from the accepted ones. A new
key goes here, with its help text and default, and nowhere else.

The Flask extension reads the keys in EXTENSION_KEYS from app.config as VPNAGENT_<KEY>
(flask_key), plus the few of EXTENSION_ONLY that a YAML config does not take.

Nothing here imports the node agent: the Key format is the shared vpnshared.schema."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vpnshared.schema import Key, schema_table


class ServerConfigError(ValueError):
    """The server config (or a value in it) cannot be used; the message says what to fix."""


# What one_port changes the defaults of: OpenVPN over TCP on the HTTPS port.
ONE_PORT_DEFAULTS: dict[str, Any] = {"openvpn_proto": "tcp", "openvpn_remote_port": 443}

SCHEMA: dict[str, Key] = {
    "data_dir": Key(str, "Directory of the server's state: pki/ (CA, OpenVPN server and tls-crypt keys, CRL, API certificate), store.db "
                         "(SQLite), secret (token signing key), openvpn/ (server.conf, ccd/). Created 0700; "
                         "back it up.", required=True),
    "host": Key(str, "Address the API listens on.", "127.0.0.1"),
    "port": Key(int, "TCP port the API listens on.", 5000),
    "tls_cert": Key(str, "PEM certificate (chain) the API serves over HTTPS. Without it the server issues its own "
                         "from its CA (data_dir/pki/api.crt) for tls_hostnames; nodes then set server_ca_file "
                         "to data_dir/pki/ca.crt or pin the fingerprint `serve` prints."),
    "tls_key": Key(str, "PEM private key of tls_cert."),
    "tls_hostnames": Key(list, "Names and addresses nodes use to reach the API, put in the self-issued "
                               "certificate.", shown="host, localhost, 127.0.0.1, openvpn_remote_host"),
    "insecure_http": Key(bool, "Serve the API over plain HTTP (local development only; the server warns).",
                         False),
    "database_url": Key(str, "SQLAlchemy URL of the store, e.g. postgresql+psycopg://user:pw@db/vpnagent "
                             "(see docs/database.md).", shown="SQLite `data_dir/store.db`"),
    "secret": Key(str, "Key that signs the API's JWTs (at least 32 characters). Leave it out to have one "
                       "generated and kept in data_dir/secret.", shown="generated"),
    "vpn_subnet": Key(str, "Subnet node VPN IPs are allocated from; every node config's vpn_subnet must "
                           "equal it.", "10.76.0.0/16"),
    "openvpn_remote_host": Key(str, "Host name or address nodes put in `remote` to reach the OpenVPN "
                                    "server: the public name of this machine.", "127.0.0.1"),
    "openvpn_remote_port": Key(int, "Port of the OpenVPN server (published on the host unless "
                                    "openvpn_network is set).", 1194),
    "openvpn_proto": Key(str, "`udp` (faster) or `tcp` (for sites that only let TCP out).", "udp"),
    "cert_days": Key((int, float), "Lifetime in days of the node certificates the CA issues.", 30),
    "container_token_seconds": Key(int, "Lifetime in seconds of a container token (2-604800; 21600 is 6 h). "
                                        "The node renews the token of every live run before it expires, so runs "
                                        "may last longer; short values are for tests.", 21600),
    "one_port": Key(bool, "One-port mode: OpenVPN runs over TCP on openvpn_remote_port (default "
                          f"{ONE_PORT_DEFAULTS['openvpn_remote_port']} here) and "
                          "passes every other connection to the API (OpenVPN port-share), so a node needs only "
                          "outgoing TCP to that one port. Nodes then use server_url https://<host>:443/api.",
                    False),
    "api_threads": Key(int, "Threads serving API requests at once (1-1024). More wait in the kernel's backlog.",
                       16),
    "api_max_connections": Key(int, "Open API connections at most, busy and kept alive (more than api_threads); "
                                    "beyond it the server stops accepting until some close.", 256),
    "api_header_timeout": Key((int, float), "Seconds a client has to deliver a request's headers (TLS handshake "
                                            "included) from when the server starts reading them; a slower one is "
                                            "disconnected.",
                              10),
    "api_request_timeout": Key((int, float), "Seconds a request may take from its headers to the end of the "
                                             "response (body upload and slow readers included); then it is cut.",
                               60),
    "api_keepalive": Key(int, "Seconds an idle connection is kept open for the client's next request.",
                         5),
    "api_shutdown_timeout": Key(int, "Seconds `serve` gives requests in flight to finish after SIGTERM.",
                                10),
    "openvpn_processes": Key(int, "OpenVPN server processes (1-16), each serving a slice of vpn_subnet on its "
                                  "own port (openvpn_remote_port + i): OpenVPN uses one core per process. "
                                  "See docs/performance.md for when it pays.", 1),
    "openvpn_container": Key(str, "Name of the OpenVPN server container `serve --with-openvpn` starts.",
                             "vpnagent-openvpn"),
    "openvpn_network": Key(str, "Docker network to attach the OpenVPN server container to instead of "
                                "publishing its port on the host (tests and the demo use this)."),
    "openvpn_profile": Key(dict, "Data-plane tuning overrides: cipher, tun_mtu, mssfix, sndbuf, rcvbuf, "
                                 "txqueuelen, fast_io (see docs/performance.md). The default works on any path "
                                 "(1500-byte tunnel MTU, no IP fragments); a bigger tun_mtu only where the path "
                                 "carries it, with the nodes' isolated_mtu and tunnel_mtu raised to match.",
                           shown="safe (tun_mtu 1500)"),
}

# Keys the Flask extension reads (as VPNAGENT_<KEY>); the others are for `serve` (listening,
# TLS, the HTTP server's limits, the OpenVPN container).
EXTENSION_KEYS: tuple[str, ...] = (
    "data_dir", "database_url", "secret", "vpn_subnet", "openvpn_remote_host", "openvpn_remote_port",
    "openvpn_proto", "cert_days", "container_token_seconds", "openvpn_processes", "openvpn_profile")

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
