"""`flask vpnagent ...`: the commands a host app runs for the extension, beside its own
(`flask --app <your app> vpnagent migrate`)."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .store import StoreError

cli = AppGroup("vpnagent", help="The vpnagent extension: set it up and migrate its database.")


@cli.command("migrate")
def migrate() -> None:
    """Make the token secret, PKI and OpenVPN files in VPNAGENT_DATA_DIR where missing and
    migrate the database to the newest schema. Run it after installing or upgrading;
    running it again changes nothing."""
    state = current_app.extensions["vpnagent"]
    try:
        steps = state.prepare(progress=lambda msg: click.echo(msg))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    done = "migrated to" if steps else "already at"
    click.echo(f"vpnagent: {state.data_dir} ready; database {state.store.url} {done} the newest schema")
