"""Schema migrations of the store, with Alembic configured in code.

The revisions ship inside the package (server_ext/migrations/versions), so neither the
server nor `vpnagent-server db-upgrade` needs an alembic.ini in the working directory.
Store start-up calls upgrade(): a new database gets every revision, an up-to-date one
nothing, and one made by a vpnagent from before migrations (tables made by create_all, no
alembic_version) is stamped at the baseline first, so its rows are kept."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from .store import DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# The revision that equals the schema create_all made before there were migrations.
BASELINE = "0001"
BASELINE_TABLES = frozenset({"organization", "collaboration", "collaboration_member", "node", "user", "task",
                             "run", "port", "certificate"})
# Key of the PostgreSQL advisory lock held while migrating (any constant unique to us).
_PG_LOCK_KEY = 0x76706E61


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's Config without a file: the packaged scripts, and the connection env.py
    should migrate."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    return head


@dataclass(frozen=True)
class Step:
    """One revision an upgrade applies."""
    revision: str
    down_revision: str | None
    doc: str


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None for an empty (or pre-migration) database."""
    return MigrationContext.configure(conn).get_current_revision()


def _pending(current: str | None) -> list[Step]:
    scripts = _scripts()
    steps = [Step(s.revision, s.down_revision if isinstance(s.down_revision, str) else None, s.doc)
             for s in scripts.iterate_revisions(head_revision(), current)]
    return list(reversed(steps))  # iterate_revisions walks from head down


def upgrade(engine: Engine, progress: Callable[[str], None] = lambda _msg: None) -> list[Step]:
    """Bring the database to the newest revision and return the steps applied (none when
    it was there already). Runs in one transaction where the backend allows (PostgreSQL:
    a failed migration leaves the database as it was)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two servers starting on an empty database would both create the tables; this
            # lock (released at commit) makes the second wait and then find nothing to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        current = current_revision(conn)
        if current == head_revision():
            return []
        if current is not None and current not in {s.revision for s in _scripts().walk_revisions()}:
            raise DatabaseError(f"the database is at revision {current}, which this vpnagent does not know: a newer "
                                "vpnagent migrated it; run that version (or newer) against this database")
        progress(f"database at revision {current or '(empty)'}, newest is {head_revision()}")
        if current is None and made_before_migrations(conn):
            progress(f"tables from before migrations found: stamping them as revision {BASELINE}")
            command.stamp(alembic_config(conn), BASELINE)
            current = BASELINE
        steps = _pending(current)
        for step in steps:
            progress(f"applying {step.down_revision or '(empty)'} -> {step.revision}: {step.doc}")
        command.upgrade(alembic_config(conn), "head")
    progress(f"database at revision {head_revision()}")
    return steps


def made_before_migrations(conn: Connection) -> bool:
    """True for a database that an earlier vpnagent filled with create_all. Refuses one
    that has only some of those tables: stamping it would hide what is missing."""
    present = BASELINE_TABLES & set(inspect(conn).get_table_names())
    if not present:
        return False
    if present != BASELINE_TABLES:
        missing = ", ".join(sorted(BASELINE_TABLES - present))
        raise DatabaseError(f"the database has some of vpnagent's tables but not {missing}, and no migration "
                            "history (alembic_version): it is not a vpnagent store; point database_url at an "
                            "empty database or at an existing vpnagent store")
    return True
