"""server_ext: the server side of vpnagent, a Flask extension.

    app = Flask(__name__)
    app.config.update(VPNAGENT_DATA_DIR="/srv/vpnagent", VPNAGENT_SECRET="...")
    VPNExtension(app)           # or ext = VPNExtension(); ext.init_app(app)

or standalone: `create_app({...})`. Config keys (all prefixed VPNAGENT_): DATA_DIR,
SECRET (>= 32 chars; generated and kept in DATA_DIR when absent), DATABASE_URL (default
SQLite in DATA_DIR), VPN_SUBNET, OPENVPN_REMOTE_HOST, OPENVPN_REMOTE_PORT, OPENVPN_PROTO,
CERT_DAYS, CONTAINER_TOKEN_SECONDS, URL_PREFIX (default /api), METRICS (default True:
Prometheus text at /metrics, outside the prefix; docs/metrics.md).
"""
from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .config import ServerConfigError
from .ovpn import DEFAULT_PROFILE, Profile, VPNSettings
from .pki import PKI, write_private
from .store import Store
from .tokens import LIFETIMES, TokenService
from .vpnserver import OpenVPNFiles

MAX_BODY = 64 * 1024


@dataclass
class ExtensionState:
    store: Store
    pki: PKI
    tokens: TokenService
    files: OpenVPNFiles
    settings: VPNSettings
    cert_days: float


class VPNExtension:
    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        from .api import bp

        cfg = app.config
        data_dir = Path(cfg.get("VPNAGENT_DATA_DIR") or app.instance_path).resolve()
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        secret = cfg.get("VPNAGENT_SECRET") or _stored_secret(data_dir)
        settings = VPNSettings(
            subnet=ipaddress.IPv4Network(cfg.get("VPNAGENT_VPN_SUBNET", "10.76.0.0/16")),
            remote_host=cfg.get("VPNAGENT_OPENVPN_REMOTE_HOST", "127.0.0.1"),
            remote_port=int(cfg.get("VPNAGENT_OPENVPN_REMOTE_PORT", 1194)),
            proto=cfg.get("VPNAGENT_OPENVPN_PROTO", "udp"),
            profile=profile_from_config(cfg.get("VPNAGENT_OPENVPN_PROFILE")),
            processes=int(cfg.get("VPNAGENT_OPENVPN_PROCESSES", 1)),
            port_share=_host_port(cfg.get("VPNAGENT_OPENVPN_PORT_SHARE")),
        )
        container_seconds = container_token_seconds(cfg.get("VPNAGENT_CONTAINER_TOKEN_SECONDS"))
        pki = PKI(data_dir / "pki")
        state = ExtensionState(
            store=Store(cfg.get("VPNAGENT_DATABASE_URL") or f"sqlite:///{data_dir / 'store.db'}"),
            pki=pki,
            tokens=TokenService(secret, {"container": container_seconds}),
            files=OpenVPNFiles(data_dir / "openvpn", pki, settings),
            settings=settings,
            cert_days=float(cfg.get("VPNAGENT_CERT_DAYS", 30)),
        )
        state.files.write_all()
        app.extensions["vpnagent"] = state
        if not cfg.get("MAX_CONTENT_LENGTH"):
            cfg["MAX_CONTENT_LENGTH"] = MAX_BODY
        app.register_blueprint(bp, url_prefix=cfg.get("VPNAGENT_URL_PREFIX", "/api"))
        if cfg.get("VPNAGENT_METRICS", True):
            from .metrics import init_metrics

            init_metrics(app, state.store, state.files.management_sockets)
        app.register_error_handler(HTTPException, _http_error)


def _http_error(exc: HTTPException):
    msg = {413: "request body larger than 64 KiB", 404: "no such endpoint", 405: "method not allowed here"}
    return jsonify(msg=msg.get(exc.code, exc.description)), exc.code


def profile_from_config(raw: dict | None) -> Profile:
    """The data-plane profile: the tuned default, with any field overridden by config."""
    if not raw:
        return DEFAULT_PROFILE
    fields = set(Profile.__dataclass_fields__)
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"unknown openvpn_profile key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    return replace(DEFAULT_PROFILE, **raw)


def container_token_seconds(value: Any) -> int:
    """The container token lifetime the config sets (server_ext/config.py), else 6 h. At
    least 2 s, so a token outlives the request that fetched it; at most 7 days, so a leaked
    one is not good for long (the node renews tokens of live runs anyway)."""
    if value is None:
        return LIFETIMES["container"]
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 604_800:
        raise ServerConfigError(f"container_token_seconds is {value!r}; give whole seconds from 2 to 604800 "
                                "(7 days), or leave it out for 21600 (6 h)")
    return value


def _host_port(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = str(value).rpartition(":")
    return host, int(port)


def _stored_secret(data_dir: Path) -> str:
    path = data_dir / "secret"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(48))
    return path.read_text().strip()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The standalone server: a Flask app with only this extension."""
    app = Flask("vpnagent-server")
    app.config.update(config or {})
    VPNExtension(app)
    return app
