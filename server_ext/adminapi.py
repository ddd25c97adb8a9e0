"""/api/admin: the admin commands of `vpnagent-server` over HTTP, for automation. Only an
admin token (POST /api/token/admin with a key from `vpnagent-server add-admin`) gets in;
every other kind gets 403. The answers are the dicts of server_ext/inventory.py, the same
`vpnagent-server ... --json` prints; a created or rotated API key appears once, as
`api_key`. Registered on the extension's Blueprint (api.bp) when the extension mounts it."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Callable, Iterator

from flask import jsonify
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import inventory
from .admin import remove_node, remove_organization
from .api import ApiError, body, bp, ext, int_arg, requires
from .store import Admin, Conflict, DatabaseError, StoreError, UnknownObject, hash_key
from .tokens import Identity

ADMIN = "admin"


@contextmanager
def refusals() -> Iterator[None]:
    """The store's refusals as the API's: unknown id 404, collision 409, bad value 400."""
    try:
        yield
    except UnknownObject as exc:
        raise ApiError(404, str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    except DatabaseError as exc:
        raise ApiError(503, str(exc)) from None
    except StoreError as exc:
        raise ApiError(400, str(exc)) from None


def view(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An inventory view in its own short transaction: it sees what a change just committed."""
    with refusals(), ext().store.session() as s:
        return fn(s, *args, **kwargs)


@bp.post("/token/admin")
def token_admin():
    data = body(api_key=(str, True))
    with ext().store.session() as s:
        admin = s.scalar(select(Admin).where(Admin.api_key_hash == hash_key(data["api_key"])))
        if admin is None:
            raise ApiError(401, "unknown admin API key")
        sub = {"client_type": "admin", "admin_id": admin.id, "key_version": admin.key_version}
    return jsonify(access_token=ext().tokens.issue("admin", sub))


# ---------------------------------------------------------------- organisations
@bp.get("/admin/organization")
@requires(ADMIN)
def admin_organizations(s: Session, ident: Identity):
    return jsonify(view(inventory.organizations))


@bp.post("/admin/organization")
@requires(ADMIN)
def admin_organization_create(s: Session, ident: Identity):
    data = body(name=(str, True))
    with refusals():
        org = ext().store.create_organization(data["name"])
    return jsonify(view(inventory.organization, org.id)), 201


@bp.get("/admin/organization/<int:organization_id>")
@requires(ADMIN)
def admin_organization_get(s: Session, ident: Identity, organization_id: int):
    return jsonify(view(inventory.organization, organization_id))


@bp.delete("/admin/organization/<int:organization_id>")
@requires(ADMIN)
def admin_organization_remove(s: Session, ident: Identity, organization_id: int):
    """Every node and researcher of the organisation out; the organisation stays listed."""
    with refusals():
        removed = remove_organization(ext(), organization_id)
    return jsonify({**view(inventory.organization, organization_id),
                    "removed_nodes": [asdict(r) for r in removed.nodes],
                    "removed_users": [u.id for u in removed.users]})


# ---------------------------------------------------------------- collaborations
@bp.get("/admin/collaboration")
@requires(ADMIN)
def admin_collaborations(s: Session, ident: Identity):
    return jsonify(view(inventory.collaborations, ext().data_plane))


@bp.post("/admin/collaboration")
@requires(ADMIN)
def admin_collaboration_create(s: Session, ident: Identity):
    data = body(name=(str, True), organizations=(list, True), data_plane=(str, False))
    orgs = _ids("organizations", data["organizations"])
    with refusals():
        collab = ext().store.create_collaboration(data["name"], orgs, data.get("data_plane"))
    return jsonify(view(inventory.collaboration, collab.id, ext().data_plane)), 201


@bp.patch("/admin/collaboration/<int:collaboration_id>")
@requires(ADMIN)
def admin_collaboration_update(s: Session, ident: Identity, collaboration_id: int):
    """Move a collaboration to a data plane (`default` or null: the server's); every node
    of it is told at once and switches (set-data-plane)."""
    data = body(data_plane=(str, False))
    if "data_plane" not in data:
        raise ApiError(400, "field 'data_plane' is required: openvpn, wireguard, or default (null) for the "
                            "server's")
    with refusals():
        ext().store.set_data_plane(collaboration_id, data["data_plane"])
    return jsonify(view(inventory.collaboration, collaboration_id, ext().data_plane))


def _ids(field: str, value: list) -> list[int]:
    from .inputs import check_ids

    if not value:
        raise ApiError(400, f"field '{field}' must list at least one organisation id")
    return check_ids(f"field '{field}'", value, 1000)


@bp.get("/admin/collaboration/<int:collaboration_id>")
@requires(ADMIN)
def admin_collaboration_get(s: Session, ident: Identity, collaboration_id: int):
    return jsonify(view(inventory.collaboration, collaboration_id, ext().data_plane))


# ---------------------------------------------------------------- nodes
@bp.get("/admin/node")
@requires(ADMIN)
def admin_nodes(s: Session, ident: Identity):
    return jsonify(view(inventory.nodes, int_arg("organization_id", required=False),
                        int_arg("collaboration_id", required=False)))


@bp.post("/admin/node")
@requires(ADMIN)
def admin_node_create(s: Session, ident: Identity):
    data = body(name=(str, True), organization_id=(int, True), collaboration_id=(int, True))
    with refusals():
        node, key = ext().store.create_node(data["organization_id"], data["collaboration_id"], data["name"])
    return jsonify({**view(inventory.node, node.id), "api_key": key}), 201


@bp.get("/admin/node/<int:node_id>")
@requires(ADMIN)
def admin_node_get(s: Session, ident: Identity, node_id: int):
    return jsonify(view(inventory.node, node_id))


@bp.delete("/admin/node/<int:node_id>")
@requires(ADMIN)
def admin_node_remove(s: Session, ident: Identity, node_id: int):
    """API key and tokens disabled, certificates revoked, live VPN session ended."""
    with refusals():
        removal = remove_node(ext(), node_id)
    return jsonify({**view(inventory.node, node_id), "disconnected": removal.disconnected, "note": removal.note})


@bp.post("/admin/node/<int:node_id>/key")
@requires(ADMIN)
def admin_node_rotate_key(s: Session, ident: Identity, node_id: int):
    with refusals():
        node, key = ext().store.rotate_node_key(node_id)
    return jsonify({**view(inventory.node, node.id), "api_key": key})


# ---------------------------------------------------------------- researchers
@bp.get("/admin/user")
@requires(ADMIN)
def admin_users(s: Session, ident: Identity):
    return jsonify(view(inventory.users, int_arg("organization_id", required=False)))


@bp.post("/admin/user")
@requires(ADMIN)
def admin_user_create(s: Session, ident: Identity):
    data = body(name=(str, True), organization_id=(int, True))
    with refusals():
        user, key = ext().store.create_user(data["organization_id"], data["name"])
    return jsonify({**view(inventory.user, user.id), "api_key": key}), 201


@bp.get("/admin/user/<int:user_id>")
@requires(ADMIN)
def admin_user_get(s: Session, ident: Identity, user_id: int):
    return jsonify(view(inventory.user, user_id))


@bp.delete("/admin/user/<int:user_id>")
@requires(ADMIN)
def admin_user_remove(s: Session, ident: Identity, user_id: int):
    with refusals():
        ext().store.remove_user(user_id)
    return jsonify(view(inventory.user, user_id))


@bp.post("/admin/user/<int:user_id>/key")
@requires(ADMIN)
def admin_user_rotate_key(s: Session, ident: Identity, user_id: int):
    with refusals():
        user, key = ext().store.rotate_user_key(user_id)
    return jsonify({**view(inventory.user, user.id), "api_key": key})


# ---------------------------------------------------------------- tasks
@bp.get("/admin/task")
@requires(ADMIN)
def admin_tasks(s: Session, ident: Identity):
    return jsonify(view(inventory.tasks, int_arg("collaboration_id", required=False)))


@bp.get("/admin/task/<int:task_id>")
@requires(ADMIN)
def admin_task_get(s: Session, ident: Identity, task_id: int):
    return jsonify(view(inventory.task, task_id))
