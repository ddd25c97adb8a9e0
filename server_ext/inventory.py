"""What an administrator sees: the lists and the single objects with their relations, as
JSON-ready dicts. `vpnagent-server list-*/show-* --json` prints exactly these and
/api/admin answers with them, so a script can switch between the two without a new parser.
Reads only; an unknown id raises UnknownObject (CLI exit 2, HTTP 404)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .store import (ACTIVE_STATES, RUN_STATES, Admin, Certificate, Collaboration, Node, Organization, Port, Run, Store,
                    Task, User)
from .wireguard import plane_of, seen_endpoint

Json = dict[str, Any]
_get = Store._get  # the row, or UnknownObject naming the id


def when(t: dt.datetime | None) -> str | None:
    """A stored time (naive UTC) as ISO 8601 with its zone: 2026-11-29T10:00:00Z."""
    return None if t is None else t.isoformat() + "Z"


def _ref(obj: Organization | Collaboration) -> Json:
    return {"id": obj.id, "name": obj.name}


# ---------------------------------------------------------------- organisations
def organization_json(org: Organization) -> Json:
    return {"id": org.id, "name": org.name,
            "collaborations": [_ref(c) for c in sorted(org.collaborations, key=lambda c: c.id)]}


def organizations(s: Session) -> list[Json]:
    return [organization_json(o) for o in s.scalars(select(Organization).order_by(Organization.id))]


def organization(s: Session, organization_id: int) -> Json:
    """One organisation with its collaborations, nodes and researchers."""
    org = _get(s, Organization, organization_id)
    node_rows = s.scalars(select(Node).where(Node.organization_id == org.id).order_by(Node.id))
    user_rows = s.scalars(select(User).where(User.organization_id == org.id).order_by(User.id))
    return {**organization_json(org), "nodes": [node_json(n) for n in node_rows],
            "users": [user_json(u) for u in user_rows]}


# ---------------------------------------------------------------- collaborations
def collaboration_json(collab: Collaboration, server_plane: str) -> Json:
    """`server_plane`: the server config's data_plane, which a collaboration without a plane
    of its own uses (`data_plane_default` says so)."""
    return {"id": collab.id, "name": collab.name,
            "organizations": [_ref(o) for o in sorted(collab.organizations, key=lambda o: o.id)],
            "data_plane": plane_of(collab, server_plane), "data_plane_default": collab.data_plane is None}


def collaborations(s: Session, server_plane: str) -> list[Json]:
    return [collaboration_json(c, server_plane) for c in s.scalars(select(Collaboration).order_by(Collaboration.id))]


def collaboration(s: Session, collaboration_id: int, server_plane: str) -> Json:
    """One collaboration with its organisations, data plane, nodes and number of tasks."""
    collab = _get(s, Collaboration, collaboration_id)
    node_rows = s.scalars(select(Node).where(Node.collaboration_id == collab.id).order_by(Node.id))
    tasks = s.scalar(select(func.count(Task.id)).where(Task.collaboration_id == collab.id)) or 0
    return {**collaboration_json(collab, server_plane), "nodes": [node_json(n) for n in node_rows], "tasks": tasks}


# ---------------------------------------------------------------- nodes
def node_json(node: Node) -> Json:
    return {"id": node.id, "name": node.name, "organization_id": node.organization_id,
            "collaboration_id": node.collaboration_id, "vpn_ip": node.vpn_ip,
            "last_seen_at": when(node.last_seen_at), "removed_at": when(node.removed_at)}


def nodes(s: Session, organization_id: int | None = None, collaboration_id: int | None = None) -> list[Json]:
    stmt = select(Node).order_by(Node.id)
    if organization_id is not None:
        _get(s, Organization, organization_id)
        stmt = stmt.where(Node.organization_id == organization_id)
    if collaboration_id is not None:
        _get(s, Collaboration, collaboration_id)
        stmt = stmt.where(Node.collaboration_id == collaboration_id)
    return [node_json(n) for n in s.scalars(stmt)]


def certificate_state(cert: Certificate, now: dt.datetime) -> str:
    if cert.revoked_at is not None:
        return "revoked"
    return "expired" if cert.not_after <= now else "valid"


def node(s: Session, node_id: int) -> Json:
    """One node with its organisation, collaboration, certificates (newest first: the one
    its VPN client holds is the valid one) and its runs in progress."""
    n = _get(s, Node, node_id)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    certs = s.scalars(select(Certificate).where(Certificate.node_id == n.id).order_by(Certificate.id.desc()))
    active = s.scalars(select(Run.id).where(Run.node_id == n.id, Run.status.in_(ACTIVE_STATES)).order_by(Run.id))
    return {**node_json(n), "common_name": n.common_name,
            "organization": _ref(s.get(Organization, n.organization_id)),
            "collaboration": _ref(s.get(Collaboration, n.collaboration_id)),
            "certificates": [{"serial": c.serial, "not_after": when(c.not_after), "revoked_at": when(c.revoked_at),
                              "state": certificate_state(c, now)} for c in certs],
            "active_runs": list(active), "wireguard": wireguard_json(n)}


def wireguard_json(n: Node) -> Json | None:
    """The WireGuard peer the node registered (PUT /node/wireguard), None before it has."""
    if n.wg_public_key is None:
        return None
    return {"public_key": n.wg_public_key, "port": n.wg_port, "endpoints": list(n.wg_endpoints or []),
            "seen": seen_endpoint(n), "updated_at": when(n.wg_updated_at)}


# ---------------------------------------------------------------- researchers and admins
def user_json(user: User) -> Json:
    return {"id": user.id, "name": user.name, "organization_id": user.organization_id,
            "removed_at": when(user.removed_at)}


def users(s: Session, organization_id: int | None = None) -> list[Json]:
    stmt = select(User).order_by(User.id)
    if organization_id is not None:
        _get(s, Organization, organization_id)
        stmt = stmt.where(User.organization_id == organization_id)
    return [user_json(u) for u in s.scalars(stmt)]


def user(s: Session, user_id: int) -> Json:
    u = _get(s, User, user_id)
    return {**user_json(u), "organization": _ref(s.get(Organization, u.organization_id))}


def admin_json(admin: Admin) -> Json:
    return {"id": admin.id, "name": admin.name, "created_at": when(admin.created_at),
            "removed_at": when(admin.removed_at)}


def admins(s: Session) -> list[Json]:
    return [admin_json(a) for a in s.scalars(select(Admin).order_by(Admin.id))]


# ---------------------------------------------------------------- tasks
def task_json(task: Task) -> Json:
    from .api import _task_status

    return {"id": task.id, "name": task.name, "image": task.image, "collaboration_id": task.collaboration_id,
            "parent_id": task.parent_id, "status": _task_status(task), "created_at": when(task.created_at),
            "run_states": {state: n for state in RUN_STATES if (n := sum(r.status == state for r in task.runs))}}


def tasks(s: Session, collaboration_id: int | None = None) -> list[Json]:
    stmt = select(Task).order_by(Task.id)
    if collaboration_id is not None:
        _get(s, Collaboration, collaboration_id)
        stmt = stmt.where(Task.collaboration_id == collaboration_id)
    return [task_json(t) for t in s.scalars(stmt)]


def task(s: Session, task_id: int) -> Json:
    """One task with its runs (state, node, times, registered ports) and its subtasks.
    Inputs, results and logs stay out: they are the researchers' data."""
    t = _get(s, Task, task_id)
    children = s.scalars(select(Task.id).where(Task.parent_id == t.id).order_by(Task.id))
    runs = [{"id": r.id, "organization_id": r.organization_id, "node_id": r.node_id, "status": r.status,
             "started_at": when(r.started_at), "finished_at": when(r.finished_at),
             "ports": [{"port": p.port, "label": p.label}
                       for p in s.scalars(select(Port).where(Port.run_id == r.id).order_by(Port.id))]}
            for r in t.runs]
    return {**task_json(t), "runs": runs, "contract": t.contract, "description": t.description,
            "databases": list(t.databases or []), "subtasks": list(children)}
