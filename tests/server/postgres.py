"""Throw-away PostgreSQL databases for the server tests.

VPNAGENT_TEST_POSTGRES_URL names a database on a real server whose role may create
databases (scripts/postgres.sh makes one; `make test` exports it). Each test gets a database
of its own, created empty and dropped afterwards, so no test sees another's rows. Names carry
the pytest process id: parallel test runs on one server do not collide, and databases left
by a killed run are dropped by the next one."""
from __future__ import annotations

import itertools
import os
import re
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ProgrammingError, SQLAlchemyError

ENV_URL = "VPNAGENT_TEST_POSTGRES_URL"
ENV_REQUIRE = "VPNAGENT_REQUIRE_POSTGRES"
PREFIX = "vpnagent_t_"


def postgres_unavailable(reason: str) -> None:
    """Skip, or fail when the environment says the PostgreSQL tests must run (.ci/run)."""
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"PostgreSQL tests cannot run: {reason} ({ENV_REQUIRE}=1)")
    pytest.skip(f"{reason} (`make test` starts one: scripts/postgres.sh)")


class PostgresDatabases:
    """Creates and drops databases through an admin connection to the server."""

    def __init__(self, url: str) -> None:
        self.base = make_url(url)
        if self.base.drivername == "postgresql":
            self.base = self.base.set(drivername="postgresql+psycopg")
        # CREATE/DROP DATABASE cannot run inside a transaction.
        self.admin: Engine = create_engine(self.base, isolation_level="AUTOCOMMIT", pool_size=1)
        self._numbers = itertools.count()
        self.pid = os.getpid()

    def check(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text("SELECT 1"))

    def create(self) -> str:
        """A new empty database; returns its URL (password included)."""
        name = f"{PREFIX}{self.pid}_{next(self._numbers)}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self.base.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        assert name and name.startswith(PREFIX), name
        self._drop(name)

    def _drop(self, name: str, timeout: float = 15.0) -> None:
        """DROP ... WITH (FORCE) ends the tests' own sessions; it is refused (insufficient
        privilege) while an autovacuum worker, a superuser's session, is in the fresh
        database, which lasts a moment: try again until it is gone."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                return
            except ProgrammingError as exc:
                if "pg_signal_backend" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def drop_leftovers(self) -> None:
        """Databases of test runs that were killed before their teardown."""
        with self.admin.connect() as conn:
            names = conn.scalars(text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                                 {"p": PREFIX.replace("_", r"\_") + "%"}).all()
            for name in names:
                m = re.fullmatch(rf"{PREFIX}(\d+)_\d+", name)
                if m and not _alive(int(m.group(1))):
                    self._drop(name)

    def close(self) -> None:
        self.admin.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def connect_from_env() -> PostgresDatabases:
    url = os.environ.get(ENV_URL)
    if not url:
        postgres_unavailable(f"{ENV_URL} is not set")
    dbs = PostgresDatabases(url)
    try:
        dbs.check()
    except SQLAlchemyError as exc:
        dbs.close()
        postgres_unavailable(f"PostgreSQL at {dbs.base.render_as_string(hide_password=True)} is unreachable: "
                             f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}")
    dbs.drop_leftovers()
    return dbs
