"""The server's YAML configuration keys, described once.

SCHEMA is what `vpnagent-server` accepts (load_server_config in cli.py checks key names and
types against it) and what `vpnagent-server config-reference` renders into
docs/operator-guide.md, so the documented keys cannot drift from the accepted ones. A new
key goes here, with its help text and default, and nowhere else."""
from __future__ import annotations

# The node config's Key and table renderer: one description format for both configs.
from vpnagent.config import Key, schema_table


class ServerConfigError(ValueError):
    """The server config (or a value in it) cannot be used; the message says what to fix."""


SCHEMA: dict[str, Key] = {
    "data_dir": Key(str, "Directory of the server's state: pki/ (CA, OpenVPN server and tls-crypt keys, CRL, API certificate), store.db "
                         "(SQLite), secret (token signing key), openvpn/ (server.conf, ccd/). Created 0700; "
                         "back it up.", required=True),
    "host": Key(str, "Address the API listens on.", "127.0.0.1"),
    "port": Key(int, "TCP port the API listens on.", "5000"),
    "tls_cert": Key(str, "PEM certificate (chain) the API serves over HTTPS. Without it the server issues its own "
                         "from its CA (data_dir/pki/api.crt) for tls_hostnames; nodes then set server_ca_file "
                         "to data_dir/pki/ca.crt or pin the fingerprint `serve` prints."),
    "tls_key": Key(str, "PEM private key of tls_cert."),
    "tls_hostnames": Key(list, "Names and addresses nodes use to reach the API, put in the self-issued "
                               "certificate.", "host, localhost, 127.0.0.1"),
    "insecure_http": Key(bool, "Serve the API over plain HTTP (local development only; the server warns).",
                         "false"),
    "database_url": Key(str, "SQLAlchemy URL of the store, e.g. postgresql+psycopg://user:pw@db/vpnagent "
                             "(see docs/database.md).", "SQLite `data_dir/store.db`"),
    "secret": Key(str, "Key that signs the API's JWTs (at least 32 characters). Leave it out to have one "
                       "generated and kept in data_dir/secret.", "generated"),
    "vpn_subnet": Key(str, "Subnet node VPN IPs are allocated from; every node config's vpn_subnet must "
                           "equal it.", "10.76.0.0/16"),
    "openvpn_remote_host": Key(str, "Host name or address nodes put in `remote` to reach the OpenVPN "
                                    "server: the public name of this machine.", "127.0.0.1"),
    "openvpn_remote_port": Key(int, "Port of the OpenVPN server (published on the host unless "
                                    "openvpn_network is set).", "1194"),
    "openvpn_proto": Key(str, "`udp` (faster) or `tcp` (for sites that only let TCP out).", "udp"),
    "cert_days": Key((int, float), "Lifetime in days of the node certificates the CA issues.", "30"),
    "container_token_seconds": Key(int, "Lifetime in seconds of a container token (2-604800; 21600 is 6 h). "
                                        "The node renews the token of every live run before it expires, so runs "
                                        "may last longer; short values are for tests.", "21600"),
    "one_port": Key(bool, "One-port mode: OpenVPN runs over TCP on openvpn_remote_port (default 443 here) and "
                          "passes every other connection to the API (OpenVPN port-share), so a node needs only "
                          "outgoing TCP to that one port. Nodes then use server_url https://<host>:443/api.",
                    "false"),
    "api_threads": Key(int, "Threads serving API requests at once (1-1024). More wait in the kernel's backlog.",
                       "16"),
    "api_max_connections": Key(int, "Open API connections at most, busy and kept alive (more than api_threads); "
                                    "beyond it the server stops accepting until some close.", "256"),
    "api_header_timeout": Key((int, float), "Seconds a client has to deliver a request's headers (TLS handshake "
                                            "included) from when the server starts reading them; a slower one is "
                                            "disconnected.",
                              "10"),
    "api_request_timeout": Key((int, float), "Seconds a request may take from its headers to the end of the "
                                             "response (body upload and slow readers included); then it is cut.",
                               "60"),
    "api_keepalive": Key(int, "Seconds an idle connection is kept open for the client's next request.",
                         "5"),
    "api_shutdown_timeout": Key(int, "Seconds `serve` gives requests in flight to finish after SIGTERM.",
                                "10"),
    "openvpn_processes": Key(int, "OpenVPN server processes (1-16), each serving a slice of vpn_subnet on its "
                                  "own port (openvpn_remote_port + i): OpenVPN uses one core per process. "
                                  "See docs/performance.md for when it pays.", "1"),
    "openvpn_container": Key(str, "Name of the OpenVPN server container `serve --with-openvpn` starts.",
                             "vpnagent-openvpn"),
    "openvpn_network": Key(str, "Docker network to attach the OpenVPN server container to instead of "
                                "publishing its port on the host (tests and the demo use this)."),
    "openvpn_profile": Key(dict, "Data-plane tuning overrides: cipher, tun_mtu, mssfix, sndbuf, rcvbuf, "
                                 "txqueuelen, fast_io (see docs/performance.md). The default works on any path "
                                 "(1500-byte tunnel MTU, no IP fragments); a bigger tun_mtu only where the path "
                                 "carries it, with the nodes' isolated_mtu and tunnel_mtu raised to match.",
                           "safe (tun_mtu 1500)"),
}

def types_of(key: str) -> tuple[type, ...]:
    spec = SCHEMA[key].types
    return spec if isinstance(spec, tuple) else (spec,)


def reference_markdown() -> str:
    """The server config reference table (docs/operator-guide.md embeds it)."""
    return schema_table(SCHEMA)
