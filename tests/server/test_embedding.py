"""The Flask extension inside someone else's app (a vantage6 server, say): it leaves the host
app's routes, error pages and body limit alone, writes nothing at init_app, and is set up by
its migrate command, which is idempotent. Real Flask apps, real SQLite files in tmp."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask, abort, request

from server_ext import VPNExtension, schema
from server_ext.cli import main as server_main

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
LIMIT = 64 * 1024


def host_app(data_dir: Path, **config) -> Flask:
    """A host with its own routes, error handlers and a route that takes big uploads."""
    app = Flask("host", instance_path=str(data_dir.parent / "host-instance"))
    app.config.update(TESTING=True, VPNAGENT_DATA_DIR=str(data_dir), **config)

    @app.get("/hello")
    def hello():
        return "hello from the host"

    @app.post("/upload")
    def upload():
        return {"received": len(request.get_data())}

    @app.get("/bad")
    def bad():
        abort(400)

    @app.get("/boom")
    def boom():
        raise RuntimeError("host bug")

    @app.errorhandler(404)
    def host_404(_exc):
        return "host's own 404 page", 404

    @app.errorhandler(400)
    def host_400(_exc):
        return "host's own 400 page", 400

    @app.errorhandler(500)
    def host_500(_exc):
        return "host's own 500 page", 500

    VPNExtension(app)
    return app


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def migrate(app: Flask) -> str:
    result = app.test_cli_runner().invoke(args=["vpnagent", "migrate"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def migrated(tmp_path) -> Flask:
    app = host_app(tmp_path / "vpn")
    migrate(app)
    yield app
    app.extensions["vpnagent"].store.close()


def test_init_app_on_an_empty_data_dir_writes_nothing(tmp_path):
    data_dir = tmp_path / "vpn"
    data_dir.mkdir()
    before = tree(tmp_path)
    app = host_app(data_dir)
    assert tree(tmp_path) == before == {"vpn": None}
    # nor does a request that finds it unprepared, nor a metrics scrape
    app.test_client().get("/api/health")
    app.test_client().get("/metrics")
    assert tree(tmp_path) == before


def test_requests_before_migrate_are_told_to_run_it(tmp_path):
    client = host_app(tmp_path / "vpn").test_client()
    r = client.post("/api/token/node", json={"api_key": "x"})
    assert r.status_code == 503 and r.is_json
    assert "not set up" in r.json["msg"] and "vpnagent migrate" in r.json["msg"]
    scrape = client.get("/metrics")
    assert scrape.status_code == 503 and "vpnagent migrate" in scrape.get_data(as_text=True)
    assert client.get("/hello").data == b"hello from the host"  # the host serves meanwhile


def test_migrate_creates_the_schema_and_a_second_run_changes_nothing(tmp_path):
    data_dir = tmp_path / "vpn"
    app = host_app(data_dir)
    first = migrate(app)
    assert "migrated to the newest schema" in first
    state = app.extensions["vpnagent"]
    with state.store.engine.connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision()
    assert {"secret", "pki", "openvpn", "store.db"} <= {p.name for p in data_dir.iterdir()}
    kept = {rel: data for rel, data in tree(data_dir).items()
            if rel in ("secret", "pki/ca.crt", "pki/ca.key", "pki/server.crt", "pki/server.key")}
    assert len(kept) == 5
    second = migrate(app)
    assert "already at the newest schema" in second and "applying" not in second
    assert {rel: data for rel, data in tree(data_dir).items() if rel in kept} == kept
    assert app.test_client().get("/api/health").status_code == 200
    state.store.close()


def test_host_paths_keep_the_hosts_error_pages(migrated):
    client = migrated.test_client()
    assert client.get("/nowhere").data == b"host's own 404 page"
    assert client.get("/bad").data == b"host's own 400 page"
    migrated.testing = False  # let the 500 handler answer instead of re-raising
    assert client.get("/boom").data == b"host's own 500 page"
    assert client.get("/hello").data == b"hello from the host"


def test_extension_paths_get_the_apis_json_errors(migrated):
    client = migrated.test_client()
    r = client.get("/api/no/such/thing")
    assert (r.status_code, r.json) == (404, {"msg": "no such endpoint"})
    r = client.delete("/api/health")  # the route exists, for GET only
    assert (r.status_code, r.json) == (405, {"msg": "method not allowed here"})
    assert "GET" in r.headers["Allow"]
    r = client.get("/api/task/abc")  # no route takes a non-numeric id
    assert (r.status_code, r.json) == (404, {"msg": "no such endpoint"})


def test_the_body_limit_is_the_extensions_alone(migrated):
    client = migrated.test_client()
    big = b"x" * (LIMIT * 3)
    assert client.post("/upload", data=big).json == {"received": LIMIT * 3}
    r = client.post("/api/token/node", data=big, content_type="application/json")
    assert (r.status_code, r.json) == (413, {"msg": "request body larger than 64 KiB"})
    assert "MAX_CONTENT_LENGTH" not in migrated.config or migrated.config["MAX_CONTENT_LENGTH"] is None


def test_the_documented_embedding_and_command_run(tmp_path):
    """The Python block and the command of the guide's "Embedding" section, as written
    (with the data directory moved into tmp)."""
    section = GUIDE.read_text().split("### Embedding the server in another Flask app")[1].split("\n## ")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```sh\n(flask [^\n]*)\n```", section).group(1)
    assert "/var/lib/vpnagent-server" in code and command == "flask --app yourapp vpnagent migrate"
    (tmp_path / "yourapp.py").write_text(code.replace("/var/lib/vpnagent-server", str(tmp_path / "vpn")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    argv = [sys.executable, "-m", *command.split()]
    for expected in ("migrated to", "already at"):
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"{expected} the newest schema" in proc.stdout
    assert (tmp_path / "vpn" / "pki" / "ca.crt").is_file()


def test_vpnagent_server_migrate_prepares_and_is_idempotent(tmp_path, capsys):
    config = tmp_path / "server.yaml"
    config.write_text(f"data_dir: {tmp_path / 'server'}\n")
    assert server_main(["migrate", "--config", str(config)]) == 0
    assert "migrated to the newest schema" in capsys.readouterr().out
    assert server_main(["migrate", "--config", str(config)]) == 0
    assert "already at the newest schema" in capsys.readouterr().out
    assert (tmp_path / "server" / "secret").is_file() and (tmp_path / "server" / "openvpn" / "server.conf").is_file()


def test_an_unusable_database_is_a_json_503_not_a_host_500(tmp_path):
    first = host_app(tmp_path / "vpn")
    migrate(first)  # secret and PKI exist; only the database is wrong below
    first.extensions["vpnagent"].store.close()
    directory = tmp_path / "not-a-database"
    directory.mkdir()
    app = host_app(tmp_path / "vpn", VPNAGENT_DATABASE_URL=f"sqlite:///{directory}")  # SQLite cannot open it
    r = app.test_client().get("/api/health")
    assert r.status_code == 503 and r.is_json and "unable to open" in r.json["msg"].lower()
