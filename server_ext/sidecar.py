"""The vantage6 4.x sidecar: the VPN routes a vantage6 server lacks, served beside it.

vantage6 4.10+ registers POST /api/vpn/update without implementing it, and its GET /api/vpn
needs an EduVPN server. The site's reverse proxy sends /api/vpn* here instead
(docs/vantage6.md); everything else stays with the unchanged vantage6 server. The routes
take vantage6's own tokens and answer in vantage6's shapes:

- GET  /api/vpn                        node token  -> {"ovpn_config": ...}
- POST /api/vpn/update {"vpn_config"}  node token  -> {"ovpn_config": ...}, the old one revoked
- GET  /api/vpn/algorithm/addresses    container token -> {"addresses": [...]}, vantage6's rules

vantage6's database answers who exists (v6directory.py). The store keeps the VPN state
only, under vantage6's node ids: a node row per vantage6 node that fetched a config (its
VPN IP, its certificates), with placeholder organisation and collaboration rows the
schema's keys need. `sweep` revokes the nodes vantage6 deleted; the OpenVPN service runs it
on every pass, so their sessions end within a pass."""
from __future__ import annotations

import datetime as dt
import logging
import secrets

from flask import Blueprint, jsonify
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .api import ApiError, address_query, body, ext, issue_config, json_api, renew_config, requires
from .directory import NodeInfo
from .store import Certificate, Collaboration, Node, Organization, member
from .tokens import Identity
from .v6directory import EXPIRY_WARNING

log = logging.getLogger(__name__)
bp = Blueprint("vpnagent_vantage6", __name__)
json_api(bp)


@bp.get("/vpn")
@requires("node")
def vpn_get(s: Session, ident: Identity):
    return jsonify(ovpn_config=issue_config(s, mirror_node(s, _info(ident))))


@bp.post("/vpn/update")
@requires("node")
def vpn_update(s: Session, ident: Identity):
    data = body(vpn_config=(str, True))
    return jsonify(ovpn_config=renew_config(s, mirror_node(s, _info(ident)), data["vpn_config"]))


@bp.get("/vpn/algorithm/addresses")
@requires("container")
def addresses(s: Session, ident: Identity):
    return jsonify(addresses=ext().directory.addresses(ident, address_query()))


def _info(ident: Identity) -> NodeInfo:
    """The node a vantage6 node token names, as the directory checked it."""
    return NodeInfo(ident["node_id"], ident["organization_id"], ident["collaboration_id"],
                    f"vantage6-node-{ident['node_id']}")


def mirror_node(s: Session, info: NodeInfo) -> Node:
    """The store's row for vantage6 node `info.id` (same id), made on its first config.
    A row removed earlier comes back as a new node: vantage6 on SQLite gives a deleted
    node's id to the next one made when it was the highest. The earlier node's
    certificates stay revoked."""
    node = s.get(Node, info.id)
    if node is None:
        _ensure(s, Organization, info.organization_id, f"vantage6-organization-{info.organization_id}")
        collab = _ensure(s, Collaboration, info.collaboration_id, f"vantage6-collaboration-{info.collaboration_id}")
        if not s.scalar(select(member.c.organization_id).where(member.c.collaboration_id == collab.id,
                                                               member.c.organization_id == info.organization_id)):
            s.execute(member.insert().values(collaboration_id=collab.id, organization_id=info.organization_id))
        node = Node(id=info.id, name=info.name, organization_id=info.organization_id,
                    collaboration_id=info.collaboration_id, api_key_hash=_no_key(info.id))
        _insert(s, node)
        log.info("vantage6 node %s: first VPN config", info.id)
    elif node.removed_at is not None or (node.organization_id, node.collaboration_id) != (
            info.organization_id, info.collaboration_id):
        log.warning("vantage6 node %s is a new node with the id of one removed earlier; it gets a new certificate "
                    "(the earlier node's stay revoked)", info.id)
        _ensure(s, Organization, info.organization_id, f"vantage6-organization-{info.organization_id}")
        _ensure(s, Collaboration, info.collaboration_id, f"vantage6-collaboration-{info.collaboration_id}")
        node.removed_at, node.api_key_hash = None, _no_key(info.id)
        node.organization_id, node.collaboration_id = info.organization_id, info.collaboration_id
        s.flush()
    return node


def _no_key(node_id: int) -> str:
    """The api_key_hash of a vantage6 node: unique, and no key hashes to it (vantage6 keeps
    the keys; nodes never log in here)."""
    return f"vantage6-node-{node_id}-{secrets.token_hex(8)}"


def _ensure(s: Session, model: type, ident: int, name: str):
    row = s.get(model, ident)
    if row is None:
        row = model(id=ident, name=name)
        _insert(s, row)
    return row


def _insert(s: Session, row) -> None:
    """Two first configs at once race for the same rows: the loser gets a 503 and its
    node's retry finds them."""
    try:
        with s.begin_nested():
            s.add(row)
    except IntegrityError:
        raise ApiError(503, "another request is setting this node up; try again") from None


def sweep(state) -> list[int]:
    """Revoke every node vantage6 no longer has (admin.remove_node: certificates revoked,
    CRL published, static address gone, live session disconnected). Returns their ids."""
    from .admin import remove_node

    live = state.directory.live_nodes()
    ours = {int(cn.split("-", 1)[1]) for cn in state.store.vpn_entries()}
    gone = sorted(ours - live)
    for node_id in gone:
        removal = remove_node(state, node_id)
        log.warning("vantage6 node %s was deleted on the vantage6 server: its VPN certificates are revoked; %s",
                    node_id, removal.note)
    return gone


class Sweeper:
    """The OpenVPN service's directory pass in a sidecar: `sweep` every pass, and once an
    hour a warning in the log for each node whose certificate lapses within 30 days."""

    CHECK_EVERY = dt.timedelta(hours=1)

    def __init__(self, state) -> None:
        self.state = state
        self._checked: dt.datetime | None = None

    def __call__(self) -> list[int]:
        gone = sweep(self.state)
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        if self._checked is None or now - self._checked >= self.CHECK_EVERY:
            self._checked = now
            for row in certificate_report(self.state, now):
                if row["state"] in ("expiring", "expired"):
                    log.warning("vantage6 node %s: VPN certificate %s %s; %s", row["node_id"],
                                "expired at" if row["state"] == "expired" else "expires at", row["not_after"],
                                row["action"])
        return gone


def certificate_report(state, now: dt.datetime | None = None) -> list[dict]:
    """Each vantage6 node the store knows: its VPN IP and current certificate's expiry,
    and what the operator must do (a vantage6 node renews only by restarting)."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    live = state.directory.live_nodes()
    out = []
    with state.store.session() as s:
        for node in s.scalars(select(Node).order_by(Node.id)):
            cert = s.scalar(select(Certificate).where(Certificate.node_id == node.id, Certificate.revoked_at.is_(None))
                            .order_by(Certificate.id.desc()))
            if node.removed_at is not None or node.id not in live:
                state_, todo = "deleted", "deleted on the vantage6 server; its certificates are revoked"
            elif cert is None:
                state_, todo = "no certificate", "start the node (it fetches its config at start)"
            elif cert.not_after <= now:
                state_, todo = "expired", "its VPN is down: restart the node (v6 node restart) for a new config"
            elif cert.not_after - now <= EXPIRY_WARNING:
                state_, todo = "expiring", "restart the node (v6 node restart) before then for a new config"
            else:
                state_, todo = "valid", ""
            out.append({"node_id": node.id, "vpn_ip": node.vpn_ip, "state": state_,
                        "not_after": cert.not_after.isoformat(timespec="seconds") + "Z" if cert else None,
                        "action": todo})
    return out
