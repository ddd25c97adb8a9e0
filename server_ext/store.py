"""The server's store: SQLAlchemy 2 models and the operations the API and the admin
commands need. SQLite by default (one file), PostgreSQL by URL."""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text,
                        create_engine, event, func, select, text, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import StaticPool

from vpnshared import names

from .config import DATA_PLANES

if TYPE_CHECKING:
    from .schema import Step

ACTIVE_STATES = ("pending", "initializing", "active")
# What an algorithm of a task expects from its node (docs/api.md): our own contract, or
# vantage6 4.x's algorithm wrapper.
CONTRACTS = ("vpnagent", "vantage6")
KILLED = "killed by user"  # vantage6's name: its client counts it as finished
FINAL_STATES = ("completed", "failed", KILLED)
RUN_STATES = ACTIVE_STATES + FINAL_STATES
NODE_REPORTS = ("initializing", "active", "completed", "failed")  # what a node may set (PATCH /run)
TAKEN_STATES = ("initializing", "active")  # a node has started these; pending ones it has not


class Base(DeclarativeBase):
    # Named constraints, so that a later migration can drop or alter one by name on every
    # backend (PostgreSQL needs the name; SQLite's batch mode finds it by name).
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def replace_key(row: Any) -> str:
    """A new API key for a user, node or admin row: only its hash is kept, and the key
    version moves on, so the old key and every token made with it stop working at once."""
    key = secrets.token_urlsafe(32)
    row.api_key_hash = hash_key(key)
    row.key_version += 1
    return key


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


member = Table(
    "collaboration_member", Base.metadata,
    Column("collaboration_id", ForeignKey("collaboration.id"), primary_key=True),
    Column("organization_id", ForeignKey("organization.id"), primary_key=True),
)


class Organization(Base):
    __tablename__ = "organization"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    collaborations: Mapped[list["Collaboration"]] = relationship(secondary=member, back_populates="organizations")


class Collaboration(Base):
    __tablename__ = "collaboration"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    organizations: Mapped[list[Organization]] = relationship(secondary=member, back_populates="collaborations")
    # How its nodes' algorithm traffic travels (0008, config.DATA_PLANES); None: the server's
    # data_plane, so changing the server's default moves every collaboration that chose none.
    data_plane: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Node(Base):
    __tablename__ = "node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    collaboration_id: Mapped[int] = mapped_column(ForeignKey("collaboration.id"))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    vpn_ip: Mapped[str | None] = mapped_column(String(45), unique=True)
    removed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # As a user's: counted up by every key rotation; node tokens carry it (0004).
    key_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # When the node last got a token with its API key (every 15 minutes while it runs).
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Its WireGuard peer as it registered it (0008, PUT /node/wireguard): the public key (the
    # node keeps the private one), listen port, the endpoints it reported, and the address the
    # server saw it come from (often its NAT's outside). Unique by a unique index: a key names
    # one peer. A unique index, not a constraint, so that 0008 adds it in place on SQLite.
    wg_public_key: Mapped[str | None] = mapped_column(String(44), nullable=True, index=True, unique=True)
    wg_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    wg_endpoints: Mapped[list | None] = mapped_column(JSON, nullable=True)  # ["a.b.c.d:port"]
    wg_seen_ip: Mapped[str | None] = mapped_column(String(45), nullable=True)
    wg_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    @property
    def common_name(self) -> str:
        return f"node-{self.id}"


class User(Base):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    removed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Every rotation (and the removal) counts it up; user tokens carry the value they were
    # issued with, so the tokens of a replaced key stop working with the key.
    key_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class Admin(Base):
    """A server administrator: an API key for /api/admin, in no organisation."""
    __tablename__ = "admin"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    removed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    key_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class Task(Base):
    __tablename__ = "task"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    image: Mapped[str] = mapped_column(String(512))
    collaboration_id: Mapped[int] = mapped_column(ForeignKey("collaboration.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("task.id"))
    input: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    contract: Mapped[str] = mapped_column(String(16), default="vpnagent", server_default="vpnagent")
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    # [{"label": str}], vantage6's shape: which of a node's databases the algorithm uses.
    databases: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    runs: Mapped[list["Run"]] = relationship(back_populates="task", order_by="Run.id")


class Run(Base):
    __tablename__ = "run"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    node_id: Mapped[int] = mapped_column(ForeignKey("node.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # This organisation's own input (vantage6 sends one per organisation); None: the task's.
    input: Mapped[Any] = mapped_column(JSON, nullable=True)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    log: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    task: Mapped[Task] = relationship(back_populates="runs")
    ports: Mapped[list["Port"]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Port(Base):
    __tablename__ = "port"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id"))
    port: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run: Mapped[Run] = relationship(back_populates="ports")


class Certificate(Base):
    __tablename__ = "certificate"
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("node.id"))
    serial: Mapped[str] = mapped_column(String(64), unique=True)  # decimal text: serials exceed 64 bits
    not_after: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class JoinToken(Base):
    """A single-use, expiring credential a node spends once on POST /node/join for its API
    key (server_ext/join.py). Only its hash is kept; `used_at` is set when it is spent."""
    __tablename__ = "join_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("node.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ServerIdentity(Base):
    """What every API replica on this database must share (0006): fingerprints of the CA
    and of the token secret, set by the first replica that prepared."""
    __tablename__ = "server_identity"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class OpenVPNService(Base):
    """What an OpenVPN service (`vpnagent-server openvpn`) last saw through OpenVPN's
    management interface (0006): the metrics of every API replica read it from here."""
    __tablename__ = "openvpn_service"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(256))
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime)
    openvpn_up: Mapped[bool] = mapped_column(Boolean)
    connected: Mapped[list | None] = mapped_column(JSON, nullable=True)  # common names; None: unknown


class EventCounter(Base):
    """A counter of events summed over every API replica (0006)."""
    __tablename__ = "event_counter"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class NodeEvent(Base):
    """Something a node must hear about now (0007): a run for it, a change in its runs'
    task families, its removal or a revoked certificate. Written in the transaction that
    made the change (server_ext/events.py); every API replica reads the table and pushes
    each row to the node's open event stream. Kept for minutes only: a node that missed one
    catches up with its next full resync."""
    __tablename__ = "node_event"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    node_id: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now, index=True)


class StoreError(ValueError):
    """An admin operation was refused (duplicate name, unknown id, full subnet), or the
    database cannot be used; the message says what to fix."""


class UnknownObject(StoreError):
    """An id that names nothing (HTTP 404)."""


class Conflict(StoreError):
    """The change collides with what is there: a name taken, a member already removed (HTTP 409)."""


class BadName(StoreError):
    """A new name breaks its kind's rule (vpnshared/names.py; HTTP 400)."""


def _new_name(rule: names.NameRule, name: str) -> str:
    try:
        return rule.check(name)
    except names.InvalidName as exc:
        raise BadName(str(exc)) from None


class DatabaseError(StoreError):
    """The database is unreachable, the URL is wrong, or its schema cannot be brought up
    to date."""


_log = logging.getLogger(__name__)
URL_HELP = "sqlite:////absolute/path/store.db or postgresql+psycopg://user:password@host:5432/dbname"


class Store:
    """The store on the database at `url`. By default migrated to the newest schema on
    start-up (the CLI, tests); the Flask extension passes migrate=False, so building it
    touches no database, and migrates through its migrate command instead."""

    def __init__(self, url: str = "sqlite:///vpnagent.db", progress: Callable[[str], None] | None = None,
                 migrate: bool = True) -> None:
        """`progress` hears what the migration does (default: the log)."""
        self.engine = make_engine(url)  # connects on first use only
        self.url = self.engine.url.render_as_string(hide_password=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        from .events import record_events  # events.py builds on this module's models

        record_events(self._sessions)
        if migrate:
            try:
                self.migrate(progress)
            except DatabaseError:
                self.engine.dispose()
                raise

    def migrate(self, progress: Callable[[str], None] | None = None) -> list[Step]:
        """Bring the database to the newest schema; the steps applied (none when it was
        there already)."""
        from . import schema

        database = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
            from .datadir import private_file

            private_file(Path(database))  # 0600 before SQLite makes it (it would make it 0644)
        with database_errors(self.url):
            return schema.upgrade(self.engine, progress or _log.info)

    def is_current(self) -> bool:
        """Whether the database is at the newest schema. A SQLite file that does not exist
        yet is not current, and is not created by asking."""
        from . import schema

        database = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and database not in (None, "", ":memory:") \
                and not Path(database).exists():
            return False
        with database_errors(self.url), self.engine.connect() as conn:
            return schema.current_revision(conn) == schema.head_revision()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One short transaction: committed on success, rolled back on any error, so a
        rejected request leaves the store as it was."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    # --- admin operations
    def create_organization(self, name: str) -> Organization:
        _new_name(names.ORGANIZATION, name)
        with self.session() as s:
            _name_is_free(s, Organization, name)
            org = Organization(name=name)
            _add_named(s, org)
            return org

    def create_collaboration(self, name: str, organization_ids: list[int],
                             data_plane: str | None = None) -> Collaboration:
        """A collaboration; `data_plane` None (or "default") follows the server's data_plane."""
        _new_name(names.COLLABORATION, name)
        data_plane = _plane(data_plane)
        with self.session() as s:
            _name_is_free(s, Collaboration, name)
            orgs = [self._get(s, Organization, i) for i in dict.fromkeys(organization_ids)]
            collab = Collaboration(name=name, organizations=orgs, data_plane=data_plane)
            _add_named(s, collab)
            return collab

    def set_data_plane(self, collaboration_id: int, data_plane: str | None) -> Collaboration:
        """Move a collaboration to a data plane (None or "default": the server's). Its nodes hear
        of it at once (a `peers` event each, events.py) and switch; setting the plane it
        has changes nothing and tells no one."""
        data_plane = _plane(data_plane)
        with self.session() as s:
            collab = self._get(s, Collaboration, collaboration_id)
            if collab.data_plane != data_plane:
                collab.data_plane = data_plane
            return collab

    def create_node(self, organization_id: int, collaboration_id: int, name: str) -> tuple[Node, str]:
        """A node and its API key (shown once; only its hash is kept)."""
        _new_name(names.NODE, name)
        key = secrets.token_urlsafe(32)
        with self.session() as s:
            org = self._get(s, Organization, organization_id)
            collab = self._get(s, Collaboration, collaboration_id)
            if org not in collab.organizations:
                raise StoreError(f"organisation {organization_id} is not in collaboration {collaboration_id}")
            _name_is_free(s, Node, name)
            if s.scalar(select(Node).where(Node.organization_id == organization_id,
                                           Node.collaboration_id == collaboration_id)):
                raise Conflict(f"organisation {organization_id} has a node in collaboration {collaboration_id} already")
            node = Node(name=name, organization_id=organization_id, collaboration_id=collaboration_id,
                        api_key_hash=hash_key(key))
            _add_named(s, node)
            return node, key

    def create_user(self, organization_id: int, name: str) -> tuple[User, str]:
        _new_name(names.USER, name)
        key = secrets.token_urlsafe(32)
        with self.session() as s:
            self._get(s, Organization, organization_id)
            user = User(name=name, organization_id=organization_id, api_key_hash=hash_key(key))
            s.add(user)
            s.flush()
            return user, key

    def remove_node(self, node_id: int) -> Node:
        """Take a node out: its API key stops working, every certificate it holds is
        revoked and its unfinished runs fail. The row stays (runs refer to it)."""
        now = _now()
        with self.session() as s:
            node = self._get(s, Node, node_id)
            if node.removed_at is None:
                node.removed_at = now
                node.api_key_hash = f"removed-{node.id}-{secrets.token_hex(8)}"
                node.wg_public_key = None  # no peer trusts it any more, and another node may take the key
            for cert in s.scalars(select(Certificate).where(Certificate.node_id == node.id,
                                                            Certificate.revoked_at.is_(None))):
                cert.revoked_at = now
            for run in s.scalars(select(Run).where(Run.node_id == node.id, Run.status.in_(ACTIVE_STATES))):
                run.status, run.finished_at, run.log = "failed", now, "node removed by the server admin"
                run.ports.clear()
            return node

    def list_users(self, organization_id: int | None = None) -> list[User]:
        """Every researcher, removed ones included (removed_at says when)."""
        with self.session() as s:
            stmt = select(User).order_by(User.id)
            if organization_id is not None:
                self._get(s, Organization, organization_id)
                stmt = stmt.where(User.organization_id == organization_id)
            return list(s.scalars(stmt))

    def remove_user(self, user_id: int) -> User:
        """Take a researcher out: the API key and every token issued with it stop working at
        once. The row stays, so the list keeps who it was and when it went."""
        with self.session() as s:
            user = self._active_user(s, user_id)
            _disable_user(user, _now())
            return user

    def rotate_user_key(self, user_id: int) -> tuple[User, str]:
        """A new API key (shown once) for a researcher; the old key and its tokens stop
        working at once."""
        with self.session() as s:
            user = self._active_user(s, user_id)
            return user, replace_key(user)

    def rotate_node_key(self, node_id: int) -> tuple[Node, str]:
        """A new API key (shown once) for a node; the old key and its tokens stop working at
        once. Its certificate and VPN IP stay: the running VPN session is not interrupted,
        the agent needs the new key for its next token."""
        with self.session() as s:
            node = self._get(s, Node, node_id)
            if node.removed_at is not None:
                raise Conflict(f"node {node.id} ({node.name}) was removed on {node.removed_at:%Y-%m-%d %H:%M} UTC; "
                               "a removed node stays removed: add a new one with add-node")
            return node, replace_key(node)

    # --- admins
    def create_admin(self, name: str) -> tuple[Admin, str]:
        """An administrator and its API key (shown once; only its hash is kept)."""
        _new_name(names.ADMIN, name)
        key = secrets.token_urlsafe(32)
        with self.session() as s:
            admin = Admin(name=name, api_key_hash=hash_key(key))
            s.add(admin)
            s.flush()
            return admin, key

    def list_admins(self) -> list[Admin]:
        with self.session() as s:
            return list(s.scalars(select(Admin).order_by(Admin.id)))

    def remove_admin(self, admin_id: int) -> Admin:
        with self.session() as s:
            admin = self._active_admin(s, admin_id)
            admin.removed_at = _now()
            admin.api_key_hash = f"removed-admin-{admin.id}-{secrets.token_hex(8)}"
            admin.key_version += 1
            return admin

    def rotate_admin_key(self, admin_id: int) -> tuple[Admin, str]:
        with self.session() as s:
            admin = self._active_admin(s, admin_id)
            return admin, replace_key(admin)

    def _active_admin(self, s: Session, admin_id: int) -> Admin:
        admin = self._get(s, Admin, admin_id)
        if admin.removed_at is not None:
            raise Conflict(f"admin {admin.id} ({admin.name}) was removed on {admin.removed_at:%Y-%m-%d %H:%M} UTC; "
                           "a removed admin stays removed: add a new one with add-admin")
        return admin

    def remove_users_of_organization(self, organization_id: int) -> list[User]:
        """Remove every researcher of an organisation still in (those removed before stay as
        they were); returns the ones removed now."""
        now = _now()
        with self.session() as s:
            self._get(s, Organization, organization_id)
            users = list(s.scalars(select(User).where(User.organization_id == organization_id,
                                                      User.removed_at.is_(None)).order_by(User.id)))
            for user in users:
                _disable_user(user, now)
            return users

    def _active_user(self, s: Session, user_id: int) -> User:
        user = self._get(s, User, user_id)
        if user.removed_at is not None:
            raise Conflict(f"user {user.id} ({user.name}) was removed on {user.removed_at:%Y-%m-%d %H:%M} UTC; "
                           "a removed user stays removed: add a new one with add-user")
        return user

    def nodes_of_organization(self, organization_id: int) -> list[int]:
        with self.session() as s:
            self._get(s, Organization, organization_id)
            return list(s.scalars(select(Node.id).where(Node.organization_id == organization_id)))

    def revoked_serials(self, s: Session | None = None) -> list[tuple[int, dt.datetime]]:
        """What the CRL lists: revoked certificates that have not expired yet (an expired one
        fails the handshake anyway, so the CRL does not grow with every renewal). Pass the
        session of a change in progress to include it."""
        if s is None:
            with self.session() as s:
                return self.revoked_serials(s)
        rows = s.execute(select(Certificate.serial, Certificate.revoked_at)
                         .where(Certificate.revoked_at.is_not(None), Certificate.not_after > _now()))
        return [(int(serial), when) for serial, when in rows]

    def get_node(self, node_id: int) -> Node:
        with self.session() as s:
            return self._get(s, Node, node_id)

    def count_ports(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count(Port.id))) or 0

    def count(self, model: type[Base]) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(model)) or 0

    @staticmethod
    def _get(s: Session, model: type, ident: int):
        obj = s.get(model, ident)
        if obj is None:
            raise UnknownObject(f"{model.__name__.lower()} {ident} does not exist")
        return obj

    # --- state shared by the API replicas (docs/operator-guide.md, "Scaling out")
    def claim_identity(self, key: str, value: str) -> str:
        """The value every replica on this database must have for `key`: `value` when this
        is the first to claim it, else the one claimed first (compare it with yours)."""
        with self.session() as s:
            found = s.get(ServerIdentity, key)
            if found is not None:
                return found.value
        try:
            with self.session() as s:
                s.add(ServerIdentity(key=key, value=value))
            return value
        except IntegrityError:  # another replica claimed it between the two transactions
            with self.session() as s:
                return s.get(ServerIdentity, key).value

    def count_event(self, name: str, label: str, by: int = 1) -> None:
        """Add to a counter shared by every replica, in a transaction of its own."""
        table = EventCounter.__table__
        with self.session() as s:
            dialect = s.connection().dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            elif dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:  # pragma: no cover - the store supports these two
                raise DatabaseError(f"counters need PostgreSQL or SQLite, not {dialect}")
            stmt = insert(table).values(name=name, label=label, value=by)
            s.execute(stmt.on_conflict_do_update(index_elements=[table.c.name, table.c.label],
                                                 set_={"value": table.c.value + by}))

    def counters(self, name: str) -> dict[str, int]:
        with self.session() as s:
            return dict(s.execute(select(EventCounter.label, EventCounter.value).where(EventCounter.name == name)).all())

    def record_openvpn_service(self, name: str, host: str, openvpn_up: bool, connected: list[str] | None) -> None:
        """What the OpenVPN service `name` sees now (one row per service, overwritten)."""
        with self.session() as s:
            row = s.get(OpenVPNService, name) or OpenVPNService(name=name)
            row.host, row.seen_at, row.openvpn_up = host, _now(), openvpn_up
            row.connected = sorted(connected) if connected is not None else None
            s.merge(row)

    def openvpn_services(self) -> list[OpenVPNService]:
        with self.session() as s:
            return list(s.scalars(select(OpenVPNService).order_by(OpenVPNService.name)))

    def vpn_entries(self) -> dict[str, str | None]:
        """Common name -> VPN IP (None: none yet) of every node not removed: the static
        addresses the OpenVPN server hands out, and the only nodes it may serve."""
        with self.session() as s:
            rows = s.execute(select(Node.id, Node.vpn_ip).where(Node.removed_at.is_(None)))
            return {f"node-{node_id}": ip for node_id, ip in rows}

    # --- VPN IPs
    @staticmethod
    def allocate_vpn_ip(s: Session, node: Node, subnet: ipaddress.IPv4Network,
                        slices: list[ipaddress.IPv4Network] | None = None) -> str:
        """The node's VPN IP, allocated once by the server and never chosen by the node.
        With several OpenVPN processes the subnet is cut into `slices`, one per process:
        a new node goes to the slice with the fewest nodes, so the load spreads. The first
        address of each slice is that process's own."""
        slices = slices or [subnet]
        servers = {next(net.hosts()) for net in slices}
        if node.vpn_ip:
            ip = ipaddress.IPv4Address(node.vpn_ip)
            if ip not in servers and any(ip in net for net in slices):
                return node.vpn_ip
        _serialise_allocation(s, node)
        used = {ipaddress.IPv4Address(ip) for ip in s.scalars(select(Node.vpn_ip).where(Node.vpn_ip.is_not(None)))}
        for net in sorted(slices, key=lambda net: sum(ip in net for ip in used)):
            for ip in net.hosts():
                if ip not in servers and ip not in used:
                    node.vpn_ip = str(ip)
                    s.flush()
                    return node.vpn_ip
        raise StoreError(f"VPN subnet {subnet} is full; use a larger vpn_subnet")


# What the store calls each kind whose names are unique, in messages.
_KINDS = {"Organization": "organisation", "Collaboration": "collaboration", "Node": "node"}


def _taken(kind: str, name: str, ident: int | None) -> StoreError:
    who = f"{kind} {ident}" if ident is not None else f"another {kind}"
    return Conflict(f"{kind} name {name!r} is taken by {who}; choose another name ({kind} names are unique)")


def _name_is_free(s: Session, model: type, name: str) -> None:
    """Refuse a name its kind has already, naming the one that has it: a clear message
    instead of the database's unique-constraint error, and nothing written."""
    ident = s.scalar(select(model.id).where(model.name == name))
    if ident is not None:
        raise _taken(_KINDS[model.__name__], name, ident)


def _add_named(s: Session, obj: Any) -> None:
    """Insert a named row; a name taken by a concurrent insert since _name_is_free looked
    gets the same message (the transaction rolls back)."""
    s.add(obj)
    try:
        s.flush()
    except IntegrityError as exc:
        if "name" not in str(exc.orig):
            raise
        raise _taken(_KINDS[type(obj).__name__], obj.name, None) from None


def _plane(data_plane: str | None) -> str | None:
    """A collaboration's data plane as stored: None (or "default", as the admin command and
    API spell it) follows the server's data_plane."""
    if data_plane is None or data_plane == "default":
        return None
    if data_plane not in DATA_PLANES:
        raise StoreError(f"data plane {data_plane!r} is not one of {', '.join(DATA_PLANES)}; give one of them, "
                         "or default for the server's (its config's data_plane)")
    return data_plane


def _disable_user(user: User, now: dt.datetime) -> None:
    user.removed_at = now
    user.api_key_hash = f"removed-user-{user.id}-{secrets.token_hex(8)}"  # unique, and no key hashes to it
    user.key_version += 1


def _serialise_allocation(s: Session, node: Node) -> None:
    """Hold a lock until this transaction ends, so that two nodes connecting at once cannot
    both read the same free address (the unique index would then fail one of them)."""
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _VPN_IP_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # pysqlite begins the transaction at the first write: writing first takes SQLite's
        # one write lock before the addresses are read (a read first could go stale).
        conn.execute(update(Node.__table__).where(Node.__table__.c.id == node.id)
                     .values(vpn_ip=Node.__table__.c.vpn_ip))


_VPN_IP_LOCK_KEY = 0x76706E62  # PostgreSQL advisory lock key (any constant unique to us)


@contextmanager
def database_errors(shown_url: str) -> Iterator[None]:
    """Turn the driver's errors (refused connection, bad password, missing file, no
    permission) into a DatabaseError that names the database and the fix."""
    try:
        yield
    except DBAPIError as exc:
        raise DatabaseError(f"cannot use the database {shown_url}: {_reason(exc)}; check database_url "
                            f"({URL_HELP}) and that the database server runs and accepts this user") from None


def make_engine(url: str) -> Engine:
    """An engine for `url`, with the SQLite-only settings applied to SQLite alone."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"database_url {url.split('@')[-1]!r} is not a database URL; use {URL_HELP}") from None
    if parsed.drivername == "postgresql":
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the one we install is psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    memory = backend == "sqlite" and parsed.database in (None, "", ":memory:")
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if memory:  # one connection, or every session would see its own empty database
            kwargs["poolclass"] = StaticPool
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True  # a restarted database server leaves dead pooled connections
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"database_url {parsed.render_as_string(hide_password=True)!r} names a database "
                            f"driver that is not installed ({exc}); use {URL_HELP}") from None
    if backend == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # WAL: readers do not block the writer (agents poll)
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()
    return engine


def _reason(exc: DBAPIError) -> str:
    """The driver's message without SQLAlchemy's SQL echo and help link."""
    lines = [line.strip() for line in str(exc.orig).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc.orig).__name__
