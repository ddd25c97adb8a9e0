"""server_ext: the server side of vpnagent, a Flask extension that leaves its host app alone.

    app = Flask(__name__)
    app.config.update(VPNAGENT_DATA_DIR="/srv/vpnagent")
    VPNExtension(app)           # or ext = VPNExtension(); ext.init_app(app)

and then, once and after every upgrade, `flask --app <your app> vpnagent migrate`: it makes
the token secret, PKI and OpenVPN files in the data directory where missing and migrates the
database. init_app itself writes no file and opens no database connection; until migrate
has run, the extension's routes answer 503 saying to run it. Its error handlers and its
64 KiB body limit apply to its own routes only, so the host's routes and error pages are
unchanged.

Standalone: `create_app({...})`, which `vpnagent-server serve` runs. The app.config keys
(VPNAGENT_*) and their defaults are described once, in server_ext/config.py."""
from __future__ import annotations

from typing import Any

from flask import Flask

from .config import setting
from .state import ExtensionState, container_token_seconds, profile_from_config

__all__ = ["VPNExtension", "ExtensionState", "create_app", "container_token_seconds", "profile_from_config"]


class VPNExtension:
    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Mount the API and the `flask vpnagent` commands on `app`; reads its config, writes
        nothing (see the module docstring)."""
        from .adminapi import bp  # api.py's Blueprint; importing adminapi adds the /admin routes to it
        from . import eventstream  # noqa: F401 - adds GET /node/events to it
        from .commands import cli

        state = ExtensionState.from_config(app.config, app.instance_path)
        app.extensions["vpnagent"] = state
        if state.vantage6 is not None:  # a sidecar: vantage6's VPN routes only, under its api_path
            from .sidecar import bp as sidecar

            app.register_blueprint(sidecar, url_prefix=state.vantage6.api_path)
        else:
            app.register_blueprint(bp, url_prefix=setting(app.config, "url_prefix"))
        app.cli.add_command(cli)
        if setting(app.config, "metrics"):
            from .metrics import init_metrics

            init_metrics(app, state.store)


def create_app(config: dict[str, Any] | None = None, *, migrate: bool = False) -> Flask:
    """The standalone server: a Flask app with only this extension. migrate=True also
    prepares it (what the migrate command does), for scripts and tests that serve at once."""
    app = Flask("vpnagent-server")
    app.config.update(config or {})
    VPNExtension(app)
    if migrate:
        app.extensions["vpnagent"].prepare()
    return app
