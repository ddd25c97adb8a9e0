"""Alembic's environment for the store's migrations.

vpnagent runs this through server_ext.schema (Store start-up, `vpnagent-server db-upgrade`),
which hands over an open connection in config.attributes["connection"]. The `alembic`
command line (for developers writing a new revision, see docs/database.md) passes the
database instead: `-x url=<SQLAlchemy URL>`."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from server_ext.store import Base

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead, so one
        # revision works on both backends.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    if config.config_file_name:
        from logging.config import fileConfig

        fileConfig(config.config_file_name)
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -c server_ext/migrations/alembic.ini -x url=<SQLAlchemy URL> ...")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = create_engine(url)
        with engine.begin() as conn:
            _run(conn)
        engine.dispose()
