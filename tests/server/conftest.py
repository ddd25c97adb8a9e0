"""A real Flask app with a real store, and a small world in it: collaboration C (orgs 1, 2,
3 with nodes n1..n3), collaboration D (org 4, node n4).

Every test that uses the store runs twice: on SQLite (a file in tmp_path) and on a real
PostgreSQL server (a fresh database, dropped afterwards; see tests/server/postgres.py)."""
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from sqlalchemy import select

from server_ext import create_app
from server_ext.store import Admin, Certificate, Collaboration, Node, Organization, Port, Run, Task, User
from tests.server.postgres import PostgresDatabases, connect_from_env

BACKENDS = ["sqlite", "postgresql"]


@dataclass
class World:
    app: object
    client: object
    store: object
    collab: int
    other_collab: int
    orgs: list
    node_keys: list
    user_key: str
    other_user_key: str
    admin_key: str = ""
    tokens: dict = field(default_factory=dict)

    def node_headers(self, i: int) -> dict:
        if ("node", i) not in self.tokens:
            r = self.client.post("/api/token/node", json={"api_key": self.node_keys[i]})
            self.tokens[("node", i)] = r.json["access_token"]
        return {"Authorization": f"Bearer {self.tokens[('node', i)]}"}

    def user_headers(self, key: str | None = None) -> dict:
        r = self.client.post("/api/token/user", json={"api_key": key or self.user_key})
        return {"Authorization": f"Bearer {r.json['access_token']}"}

    def admin_headers(self, key: str | None = None) -> dict:
        r = self.client.post("/api/token/admin", json={"api_key": key or self.admin_key})
        assert r.status_code == 200, r.json
        return {"Authorization": f"Bearer {r.json['access_token']}"}

    def container_headers(self, node_index: int, run_id: int) -> dict:
        r = self.client.post("/api/token/container", headers=self.node_headers(node_index), json={"run_id": run_id})
        assert r.status_code == 200, r.json
        return {"Authorization": f"Bearer {r.json['container_token']}"}

    def create_task(self, orgs: list[int], headers: dict | None = None, collab: int | None = None, **extra) -> dict:
        body = {"collaboration_id": collab or self.collab, "organizations": orgs, "image": "img:1", "input": {"k": 1}}
        body.update(extra)
        r = self.client.post("/api/task", headers=headers or self.user_headers(), json=body)
        assert r.status_code == 201, r.json
        return r.json

    def snapshot(self) -> tuple:
        """Everything a rejected request must leave untouched, in id order (PostgreSQL
        returns rows in any order, and moves a row it updates, e.g. last_seen_at at a token)."""
        with self.store.session() as s:
            return (
                [(t.id, t.parent_id, t.image, repr(t.input), t.contract, t.description, repr(t.databases))
                 for t in s.scalars(select(Task).order_by(Task.id))],
                [(r.id, r.status, repr(r.result), r.log, repr(r.input))
                 for r in s.scalars(select(Run).order_by(Run.id))],
                [(p.id, p.run_id, p.port, p.label) for p in s.scalars(select(Port).order_by(Port.id))],
                [(c.serial, c.revoked_at) for c in s.scalars(select(Certificate).order_by(Certificate.id))],
                [(n.id, n.name, n.vpn_ip, n.api_key_hash, n.removed_at, n.key_version, n.wg_public_key, n.wg_port,
                  repr(n.wg_endpoints), n.wg_seen_ip, n.wg_updated_at)
                 for n in s.scalars(select(Node).order_by(Node.id))],
                [(u.id, u.api_key_hash, u.removed_at, u.key_version)
                 for u in s.scalars(select(User).order_by(User.id))],
                [(o.id, o.name) for o in s.scalars(select(Organization).order_by(Organization.id))],
                [(c.id, c.name, sorted(o.id for o in c.organizations), c.data_plane)
                 for c in s.scalars(select(Collaboration).order_by(Collaboration.id))],
                [(a.id, a.name, a.api_key_hash, a.removed_at, a.key_version)
                 for a in s.scalars(select(Admin).order_by(Admin.id))],
            )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    dbs = connect_from_env()
    yield dbs
    dbs.close()


@contextmanager
def fresh_database(backend: str, directory: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an empty database of `backend`, removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'store.db'}"
        return
    dbs = request.getfixturevalue("postgres")
    url = dbs.create()
    try:
        yield url
    finally:
        dbs.drop(url)


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path, request) as url:
        yield url


@pytest.fixture
def world(tmp_path, database_url) -> Iterator[World]:
    w = build_world(tmp_path, database_url)
    yield w
    state = w.app.extensions["vpnagent"]
    if "hub" in vars(state):  # a hub was made (event streams): its PostgreSQL listener goes before the database
        state.hub.close()
    w.store.close()


def build_world(tmp_path, database_url: str | None = None, **config) -> World:
    app = create_app({"VPNAGENT_DATA_DIR": str(tmp_path / "server"), "TESTING": True,
                      "VPNAGENT_VPN_SUBNET": "10.76.0.0/16", "VPNAGENT_DATABASE_URL": database_url, **config},
                     migrate=True)
    store = app.extensions["vpnagent"].store
    orgs = [store.create_organization(f"org{i}").id for i in range(1, 5)]
    collab = store.create_collaboration("C", orgs[:3]).id
    other = store.create_collaboration("D", orgs[3:]).id
    keys = [store.create_node(orgs[i], collab, f"n{i + 1}")[1] for i in range(3)]
    keys.append(store.create_node(orgs[3], other, "n4")[1])
    user_key = store.create_user(orgs[0], "alice")[1]
    other_user_key = store.create_user(orgs[3], "mallory")[1]
    admin_key = store.create_admin("ops")[1]
    return World(app, app.test_client(), store, collab, other, orgs, keys, user_key, other_user_key, admin_key)


@pytest.fixture
def cli(world, tmp_path, capsys):
    """`vpnagent-server <command> --config <the world's server> ...`: (exit status, stdout,
    stderr); keyword arguments are more server.yaml keys."""
    state = world.app.extensions["vpnagent"]
    base = {"data_dir": str(tmp_path / "server"),
            "database_url": state.store.engine.url.render_as_string(hide_password=False)}

    def run(command: str, *rest: str, **config) -> tuple[int, str, str]:
        from server_ext.cli import main

        path = tmp_path / "server.yaml"
        path.write_text(yaml.safe_dump({**base, **config}))
        try:
            status = main([command, "--config", str(path), *rest])
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
        out = capsys.readouterr()
        return status, out.out, out.err

    return run
