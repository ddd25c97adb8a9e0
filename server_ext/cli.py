"""`vpnagent-server`: serve the API (and the OpenVPN server container), and the admin
commands that create organisations, collaborations, nodes and researchers."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vpnshared.cli import ConfigOption, MissingConfig, add_subcommands, require_config, setup_logging, top_parser

from .admincli import PLANE_CHOICES, plane_text, print_json, server_plane, view
from .config import (ONE_PORT_DEFAULTS, SCHEMA, ServerConfigError, default, default_tls_hostnames, flask_config,
                     load_server_config)

if TYPE_CHECKING:
    from .pki import PKI
    from .wsgi import TLS

# Key -> accepted YAML type(s). Keys, help texts and defaults live in server_ext/config.py
# (SCHEMA), which also renders the reference in docs/operator-guide.md: add new keys there.
KEYS = {key: spec.types for key, spec in SCHEMA.items()}


def _get(raw: dict[str, Any], key: str) -> Any:
    """A key of a loaded config, else its default from the schema."""
    return default(key) if raw.get(key) is None else raw[key]


# Commands that change who exists: a vantage6 sidecar leaves that to vantage6.
VANTAGE6_OWNS = frozenset({"add-organization", "add-collaboration", "add-node", "join-token", "add-user",
                           "remove-user", "rotate-user-key", "remove-node", "remove-organization", "set-data-plane",
                           "rotate-node-key"})

CONFIG = ConfigOption("/etc/vpnagent/server.yaml", "VPNAGENT_SERVER_CONFIG", "server config",
                      "write one: only data_dir is required (`data_dir: /var/lib/vpnagent-server`); "
                      "`vpnagent-server config-reference` lists every key", example="examples/server.yaml")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """The server config the command reads: --config, else $VPNAGENT_SERVER_CONFIG, else the
    default; `--vantage6 FILE` (serve, openvpn) sets its vantage6_config."""
    raw = load_server_config(require_config(args.config, CONFIG))
    if getattr(args, "vantage6", None):
        problem = SCHEMA["vantage6_config"].check.problem(args.vantage6)
        if problem:
            raise ServerConfigError(f"--vantage6 {args.vantage6}: {problem}")
        raw["vantage6_config"] = str(Path(args.vantage6).resolve())
    if raw.get("vantage6_config") and args.cmd in VANTAGE6_OWNS:
        raise ServerConfigError(f"`{args.cmd}` changes nodes, organisations or users, which the vantage6 server owns "
                                "here (vantage6_config is set): do it in vantage6 (its UI, `v6` or its API); the "
                                "sidecar follows, and revokes a node vantage6 deleted within a second")
    return raw


def _database_url(args) -> str:
    from .datadir import private_data_dir

    raw = _config(args)
    private_data_dir(Path(raw["data_dir"]))
    return raw.get("database_url") or f"sqlite:///{Path(raw['data_dir']).resolve() / 'store.db'}"


def _store(args):
    from .store import Store

    return Store(_database_url(args))


def cmd_serve(args) -> int:
    """Serve the API with the production server (server_ext/wsgi.py) until SIGTERM."""
    from . import create_app
    from .vpnserver import OpenVPNServer
    from .wsgi import Limits, serve

    raw = _config(args)
    limits = Limits.from_config(raw)  # refused before anything starts
    if raw.get("one_port") and not args.with_openvpn:
        raise ServerConfigError("one_port: the API is reached through the OpenVPN server's port, so serve "
                                "needs --with-openvpn")
    setup = server_setup(raw)
    host, flask_cfg = setup.host, setup.app_config
    if setup.note:
        print(setup.note, flush=True)
    # This app prepares the data directory and migrates the store (the migrate command); the
    # worker process builds its own to serve (nothing of a database connection survives the fork).
    state = create_app(flask_cfg, migrate=True).extensions["vpnagent"]
    try:
        if args.with_openvpn:  # before its container starts: one OpenVPN service per database
            from .openvpnservice import check_sole_service

            check_sole_service(state.store, _get(raw, "openvpn_container"))
    finally:
        state.store.close()
    vpn = None
    service = None
    extra_names: list[str] = []
    if args.with_openvpn:
        vpn = OpenVPNServer(state.files, name=_get(raw, "openvpn_container"),
                            network=raw.get("openvpn_network"))
        vpn.ensure_running()
        service = _openvpn_service_process(args)
    try:
        if vpn is not None and raw.get("one_port"):
            # nodes on the OpenVPN container's own network reach the API at its address
            extra_names = vpn.addresses()
        tls = None if raw.get("insecure_http") else api_tls(raw, state.pki, extra_names)
        if tls is None:
            logging.getLogger(__name__).warning(
                "serving the API over plain HTTP (insecure_http): API keys and tokens cross the network "
                "unencrypted; use this for local development only")
        return serve(lambda: create_app(flask_cfg), host, _get(raw, "port"), limits, tls)
    finally:
        if service is not None:
            _stop_process(service)
        if vpn is not None:
            vpn.stop()
        logging.getLogger(__name__).info("vpnagent-server (pid %s) stopped", os.getpid())


def _openvpn_service_process(args) -> subprocess.Popen:
    """`serve --with-openvpn`: the OpenVPN service, as the command a separate host runs
    (`vpnagent-server openvpn`), in a process of its own (gunicorn forks its workers from
    this one; a thread with database connections here would be copied into them). It
    leaves preparing the files and running the container to serve, which has done both,
    and ends with serve."""
    command = [sys.executable, "-m", "server_ext.cli", "--log-level", args.log_level, "openvpn",
               "--config", str(require_config(args.config, CONFIG)), "--under-serve"]
    if args.vantage6:
        command += ["--vantage6", args.vantage6]
    return subprocess.Popen(command)


def _stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def cmd_openvpn(args) -> int:
    """The OpenVPN service: run the OpenVPN server container and keep its files and sessions
    matching the store (server_ext/openvpnservice.py) until SIGTERM. Any number of API
    processes, on this host or others, drive it through the database."""
    import signal
    import threading

    from . import create_app
    from .openvpnservice import OpenVPNService, check_sole_service
    from .vpnserver import OpenVPNServer

    raw = _config(args)
    # prepare: the files, the schema, and the same CA and secret as the API servers (the CRL
    # it signs must be the CA's the nodes trust). Under serve, serve has done it.
    state = create_app(server_setup(raw).app_config, migrate=not args.under_serve).extensions["vpnagent"]
    if args.under_serve and state.not_ready():
        raise ServerConfigError(state.not_ready())
    name = _get(raw, "openvpn_container")
    vpn = None if args.no_container or args.under_serve else OpenVPNServer(state.files, name=name,
                                                                            network=raw.get("openvpn_network"))
    stop = threading.Event()
    sweeper = None
    if state.vantage6 is not None:  # vantage6's deleted nodes are revoked first in every pass
        from .sidecar import Sweeper

        sweeper = Sweeper(state)
    service = OpenVPNService(state.store, state.files, name=name, directory_pass=sweeper)
    try:
        check_sole_service(state.store, name, service.host)
        if vpn is not None:
            vpn.ensure_running()
        if args.once:
            done = service.reconcile()
            print(f"openvpn_up {int(done.openvpn_up)}; connected {len(done.connected or ())}; static addresses "
                  f"written {len(done.ccd_written)}, removed {len(done.ccd_removed)}; CRL published "
                  f"{'yes' if done.crl_published else 'no'}; disconnected {', '.join(done.disconnected) or 'none'}")
            return 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if args.under_serve:
            parent = os.getppid()
            threading.Thread(target=_stop_when_orphaned, args=(parent, stop), daemon=True).start()
        logging.getLogger(__name__).info("OpenVPN service %s: reconciling every %g s", name, args.interval)
        service.run(stop, args.interval)
        return 0
    finally:
        if vpn is not None and not (args.leave_running or args.once):
            vpn.stop()
        state.store.close()


def _stop_when_orphaned(parent: int, stop) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


def interval_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds from 0.1 to 60")
    return value


@dataclass(frozen=True)
class ServerSetup:
    """What a server config comes to, decided in one place (server_setup): every command
    builds its app from `app_config`, so serve, migrate, the admin commands and the OpenVPN
    service write the same OpenVPN server config for the same server config (the container
    reads it again whenever it restarts)."""
    host: str                   # where serve's API listens
    app_config: dict[str, Any]  # the extension's VPNAGENT_* keys
    note: str | None = None     # what serve says about it at start (one-port mode)


def server_setup(raw: dict[str, Any], gateway: Callable[[str], str] | None = None) -> ServerSetup:
    """The app config and listen address of a server config. One-port mode: OpenVPN over
    TCP owns the public port (openvpn_remote_port, by default 443: ONE_PORT_DEFAULTS) and
    hands every connection that is not OpenVPN to the API (port-share), which then listens
    where the OpenVPN container reaches it: the host's address on the container's Docker
    network (`gateway(network)`, asked of Docker) unless `host` names an address of its own."""
    host, app_config = _get(raw, "host"), flask_config(raw)
    if not raw.get("one_port"):
        return ServerSetup(host, app_config)
    one_port = {**ONE_PORT_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    if one_port["openvpn_proto"] != "tcp":
        raise ServerConfigError("one_port needs openvpn_proto: tcp (OpenVPN shares a TCP port with HTTPS)")
    if _get(raw, "openvpn_processes") != 1:
        raise ServerConfigError("one_port serves one OpenVPN process: leave openvpn_processes at 1")
    port = _get(raw, "port")
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        share = (gateway or docker_network_gateway)(raw.get("openvpn_network") or "bridge")
        if host != "0.0.0.0":
            host = share  # loopback is out of the container's reach
    else:
        share = host
    return ServerSetup(host, {**app_config, "VPNAGENT_OPENVPN_PROTO": "tcp",
                              "VPNAGENT_OPENVPN_REMOTE_PORT": one_port["openvpn_remote_port"],
                              "VPNAGENT_OPENVPN_PORT_SHARE": f"{share}:{port}"},
                       f"one-port mode: OpenVPN (TCP) and the API share port {one_port['openvpn_remote_port']}; "
                       f"the API listens on {host}:{port} behind it")


def docker_network_gateway(network: str) -> str:
    """The host's IPv4 address on a Docker network: where a container on it reaches the host."""
    import docker

    try:
        ipam = docker.from_env().networks.get(network).attrs["IPAM"]["Config"]
        return next(c["Gateway"] for c in ipam if "Gateway" in c and ":" not in c["Gateway"])
    except (docker.errors.DockerException, StopIteration, KeyError) as exc:
        raise ServerConfigError(
            f"one_port: OpenVPN hands the API's connections to the host's address on Docker network {network}, "
            f"which cannot be found ({exc}); start Docker (every command that writes the OpenVPN server config "
            "asks it), or set `host` to an address of this host that the OpenVPN container reaches") from exc


def tls_context(raw: dict[str, Any], pki: PKI, extra_names: list[str] | None = None) -> ssl.SSLContext:
    """The API's TLS context (see api_tls)."""
    return api_tls(raw, pki, extra_names).context


def api_tls(raw: dict[str, Any], pki: PKI, extra_names: list[str] | None = None) -> TLS:
    """The API's certificate and TLS context: the configured certificate, or one our CA
    issues for tls_hostnames plus `extra_names` (one-port mode: the OpenVPN container's
    addresses). Prints what a node needs to trust it."""
    from .wsgi import TLS

    if bool(raw.get("tls_cert")) != bool(raw.get("tls_key")):
        raise ServerConfigError("'tls_cert' and 'tls_key' go together: give both or neither")
    if raw.get("tls_cert"):
        cert, key = Path(raw["tls_cert"]), Path(raw["tls_key"])
        trust = "the CA that issued tls_cert"
    else:
        names = [*(raw.get("tls_hostnames") or default_tls_hostnames(raw)), *(extra_names or [])]
        cert, key = pki.api_pair(list(dict.fromkeys(str(n) for n in names)))
        trust = f"server_ca_file: {pki.dir / 'ca.crt'}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ServerConfigError(f"cannot load the API certificate {cert} / key {key}: {exc}") from exc
    from .pki import fingerprint

    print(f"API certificate {cert}\n  SHA-256 fingerprint (node config server_fingerprint): "
          f"{fingerprint(cert.read_bytes())}\n  nodes trust it with {trust}", flush=True)
    return TLS(cert, key, ctx)


def cmd_add_org(args) -> int:
    org = _store(args).create_organization(args.name)
    if args.json:
        return print_json(view(args, "organization", org.id))
    print(f"organization {org.id} {org.name}")
    return 0


def cmd_add_collab(args) -> int:
    c = _store(args).create_collaboration(args.name, args.org, args.data_plane)
    data = view(args, "collaboration", c.id, server_plane(args))
    if args.json:
        return print_json(data)
    print(f"collaboration {c.id} {c.name} data plane {plane_text(data)}")
    return 0


def _show_key(kind: str, ident: int, name: str, key: str, note: str = "") -> None:
    print(f"{kind} {ident} {name}\napi_key {key}\n(keep the key: it is shown only once{note})")


def cmd_add_node(args) -> int:
    """The node and, by default, its join string (no API key is shown: the node gets one
    when it joins); with --api-key, or where nodes cannot join, its API key."""
    raw = _config(args)
    why_not = None if args.api_key else _why_no_join(raw)
    url = None if args.api_key or why_not else _join_url(raw, args.server_url, args.name)
    node, key = _store(args).create_node(args.org, args.collaboration, args.name)
    if url is None:
        if args.json:
            return print_json(view(args, "node", node.id, api_key=key, join_string=None, why_no_join=why_not))
        _show_key("node", node.id, node.name, key, f"; {why_not}" if why_not else "")
        return 0
    _show_join(args, node.id, url)
    return 0


def cmd_join_token(args) -> int:
    """A new join string for an existing node (its earlier unspent one stops working)."""
    raw = _config(args)
    why_not = _why_no_join(raw)
    if why_not:
        raise ServerConfigError(f"no join string: {why_not}")
    node = _store(args).get_node(args.node_id)
    _show_join(args, node.id, _join_url(raw, args.server_url, node.name))
    return 0


def _why_no_join(raw: dict[str, Any]) -> str | None:
    """Why this server cannot hand out join strings, or None when it can."""
    if raw.get("insecure_http"):
        return ("insecure_http serves the API over plain HTTP, where a join string's CA pin protects nothing: "
                "put the API key in the node config by hand")
    if raw.get("tls_cert"):
        return ("the API serves tls_cert, which this server's CA did not issue, so a join string cannot pin it: "
                "put the API key in the node config by hand (server_ca_file: the CA of tls_cert)")
    return None


JOIN_URL_KEYS = ("tls_hostnames", "openvpn_remote_host", "host", "port")


def _join_url(raw: dict[str, Any], given: str | None, name: str) -> str:
    """The API URL for a join string, checked before anything is stored."""
    from vpnshared.joinstring import JoinString, JoinStringError

    from .join import api_url

    url = (given or api_url(raw, default("port"), default("host"))).rstrip("/")
    try:
        JoinString(url, "sha256:" + "0" * 64, name, "x" * 43)
    except JoinStringError as exc:
        where = "--server-url" if given else f"the API URL made from {', '.join(JOIN_URL_KEYS)}"
        raise ServerConfigError(f"{where}: {exc}; give --server-url with the URL nodes reach the API at, like "
                                "https://vpn.example.org:5000/api") from None
    return url


def _show_join(args, node_id: int, url: str) -> None:
    from .join import issue_join_token, join_string

    state = _admin_state(args)
    try:
        issued = issue_join_token(state.store, node_id, args.expires)
        line = join_string(url, state.pki.ca_pem, issued)
    finally:
        state.store.close()
    if getattr(args, "json", False):
        print_json({"id": issued.node_id, "name": issued.node_name, "join_string": line, "server_url": url,
                    "expires_at": issued.expires_at.isoformat()})
        return
    print(f"node {issued.node_id} {issued.node_name}\njoin_string {line}\n"
          f"(on the node, as root: `vpnagent join <join_string>`; it works once, until "
          f"{issued.expires_at:%Y-%m-%d %H:%M} UTC, and reaches the server at {url}; "
          f"`vpnagent-server join-token {issued.node_id}` issues a new one)")


def join_lifetime(text: str) -> dt.timedelta:
    """--expires on the command line: a usage error (exit 2) when it cannot be used."""
    from .join import parse_lifetime

    try:
        return parse_lifetime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _join_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--expires", type=join_lifetime, default="24h", metavar="DURATION",
                    help="how long the join string works, like 30m, 24h (default) or 7d; it works once")
    sp.add_argument("--server-url", metavar="URL",
                    help="the API URL nodes reach (default: from tls_hostnames, openvpn_remote_host and port)")


def cmd_add_user(args) -> int:
    user, key = _store(args).create_user(args.org, args.name)
    if args.json:
        return print_json(view(args, "user", user.id, api_key=key))
    _show_key("user", user.id, user.name, key)
    return 0


def cmd_list_users(args) -> int:
    users = _store(args).list_users(args.org)
    if args.json:
        from .inventory import user_json

        return print_json([user_json(u) for u in users])
    for u in users:
        gone = f"  removed {u.removed_at:%Y-%m-%d %H:%M} UTC" if u.removed_at else ""
        print(f"user {u.id} {u.name} (organization {u.organization_id}){gone}")
    if not users:
        print("no users")
    return 0


def cmd_remove_user(args) -> int:
    user = _store(args).remove_user(args.user_id)
    if args.json:
        return print_json(view(args, "user", user.id))
    print(f"user {user.id} ({user.name}) removed: its API key and every token issued with it stopped working")
    return 0


def cmd_rotate_user_key(args) -> int:
    user, key = _store(args).rotate_user_key(args.user_id)
    if args.json:
        return print_json(view(args, "user", user.id, api_key=key))
    _show_key("user", user.id, user.name, key, "; the old key and its tokens stopped working")
    return 0


def _admin_state(args):
    from . import create_app

    return create_app(server_setup(_config(args)).app_config, migrate=True).extensions["vpnagent"]


def cmd_remove_node(args) -> int:
    from .admin import remove_node

    r = remove_node(_admin_state(args), args.node_id)
    if args.json:
        return print_json(view(args, "node", r.node_id, disconnected=r.disconnected, note=r.note))
    print(f"node {r.node_id} ({r.common_name}) removed: API key disabled, certificates revoked; {r.note}")
    return 0


def cmd_remove_org(args) -> int:
    from .admin import remove_organization

    removed = remove_organization(_admin_state(args), args.organization_id)
    if args.json:
        from dataclasses import asdict

        return print_json(view(args, "organization", args.organization_id,
                               removed_nodes=[asdict(r) for r in removed.nodes],
                               removed_users=[u.id for u in removed.users]))
    for r in removed.nodes:
        print(f"node {r.node_id} ({r.common_name}) removed; {r.note}")
    for user in removed.users:
        print(f"user {user.id} ({user.name}) removed")
    print(f"organization {args.organization_id}: {len(removed.nodes)} node(s) and {len(removed.users)} user(s) removed")
    return 0


def cmd_migrate(args) -> int:
    """What `flask vpnagent migrate` does for an app embedding the extension: the data
    directory's files where missing, and the database at the newest schema."""
    from . import create_app

    state = create_app(server_setup(_config(args)).app_config).extensions["vpnagent"]
    steps = state.prepare(progress=lambda msg: print(msg, flush=True))
    state.store.close()
    done = "migrated to" if steps else "already at"
    print(f"{state.data_dir} ready; database {state.store.url} {done} the newest schema")
    return 0


def cmd_db_upgrade(args) -> int:
    """Migrate explicitly (the server also does it when it starts), saying each step."""
    from .store import Store

    store = Store(_database_url(args), progress=lambda msg: print(msg, flush=True))
    store.close()
    print(f"{store.url}: up to date")
    return 0


def cmd_db_current(args) -> int:
    """The database's revision; exit status 1 when an upgrade is pending. Changes nothing."""
    from . import schema
    from .store import database_errors, make_engine

    engine = make_engine(_database_url(args))
    shown = engine.url.render_as_string(hide_password=True)
    head = schema.head_revision()
    todo = f"newest is {head}: run `vpnagent-server db-upgrade --config {args.config}`"
    if engine.dialect.name == "sqlite" and engine.url.database and not Path(engine.url.database).exists():
        print(f"{shown}: no database file yet; {todo}")  # connecting would create it
        return 1
    try:
        with database_errors(shown), engine.connect() as conn:
            current = schema.current_revision(conn)
            legacy = current is None and schema.made_before_migrations(conn)
    finally:
        engine.dispose()
    if current == head:
        print(f"{shown}: revision {current} (newest)")
        return 0
    state = f"revision {current}" if current else "tables from before migrations" if legacy else "empty"
    print(f"{shown}: {state}; {todo}")
    return 1


def cmd_vantage6_status(args) -> int:
    """A sidecar's vantage6 nodes: VPN IP, certificate expiry and what to do. A vantage6
    node renews its certificate only by restarting, so this is the list to watch."""
    from .sidecar import certificate_report

    state = _admin_state(args)
    if state.vantage6 is None:
        raise ServerConfigError("this server is no vantage6 sidecar: set vantage6_config in its config, or give "
                                "--vantage6 FILE (docs/vantage6.md)")
    try:
        rows = certificate_report(state)
    finally:
        state.store.close()
        state.directory.close()
    if args.json:
        return print_json(rows)
    print(f"vantage6 server config {state.vantage6.path}; {len(rows)} node(s) with VPN state")
    for row in rows:
        until = f" until {row['not_after']}" if row["not_after"] else ""
        action = f": {row['action']}" if row["action"] else ""
        print(f"node {row['node_id']}  {row['vpn_ip'] or '-'}  {row['state']}{until}{action}")
    return 1 if any(row["state"] in ("expired", "expiring") for row in rows) else 0


def cmd_config_reference(args) -> int:
    from .config import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0


def _vantage6_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--vantage6", metavar="FILE",
                    help="the config file of the vantage6 4.x server this one is the sidecar of (sets "
                         "vantage6_config; docs/vantage6.md)")


def db_id(text: str) -> int:
    """An id on the command line: one the store can hold, else a usage error (exit 2)."""
    from .inputs import InputError, parse_id

    try:
        return parse_id("the id", text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    p = top_parser("vpnagent-server", "vpnagent server: API, PKI and OpenVPN server", CONFIG)
    sub = add_subcommands(p, CONFIG, dest="cmd", required=True)

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(fn=fn)
        return sp

    s = add("serve", cmd_serve, "serve the API")
    s.add_argument("--with-openvpn", action="store_true",
                   help="also run the OpenVPN service here (the container and `vpnagent-server openvpn`)")
    _vantage6_option(s)
    s = add("openvpn", cmd_openvpn, "the OpenVPN service: run the OpenVPN server container and keep it matching "
            "the database, for API servers on this host or others (docs/operator-guide.md, Scaling out)")
    s.add_argument("--interval", type=interval_seconds, default=1.0, metavar="SECONDS",
                   help="seconds between passes (default 1): how soon a change made through an API server "
                        "reaches OpenVPN")
    s.add_argument("--once", action="store_true", help="one pass, say what it did, and exit (the container stays)")
    s.add_argument("--no-container", action="store_true",
                   help="do not start or stop the container: OpenVPN is run by something else")
    s.add_argument("--leave-running", action="store_true", help="leave the container running on exit")
    s.add_argument("--under-serve", action="store_true", help=argparse.SUPPRESS)  # started by serve --with-openvpn
    _vantage6_option(s)
    s = add("vantage6-status", cmd_vantage6_status, "a vantage6 sidecar's nodes: VPN IP, certificate expiry, what "
            "to do (exit 1 when one expires within 30 days)")
    _vantage6_option(s)
    s.add_argument("--json", action="store_true", help="a JSON list instead of lines")
    s = add("add-organization", cmd_add_org, "create an organisation")
    s.add_argument("name")
    s = add("add-collaboration", cmd_add_collab, "create a collaboration of organisations")
    s.add_argument("name")
    s.add_argument("--org", type=db_id, action="append", required=True, help="organisation id (repeat)")
    s.add_argument("--data-plane", choices=PLANE_CHOICES, default="default",
                   help="how its algorithm traffic travels (default: the server config's data_plane, and any "
                        "later change of it)")
    s = add("add-node", cmd_add_node, "create a node; prints its join string (for `vpnagent join`)")
    s.add_argument("name")
    s.add_argument("--org", type=db_id, required=True)
    s.add_argument("--collaboration", type=db_id, required=True)
    _join_options(s)
    s.add_argument("--api-key", action="store_true",
                   help="print the node's API key (once) instead of a join string, for a hand-written node config")
    s = add("join-token", cmd_join_token, "issue a new join string for a node (its earlier unspent one stops "
            "working; joining with it replaces the node's API key)")
    s.add_argument("node_id", type=db_id)
    _join_options(s)
    s = add("add-user", cmd_add_user, "create a researcher; prints the API key once")
    s.add_argument("name")
    s.add_argument("--org", type=db_id, required=True)
    s = add("list-users", cmd_list_users, "list the researchers, removed ones included")
    s.add_argument("--org", type=db_id, help="only this organisation's")
    s.add_argument("--json", action="store_true", help="a JSON list instead of lines")
    s = add("remove-user", cmd_remove_user, "take a researcher out: its API key and tokens stop working at once")
    s.add_argument("user_id", type=db_id)
    s = add("rotate-user-key", cmd_rotate_user_key,
            "give a researcher a new API key (printed once); the old key and its tokens stop working at once")
    s.add_argument("user_id", type=db_id)
    s = add("remove-node", cmd_remove_node, "take a node out: revoke its certificates, disconnect it")
    s.add_argument("node_id", type=db_id)
    s = add("remove-organization", cmd_remove_org, "remove every node and every researcher of an organisation")
    s.add_argument("organization_id", type=db_id)
    from .admincli import register

    register(sub, add, db_id)  # list/show, rotate-node-key, admins; --json on every admin command
    add("migrate", cmd_migrate, "make the data directory's files (secret, PKI, OpenVPN configs) where missing "
        "and migrate the database (serve does it too)")
    add("db-upgrade", cmd_db_upgrade, "migrate the database only, saying each step (serve does it too)")
    add("db-current", cmd_db_current, "show the database's schema revision; exit 1 if an upgrade is pending")
    s = sub.add_parser("config-reference", help="print the server config reference (Markdown table)")
    s.set_defaults(fn=cmd_config_reference)
    args = p.parse_args(argv)
    # alembic: the store reports migration steps itself
    setup_logging(args.log_level, quiet=("alembic", "urllib3", "docker"))
    from .store import StoreError

    try:
        return args.fn(args)
    except (MissingConfig, ServerConfigError, StoreError) as exc:
        print(f"vpnagent-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
