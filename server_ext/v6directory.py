"""vantage6 4.x as the directory (directory.py): its tokens and its tables, read only.

The vantage6 server signs every token with its `jwt_secret_key` (HS256, by
Flask-JWT-Extended). A user's or node's token carries its id as an integer `sub` and
`client_type` "user" or "node", and expires (6 h by default). A container token carries a
dict `sub` (node, organisation, collaboration, task, image, databases) with no run id and
no expiry: vantage6 accepts it for ever. Here it is mapped to its run, the one of its
task at its organisation, and refused once vantage6 marks that run finished in any of its
final states.

Who exists is read from vantage6's database with a connection that cannot write: SQLite
opened read-only, PostgreSQL sessions set READ ONLY. Nothing of vantage6's is copied here
but the node ids the VPN state is kept under (server_ext/sidecar.py)."""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jwt
import yaml
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, and_, create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

from .addresses import AddressQuery, select_runs
from .config import ServerConfigError
from .directory import NodeInfo, Refused, family_of
from .store import DatabaseError, database_errors
from .tokens import Identity, TokenError

log = logging.getLogger(__name__)

# vantage6's run states that are not final (vantage6.common.task_status.has_task_finished:
# every other state, "completed" and the failures, is).
V6_ACTIVE_STATES = ("pending", "initializing", "active")
LEEWAY_S = 30  # clock skew allowed between the vantage6 server's host and this one
# A vantage6 node fetches its VPN config when it starts and never renews it (it does not call
# /vpn/update), so its certificate must last until the node restarts: a year unless cert_days
# is set. `vpnagent-server vantage6-status`, the OpenVPN service's log and the
# expiring-certificates metric say which nodes need a restart before theirs lapses.
VANTAGE6_CERT_DAYS = 365
EXPIRY_WARNING = dt.timedelta(days=30)

# vantage6 4.13's tables, only the columns read here (its models: vantage6/server/model).
_meta = MetaData()
authenticatable = Table("authenticatable", _meta, Column("id", Integer, primary_key=True),
                        Column("type", String), Column("ip", String))
v6_node = Table("node", _meta, Column("id", Integer, primary_key=True), Column("name", String),
                Column("organization_id", Integer), Column("collaboration_id", Integer))
v6_user = Table("user", _meta, Column("id", Integer, primary_key=True))
v6_task = Table("task", _meta, Column("id", Integer, primary_key=True), Column("parent_id", Integer),
                Column("collaboration_id", Integer), Column("image", String))
v6_run = Table("run", _meta, Column("id", Integer, primary_key=True), Column("task_id", Integer),
               Column("organization_id", Integer), Column("status", Text))
v6_port = Table("algorithmport", _meta, Column("id", Integer, primary_key=True), Column("port", Integer),
                Column("run_id", Integer), Column("label", String))
v6_member = Table("Member", _meta, Column("organization_id", Integer), Column("collaboration_id", Integer))


@dataclass(frozen=True)
class Vantage6Config:
    """What the sidecar needs of the vantage6 server's own config file."""
    path: Path
    database_url: str
    jwt_secret: str
    api_path: str = "/api"


def load_vantage6_config(path: str | Path) -> Vantage6Config:
    """The vantage6 server config (the YAML `v6 server` runs with): its database `uri`,
    `jwt_secret_key` and `api_path`. Refused, saying what to fix, when it lacks one."""
    path = Path(path)
    where = f"the vantage6 server config {path}"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ServerConfigError(f"{where} cannot be read: {exc.strerror or exc}; give the YAML file the vantage6 "
                                "server runs with (vantage6_config, or --vantage6)") from None
    except yaml.YAMLError as exc:
        raise ServerConfigError(f"{where} is not YAML: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("application"), dict):
        raw = raw["application"]  # `v6 server` files keep the settings under application:
    if not isinstance(raw, dict):
        raise ServerConfigError(f"{where} is not a mapping of settings")
    uri, secret = raw.get("uri"), raw.get("jwt_secret_key")
    if not isinstance(uri, str) or not uri:
        raise ServerConfigError(f"{where} has no database `uri`: the sidecar reads vantage6's nodes, tasks and runs "
                                "from that database")
    if not isinstance(secret, str) or len(secret) < 32:
        raise ServerConfigError(f"{where} has no `jwt_secret_key` of 32 characters or more: without one vantage6 "
                                "makes a random secret at every start, which the sidecar cannot know; set "
                                "jwt_secret_key in it (e.g. `openssl rand -hex 32`) and restart vantage6")
    api_path = raw.get("api_path") or "/api"
    if not isinstance(api_path, str) or not api_path.startswith("/"):
        raise ServerConfigError(f"{where}: api_path {api_path!r} must be a path starting with /")
    return Vantage6Config(path, uri, secret, api_path.rstrip("/") or "/")


def read_only_engine(url: str) -> Engine:
    """An engine on vantage6's database that cannot write to it: SQLite opened read-only
    (mode=ro: vantage6's file is not even touched by a journal), PostgreSQL with every
    transaction READ ONLY. Give PostgreSQL a role that may only SELECT as well."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"vantage6's database uri {url.split('@')[-1]!r} is not a database URL") from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise DatabaseError("vantage6's database is an in-memory SQLite one, which no other process can read")
        parsed = parsed.set(database=f"file:{Path(parsed.database).resolve()}?mode=ro",
                            query={**parsed.query, "uri": "true"})
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver we install
        kwargs["pool_pre_ping"] = True
    else:
        raise DatabaseError(f"vantage6's database is {backend}; the sidecar reads SQLite and PostgreSQL")
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"vantage6's database uri names a driver that is not installed ({exc})") from None

    @event.listens_for(engine, "connect")
    def _read_only(conn, _record):
        cur = conn.cursor()
        if backend == "sqlite":
            cur.execute("PRAGMA query_only = ON")
        else:
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cur.close()
        if backend == "postgresql":
            conn.commit()
    return engine


class Vantage6Directory:
    """The answers of a vantage6 4.x server (directory.py). The `s` of each question is the
    store's session, unused: vantage6's tables are read in a connection of their own."""

    name = "vantage6"

    def __init__(self, config: Vantage6Config) -> None:
        self.config = config
        self.engine = read_only_engine(config.database_url)
        self.shown_url = self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def _rows(self, stmt) -> list:
        with database_errors(self.shown_url), self.engine.connect() as conn:
            return list(conn.execute(stmt))

    # --- tokens
    def identify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(token, self.config.jwt_secret, algorithms=["HS256"], leeway=LEEWAY_S,
                                options={"verify_sub": False, "require": ["sub", "type"]})
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired; request a new one from the vantage6 server") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token (not one of this vantage6 server's): {exc}") from exc
        if claims.get("type") != "access":
            raise TokenError(f"invalid token: a vantage6 {claims.get('type')} token; send an access token")
        sub, kind = claims["sub"], claims.get("client_type")
        if kind in ("node", "user") and isinstance(sub, int) and not isinstance(sub, bool):
            return Identity(kind, {f"{kind}_id": sub})
        if kind == "container" and isinstance(sub, dict) and all(
                isinstance(sub.get(k), int) for k in ("task_id", "organization_id", "node_id")):
            return Identity("container", dict(sub))
        raise TokenError("invalid token: not a vantage6 user, node or container identity")

    def check(self, s: Session, ident: Identity) -> Identity:
        if ident.kind == "node":
            info = self.node(s, ident["node_id"])
            if info is None:
                raise Refused(401, f"vantage6 node {ident['node_id']} no longer exists on the vantage6 server; its "
                                   "VPN certificates are revoked")
            return Identity("node", {"node_id": info.id, "organization_id": info.organization_id,
                                     "collaboration_id": info.collaboration_id})
        if ident.kind == "user":
            if not self._rows(select(v6_user.c.id).where(v6_user.c.id == ident["user_id"])):
                raise Refused(401, "this vantage6 user no longer exists")
            return ident
        if ident.kind == "container":
            runs = self._rows(select(v6_run.c.id, v6_run.c.status).where(
                v6_run.c.task_id == ident["task_id"], v6_run.c.organization_id == ident["organization_id"]))
            if not runs:
                raise Refused(401, f"container token of task {ident['task_id']}: vantage6 has no run of it at "
                                   f"organisation {ident['organization_id']}")
            run_id, status = runs[0]
            if status not in V6_ACTIVE_STATES:
                raise Refused(401, f"container token no longer valid: its run ({run_id}) is {status!r} on the "
                                   "vantage6 server")
            return Identity("container", {**ident.claims, "run_id": run_id})
        raise Refused(403, f"a {ident.kind} token is not one of vantage6's")

    # --- who exists
    def node(self, s: Session, node_id: int) -> NodeInfo | None:
        rows = self._rows(select(v6_node.c.id, v6_node.c.organization_id, v6_node.c.collaboration_id,
                                 v6_node.c.name).where(v6_node.c.id == node_id))
        if not rows:
            return None
        node_id, org, collab, name = rows[0]
        return NodeInfo(node_id, org, collab, name or f"node {node_id}")

    def live_nodes(self, s: Session | None = None) -> set[int]:
        return {row[0] for row in self._rows(select(v6_node.c.id))}

    def family(self, s: Session, task_id: int) -> set[int]:
        parent = self._rows(select(v6_task.c.parent_id).where(v6_task.c.id == task_id))
        children = self._rows(select(v6_task.c.id).where(v6_task.c.parent_id == task_id))
        return family_of(task_id, parent[0][0] if parent else None, [row[0] for row in children])

    def members(self, s: Session, collaboration_id: int, organization_ids: Iterable[int]) -> set[int]:
        return {row[0] for row in self._rows(select(v6_member.c.organization_id).where(
            v6_member.c.collaboration_id == collaboration_id,
            v6_member.c.organization_id.in_(set(organization_ids))))}

    # --- the address book
    def addresses(self, ident: Identity, q: AddressQuery) -> list[dict]:
        """vantage6 4.13's GET /vpn/algorithm/addresses (server/resource/port.py): the same
        selection (addresses.select_runs), the same fields, the IP each node reported to
        vantage6, ports in the order they were registered."""
        task_id = ident["task_id"]
        found = self._rows(select(v6_task.c.parent_id).where(v6_task.c.id == task_id))
        parent_id = found[0][0] if found else None
        sel = select_runs(q, task_id, parent_id, lambda: [row[0] for row in self._rows(
            select(v6_task.c.id).where(v6_task.c.parent_id == task_id).order_by(v6_task.c.id))])
        # a run's node: its organisation's node in its task's collaboration (vantage6's Run.node)
        joined = (v6_port.join(v6_run, v6_port.c.run_id == v6_run.c.id)
                  .join(v6_task, v6_run.c.task_id == v6_task.c.id)
                  .outerjoin(v6_node, and_(v6_node.c.organization_id == v6_run.c.organization_id,
                                           v6_node.c.collaboration_id == v6_task.c.collaboration_id))
                  .outerjoin(authenticatable, authenticatable.c.id == v6_node.c.id))
        stmt = (select(v6_port.c.port, v6_port.c.label, authenticatable.c.ip, v6_run.c.organization_id,
                       v6_run.c.task_id, v6_task.c.parent_id)
                .select_from(joined).where(v6_run.c.task_id.in_(sel.task_ids)))
        if sel.organizations == "own":
            stmt = stmt.where(v6_run.c.organization_id == ident["organization_id"])
        elif sel.organizations == "others":
            stmt = stmt.where(v6_run.c.organization_id != ident["organization_id"])
        if q.label is not None:
            stmt = stmt.where(v6_port.c.label == q.label)
        return [{"port": port, "label": label, "ip": ip, "organization_id": org, "task_id": task, "parent_id": parent}
                for port, label, ip, org, task, parent in self._rows(stmt.order_by(v6_port.c.id))]


def probe(directory: Vantage6Directory) -> None:
    """Fail at start, naming the file to fix, when vantage6's tables cannot be read (a wrong
    uri, a database vantage6 has not set up, a role without SELECT)."""
    try:
        directory.live_nodes()
    except DatabaseError as exc:
        raise DatabaseError(f"the sidecar cannot read vantage6's tables (the uri in {directory.config.path}): "
                            f"{exc}") from None
