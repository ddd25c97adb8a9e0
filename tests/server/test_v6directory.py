"""server_ext/v6directory.py on its own: reading a vantage6 server's config, the tokens it
takes and refuses, and a connection to vantage6's database that cannot write (SQLite, and
PostgreSQL where the suite has one). tests/server/test_vantage6_sidecar.py runs all of it
against the real vantage6-server 4.13.7."""
from __future__ import annotations

import time

import jwt
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.exc import DBAPIError

from server_ext.config import ServerConfigError
from server_ext.tokens import TokenError
from server_ext.v6directory import Vantage6Config, Vantage6Directory, load_vantage6_config, read_only_engine
from tests.server.conftest import fresh_database

SECRET = "s" * 40


def _write(tmp_path, raw) -> str:
    path = tmp_path / "v6.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_config_takes_uri_secret_and_api_path(tmp_path):
    cfg = load_vantage6_config(_write(tmp_path, {"uri": "sqlite:////tmp/v6.db", "jwt_secret_key": SECRET,
                                                 "api_path": "/server/api/"}))
    assert (cfg.database_url, cfg.jwt_secret, cfg.api_path) == ("sqlite:////tmp/v6.db", SECRET, "/server/api")
    # `v6 server new` files keep the settings under application:
    nested = load_vantage6_config(_write(tmp_path, {"application": {"uri": "sqlite:////x.db", "jwt_secret_key": SECRET}}))
    assert (nested.database_url, nested.api_path) == ("sqlite:////x.db", "/api")


@pytest.mark.parametrize("raw, words", [
    ({"jwt_secret_key": SECRET}, "no database `uri`"),
    ({"uri": "sqlite:////x.db"}, "jwt_secret_key"),
    ({"uri": "sqlite:////x.db", "jwt_secret_key": "short"}, "32 characters"),
    ({"uri": "sqlite:////x.db", "jwt_secret_key": SECRET, "api_path": "api"}, "starting with /"),
    (["a", "list"], "mapping"),
])
def test_config_problems_are_named(tmp_path, raw, words):
    with pytest.raises(ServerConfigError, match=words):
        load_vantage6_config(_write(tmp_path, raw))
    with pytest.raises(ServerConfigError, match="cannot be read"):
        load_vantage6_config(tmp_path / "missing.yaml")


def _directory(tmp_path) -> Vantage6Directory:
    path = tmp_path / "v6.db"
    sa.create_engine(f"sqlite:///{path}").dispose()
    return Vantage6Directory(Vantage6Config(tmp_path / "v6.yaml", f"sqlite:///{path}", SECRET))


def _token(claims: dict, secret: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "nbf": now, "type": "access", **claims}, secret, algorithm="HS256")


def test_tokens_in_vantage6s_shapes(tmp_path):
    d = _directory(tmp_path)
    exp = int(time.time()) + 600
    node = d.identify(_token({"sub": 7, "client_type": "node", "exp": exp}))
    assert (node.kind, node.claims) == ("node", {"node_id": 7})
    assert d.identify(_token({"sub": 3, "client_type": "user", "exp": exp})).claims == {"user_id": 3}
    sub = {"client_type": "container", "node_id": 7, "organization_id": 2, "collaboration_id": 1, "task_id": 9,
           "image": "x", "databases": []}
    container = d.identify(_token({"sub": sub, "client_type": "container"}))  # no exp, as vantage6 makes them
    assert container.kind == "container" and container["task_id"] == 9


@pytest.mark.parametrize("claims, secret, words", [
    ({"sub": 7, "client_type": "node"}, "another secret " * 3, "invalid token"),
    ({"sub": 7, "client_type": "node", "type": "refresh"}, SECRET, "refresh token"),
    ({"sub": 7, "client_type": "node", "exp": 1}, SECRET, "expired"),
    ({"sub": True, "client_type": "node"}, SECRET, "not a vantage6"),
    ({"sub": "7", "client_type": "node"}, SECRET, "not a vantage6"),
    ({"sub": {"task_id": 1}, "client_type": "container"}, SECRET, "not a vantage6"),
    ({"sub": 7, "client_type": "robot"}, SECRET, "not a vantage6"),
])
def test_tokens_vantage6_would_not_have_made_are_refused(tmp_path, claims, secret, words):
    with pytest.raises(TokenError, match=words):
        _directory(tmp_path).identify(_token(claims, secret))


def _read_only_cannot_write(url: str, v6_url: str) -> None:
    writer = sa.create_engine(url)
    with writer.begin() as conn:
        conn.execute(sa.text("CREATE TABLE node (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO node (id) VALUES (1)"))
    writer.dispose()
    engine = read_only_engine(v6_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id FROM node")).scalars().all() == [1]
        with pytest.raises(DBAPIError, match="(?i)read.only|readonly"):
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO node (id) VALUES (2)"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_vantage6s_database_is_opened_read_only(backend, tmp_path, request):
    with fresh_database(backend, tmp_path, request) as url:
        _read_only_cannot_write(url, url.replace("postgresql+psycopg://", "postgresql://"))  # vantage6's spelling
