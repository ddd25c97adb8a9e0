"""Schema migrations on SQLite and a real PostgreSQL: an upgraded empty database is exactly
the models' schema, a database from before migrations is stamped and keeps its rows, the
CLI migrates explicitly and reports a bad database as one line, not a traceback."""
from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, create_engine, inspect, select, text

from server_ext import schema
from server_ext.cli import main
from server_ext.store import Base, Certificate, DatabaseError, Node, Organization, Store

DATA = Path(__file__).parent / "data"


def schema_differences(conn, metadata: MetaData = Base.metadata) -> list:
    """What `alembic revision --autogenerate` would put in a new revision."""
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return compare_metadata(ctx, metadata)


def test_upgrading_an_empty_database_gives_exactly_the_models_schema(database_url):
    store = Store(database_url)
    try:
        with store.engine.connect() as conn:
            assert schema_differences(conn) == []
            assert schema.current_revision(conn) == schema.head_revision()
            assert set(inspect(conn).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
            # the comparison does see a model change that no revision carries
            changed = MetaData()
            for table in Base.metadata.tables.values():
                table.to_metadata(changed)
            changed.tables["node"].append_column(Column("site", String(64)))
            assert [d[0] for d in schema_differences(conn, changed)] == ["add_column"]
    finally:
        store.close()


def test_downgrade_to_base_and_upgrade_again(database_url):
    store = Store(database_url)
    try:
        with store.engine.begin() as conn:
            command.downgrade(schema.alembic_config(conn), "base")
        with store.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        assert [s.revision for s in schema.upgrade(store.engine)] == [schema.BASELINE, "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
        with store.engine.connect() as conn:
            assert schema_differences(conn) == []
    finally:
        store.close()


def make_legacy_database(url: str) -> None:
    """What an install from before migrations holds: create_all's tables (DDL kept in
    tests/server/data), no alembic_version, and some rows."""
    engine = create_engine(url)
    ddl = (DATA / f"legacy_schema_{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            body = "\n".join(line for line in statement.splitlines() if not line.startswith("--")).strip()
            if body:
                conn.execute(text(body))
        # no explicit ids, as the old server wrote them: PostgreSQL's sequences must advance
        conn.execute(text("INSERT INTO organization (name) VALUES ('hospital-a'), ('hospital-b')"))
        conn.execute(text("INSERT INTO collaboration (name) VALUES ('study')"))
        conn.execute(text("INSERT INTO collaboration_member VALUES (1, 1), (1, 2)"))
        conn.execute(text("INSERT INTO node (name, organization_id, collaboration_id, api_key_hash, vpn_ip) "
                          "VALUES ('node-a', 1, 1, 'hash-a', '10.76.0.2')"))
        conn.execute(text("INSERT INTO certificate (node_id, serial, not_after) VALUES (1, '123', :t)"),
                     {"t": dt.datetime(2030, 1, 1)})
    engine.dispose()


def test_a_database_from_before_migrations_is_stamped_and_keeps_its_rows(database_url):
    make_legacy_database(database_url)
    said: list[str] = []
    store = Store(database_url, progress=said.append)
    try:
        assert any("stamping" in line for line in said), said
        with store.engine.connect() as conn:
            assert schema.current_revision(conn) == schema.head_revision()
        with store.session() as s:
            assert [o.name for o in s.scalars(select(Organization).order_by(Organization.id))] == \
                ["hospital-a", "hospital-b"]
            node = s.get(Node, 1)
            assert (node.name, node.vpn_ip) == ("node-a", "10.76.0.2")
            assert (node.key_version, node.last_seen_at) == (1, None), "0004: the first key, never seen"
            assert s.scalar(select(Certificate.serial)) == "123"
        # and it goes on working: new rows next to the old ones (PostgreSQL's id sequences included)
        org = store.create_organization("hospital-c")
        assert org.id == 3
        node, _key = store.create_node(2, 1, "node-b")
        assert node.id == 2
    finally:
        store.close()
    assert not any("stamping" in line for line in _reopen(database_url)), "stamped only once"


def _reopen(url: str) -> list[str]:
    said: list[str] = []
    Store(url, progress=said.append).close()
    return said


def test_some_but_not_all_old_tables_is_refused(database_url):
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE organization (id INTEGER PRIMARY KEY, name VARCHAR(128))"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="not a vpnagent store"):
        Store(database_url)


def test_a_database_from_a_newer_vpnagent_is_refused(database_url):
    Store(database_url).close()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'fffffff'"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="newer vpnagent"):
        Store(database_url)


def test_servers_starting_at_once_on_an_empty_database_both_come_up(database_url):
    """Without the migration lock both would create the tables and one would fail."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite databases belong to one server process")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(timeout=10)
            Store(database_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a start-up hung"
    assert errors == []


# ---------------------------------------------------------------- the CLI
def write_config(tmp_path: Path, database_url: str | None) -> str:
    path = tmp_path / "server.yaml"
    raw = {"data_dir": str(tmp_path / "data")}
    if database_url:
        raw["database_url"] = database_url
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_db_upgrade_migrates_then_finds_nothing_to_do(database_url, tmp_path, capsys):
    config = write_config(tmp_path, database_url)
    assert main(["db-current", "--config", config]) == 1
    assert "db-upgrade" in capsys.readouterr().out
    assert main(["db-upgrade", "--config", config]) == 0
    first = capsys.readouterr().out
    assert f"applying (empty) -> {schema.BASELINE}" in first and "up to date" in first
    assert main(["db-upgrade", "--config", config]) == 0
    again = capsys.readouterr().out
    assert "applying" not in again and "up to date" in again
    assert main(["db-current", "--config", config]) == 0
    assert f"revision {schema.head_revision()} (newest)" in capsys.readouterr().out


def test_db_current_names_a_database_from_before_migrations(database_url, tmp_path, capsys):
    make_legacy_database(database_url)
    config = write_config(tmp_path, database_url)
    assert main(["db-current", "--config", config]) == 1
    assert "tables from before migrations" in capsys.readouterr().out
    assert main(["db-upgrade", "--config", config]) == 0
    assert "stamping" in capsys.readouterr().out


@pytest.mark.parametrize("url, words", [
    ("not a url", "is not a database URL"),
    ("mysql://admin:s3cret-pw@127.0.0.1/x", "driver that is not installed"),
    ("postgresql+psycopg://admin:s3cret-pw@127.0.0.1:1/x", "Connection refused"),  # nothing listens on port 1
    ("sqlite:////nonexistent-dir/sub/store.db", "unable to open database file"),
])
@pytest.mark.parametrize("command_", ["db-upgrade", "add-organization"])
def test_a_bad_database_url_is_one_clear_line(tmp_path, capsys, url, words, command_):
    argv = [command_, "--config", write_config(tmp_path, url)] + (["org"] if command_ == "add-organization" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vpnagent-server: ") and words in err, err
    assert "postgresql+psycopg://user:password@host:5432/dbname" in err, "the message shows the URL format"
    assert "s3cret-pw" not in err, "the password is not printed"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_upgrading_to_0002_keeps_users_their_keys_and_their_tokens(database_url, tmp_path):
    from server_ext import create_app
    from server_ext.store import hash_key
    from server_ext.tokens import TokenService

    engine = create_engine(database_url)
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "0001")
        conn.execute(text("INSERT INTO organization (name) VALUES ('hospital-a')"))
        conn.execute(text("INSERT INTO \"user\" (name, organization_id, api_key_hash) VALUES ('alice', 1, :h)"),
                     {"h": hash_key("alice-key")})
    engine.dispose()
    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "VPNAGENT_DATABASE_URL": database_url},
                     migrate=True)
    state = app.extensions["vpnagent"]
    try:
        assert [(u.name, u.key_version, u.removed_at) for u in state.store.list_users()] == [("alice", 1, None)]
        client = app.test_client()
        assert client.post("/api/token/user", json={"api_key": "alice-key"}).status_code == 200
        # a token issued before the upgrade carries no key_version: it is taken as the first key's
        old = TokenService(state.tokens.secret).issue("user", {"client_type": "user", "user_id": 1, "organization_id": 1})
        assert client.get("/api/task/1", headers={"Authorization": f"Bearer {old}"}).status_code == 404
    finally:
        state.store.close()


def test_upgrading_to_0003_keeps_tasks_and_runs_and_their_input(database_url, tmp_path):
    """Tasks from before 0003 become "vpnagent" tasks without description or databases; their
    runs have no input of their own, so a node still gets the task's input."""
    from server_ext import create_app
    from server_ext.store import Run, Task

    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "VPNAGENT_DATABASE_URL": database_url},
                     migrate=True)
    state = app.extensions["vpnagent"]
    store = state.store
    try:
        org = store.create_organization("hospital-a").id
        collab = store.create_collaboration("study", [org]).id
        node, key = store.create_node(org, collab, "node-a")
        with store.engine.begin() as conn:
            command.downgrade(schema.alembic_config(conn), "0002")
            assert "contract" not in {c["name"] for c in inspect(conn).get_columns("task")}
            assert "input" not in {c["name"] for c in inspect(conn).get_columns("run")}
            conn.execute(text("INSERT INTO task (name, image, collaboration_id, input, created_at) "
                              "VALUES ('old', 'img:1', :c, :i, :t)"),
                         {"c": collab, "i": '{"method": "old"}', "t": dt.datetime(2026, 11, 1)})
            conn.execute(text("INSERT INTO run (task_id, organization_id, node_id, status) VALUES (1, :o, :n, 'pending')"),
                         {"o": org, "n": node.id})
        assert [s.revision for s in schema.upgrade(store.engine)] == ["0003", "0004", "0005", "0006", "0007", "0008"]
        with store.session() as s:
            task, run = s.get(Task, 1), s.get(Run, 1)
            assert (task.contract, task.description, task.databases, task.input) == \
                ("vpnagent", None, [], {"method": "old"})
            assert run.input is None
        client = app.test_client()
        token = client.post("/api/token/node", json={"api_key": key}).json["access_token"]
        runs = client.get("/api/run", headers={"Authorization": f"Bearer {token}"}).json["runs"]
        assert [(r["id"], r["input"], r["contract"], r["databases"]) for r in runs] == \
            [(1, {"method": "old"}, "vpnagent", [])]
    finally:
        store.close()


def test_upgrading_to_0005_adds_join_tokens_and_keeps_nodes_and_their_keys(database_url, tmp_path):
    """0005 only adds the join_token table: nodes keep their keys, and a join token issued
    after the upgrade is spent once."""
    from server_ext import create_app
    from server_ext.join import issue_join_token

    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "VPNAGENT_DATABASE_URL": database_url},
                     migrate=True)
    store = app.extensions["vpnagent"].store
    try:
        org = store.create_organization("hospital-a").id
        collab = store.create_collaboration("study", [org]).id
        node, key = store.create_node(org, collab, "node-a")
        with store.engine.begin() as conn:
            command.downgrade(schema.alembic_config(conn), "0004")
            assert "join_token" not in inspect(conn).get_table_names()
        assert [s.revision for s in schema.upgrade(store.engine)] == ["0005", "0006", "0007", "0008"]
        client = app.test_client()
        assert client.post("/api/token/node", json={"api_key": key}).status_code == 200
        token = issue_join_token(store, node.id).token
        assert client.post("/api/node/join", json={"token": token, "name": "node-a"}).status_code == 200
        assert client.post("/api/node/join", json={"token": token, "name": "node-a"}).status_code == 401
    finally:
        store.close()
