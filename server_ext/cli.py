"""`vpnagent-server`: serve the API (and the OpenVPN server container), and the admin
commands that create organisations, collaborations, nodes and researchers."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import SCHEMA

# Key -> accepted YAML type(s). Keys, help texts and defaults live in server_ext/config.py
# (SCHEMA), which also renders the reference in docs/operator-guide.md: add new keys there.
KEYS = {key: spec.types for key, spec in SCHEMA.items()}


class ServerConfigError(ValueError):
    pass


def load_server_config(path: str | Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ServerConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ServerConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ServerConfigError(f"{path} must be a mapping of key: value")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ServerConfigError(f"unknown key(s) {', '.join(unknown)} in {path}; allowed: {', '.join(KEYS)}")
    for key, value in raw.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, KEYS[key])):
            raise ServerConfigError(f"'{key}' in {path} has the wrong type ({type(value).__name__})")
    if "data_dir" not in raw:
        raise ServerConfigError(f"'data_dir' is required in {path}")
    return raw


def flask_config(raw: dict[str, Any]) -> dict[str, Any]:
    mapping = {"data_dir": "VPNAGENT_DATA_DIR", "database_url": "VPNAGENT_DATABASE_URL", "secret": "VPNAGENT_SECRET",
               "vpn_subnet": "VPNAGENT_VPN_SUBNET", "openvpn_remote_host": "VPNAGENT_OPENVPN_REMOTE_HOST",
               "openvpn_remote_port": "VPNAGENT_OPENVPN_REMOTE_PORT", "openvpn_proto": "VPNAGENT_OPENVPN_PROTO",
               "cert_days": "VPNAGENT_CERT_DAYS", "openvpn_profile": "VPNAGENT_OPENVPN_PROFILE"}
    return {flask_key: raw[key] for key, flask_key in mapping.items() if raw.get(key) is not None}


def _store(args):
    from .store import Store

    raw = load_server_config(args.config)
    url = raw.get("database_url") or f"sqlite:///{Path(raw['data_dir']).resolve() / 'store.db'}"
    Path(raw["data_dir"]).mkdir(parents=True, exist_ok=True)
    return Store(url)


def cmd_serve(args) -> int:
    from werkzeug.serving import make_server

    from . import create_app
    from .vpnserver import OpenVPNServer

    raw = load_server_config(args.config)
    app = create_app(flask_config(raw))
    vpn = None
    if args.with_openvpn:
        state = app.extensions["vpnagent"]
        vpn = OpenVPNServer(state.files, name=raw.get("openvpn_container", "vpnagent-openvpn"),
                            network=raw.get("openvpn_network"))
        vpn.ensure_running()
    server = make_server(raw.get("host", "127.0.0.1"), raw.get("port", 5000), app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    logging.getLogger(__name__).info("serving on http://%s:%s/api", *server.server_address[:2])
    import threading

    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.5)
    except KeyboardInterrupt:
        server.shutdown()
    finally:
        if vpn is not None:
            vpn.stop()
    return 0


def cmd_add_org(args) -> int:
    org = _store(args).create_organization(args.name)
    print(f"organization {org.id} {org.name}")
    return 0


def cmd_add_collab(args) -> int:
    c = _store(args).create_collaboration(args.name, args.org)
    print(f"collaboration {c.id} {c.name}")
    return 0


def cmd_add_node(args) -> int:
    node, key = _store(args).create_node(args.org, args.collaboration, args.name)
    print(f"node {node.id} {node.name}\napi_key {key}\n(keep the key: it is shown only once)")
    return 0


def cmd_add_user(args) -> int:
    user, key = _store(args).create_user(args.org, args.name)
    print(f"user {user.id} {user.name}\napi_key {key}\n(keep the key: it is shown only once)")
    return 0


def _admin_state(args):
    from . import create_app

    return create_app(flask_config(load_server_config(args.config))).extensions["vpnagent"]


def cmd_remove_node(args) -> int:
    from .admin import remove_node

    r = remove_node(_admin_state(args), args.node_id)
    print(f"node {r.node_id} ({r.common_name}) removed: API key disabled, certificates revoked; {r.note}")
    return 0


def cmd_remove_org(args) -> int:
    from .admin import remove_organization

    removed = remove_organization(_admin_state(args), args.organization_id)
    for r in removed:
        print(f"node {r.node_id} ({r.common_name}) removed; {r.note}")
    print(f"organization {args.organization_id}: {len(removed)} node(s) removed")
    return 0


def cmd_config_reference(args) -> int:
    from .config import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vpnagent-server", description="vpnagent server: API, PKI and OpenVPN server")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", "-c", required=True, help="server YAML config")
        sp.set_defaults(fn=fn)
        return sp

    s = add("serve", cmd_serve, "serve the API")
    s.add_argument("--with-openvpn", action="store_true", help="also start the OpenVPN server container")
    s = add("add-organization", cmd_add_org, "create an organisation")
    s.add_argument("name")
    s = add("add-collaboration", cmd_add_collab, "create a collaboration of organisations")
    s.add_argument("name")
    s.add_argument("--org", type=int, action="append", required=True, help="organisation id (repeat)")
    s = add("add-node", cmd_add_node, "create a node; prints its API key once")
    s.add_argument("name")
    s.add_argument("--org", type=int, required=True)
    s.add_argument("--collaboration", type=int, required=True)
    s = add("add-user", cmd_add_user, "create a researcher; prints the API key once")
    s.add_argument("name")
    s.add_argument("--org", type=int, required=True)
    s = add("remove-node", cmd_remove_node, "take a node out: revoke its certificates, disconnect it")
    s.add_argument("node_id", type=int)
    s = add("remove-organization", cmd_remove_org, "remove every node of an organisation")
    s.add_argument("organization_id", type=int)
    s = sub.add_parser("config-reference", help="print the server config reference (Markdown table)")
    s.set_defaults(fn=cmd_config_reference)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .store import StoreError

    try:
        return args.fn(args)
    except (ServerConfigError, StoreError) as exc:
        print(f"vpnagent-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
