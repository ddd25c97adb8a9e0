"""Who is calling, and what it may see: the questions the API asks a directory.

vpnagent's own server answers them from its store (StoreDirectory, here). Beside a vantage6
4.x server, vantage6's tokens and tables answer them (server_ext/v6directory.py) and the
store keeps only the VPN state: addresses, certificates, the CRL. The API code asks these
questions through a Directory and never reads the answers from the store's tables itself,
so both run the same routes.

The questions:
- identify: whose signed token is this (a TokenError when it is not ours or has expired);
- check: is that caller still valid now (a node not removed, a run not finished, a key not
  replaced); may add what the token does not carry (vantage6's node tokens carry only the
  node's id);
- node: a node's organisation and collaboration, None for one that no longer exists;
- family: the tasks whose runs may talk to a task's runs;
- members: which of some organisations are in a collaboration;
- live_nodes: every node that still exists."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from .store import ACTIVE_STATES, Admin, Node, Run, Task, User, member
from .tokens import Identity, TokenService


class Refused(Exception):
    """A token that verified but no longer works (HTTP 401), or a caller that may not do
    this (403). The message says why and what to do."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


@dataclass(frozen=True)
class NodeInfo:
    id: int
    organization_id: int
    collaboration_id: int
    name: str


class Directory(Protocol):
    name: str  # "vpnagent" or "vantage6": what answers, for messages and the inventory

    def identify(self, token: str) -> Identity: ...

    def check(self, s: Session, ident: Identity) -> Identity: ...

    def node(self, s: Session, node_id: int) -> NodeInfo | None: ...

    def family(self, s: Session, task_id: int) -> set[int]: ...

    def members(self, s: Session, collaboration_id: int, organization_ids: Iterable[int]) -> set[int]: ...

    def live_nodes(self, s: Session) -> set[int]: ...


class StoreDirectory:
    """vpnagent's own server: its tokens (server_ext/tokens.py) and its store."""

    name = "vpnagent"

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    def identify(self, token: str) -> Identity:
        return self.tokens.decode(token)

    def check(self, s: Session, ident: Identity) -> Identity:
        """Container tokens die with their run; node, user and admin tokens with their key."""
        if ident.kind == "container":
            run = s.get(Run, ident.claims.get("run_id"))
            if run is None or run.status not in ACTIVE_STATES or run.task_id != ident.claims.get("task_id"):
                raise Refused(401, "container token no longer valid: its run has ended")
        elif ident.kind == "node":
            node = s.get(Node, ident.claims.get("node_id"))
            if node is None or node.removed_at is not None:
                raise Refused(401, "this node was removed from the server")
            if node.key_version != ident.claims.get("key_version", 1):  # tokens from before 0004 carry none
                raise Refused(401, "this node's API key was replaced after the token was issued; put the "
                                   "new key into the node config's api_key and restart the agent")
        elif ident.kind == "user":
            user = s.get(User, ident.claims.get("user_id"))
            if user is None or user.removed_at is not None:
                raise Refused(401, "this user was removed from the server")
            if user.key_version != ident.claims.get("key_version", 1):  # tokens from before 0002 carry none
                raise Refused(401, "this user's API key was replaced after the token was issued; request a new "
                                   "token with the new key")
        elif ident.kind == "admin":
            admin = s.get(Admin, ident.claims.get("admin_id"))
            if admin is None or admin.removed_at is not None:
                raise Refused(401, "this admin was removed from the server")
            if admin.key_version != ident.claims.get("key_version"):
                raise Refused(401, "this admin's API key was replaced after the token was issued; request a new "
                                   "token with the new key")
        return ident

    def node(self, s: Session, node_id: int) -> NodeInfo | None:
        node = s.get(Node, node_id)
        if node is None or node.removed_at is not None:
            return None
        return NodeInfo(node.id, node.organization_id, node.collaboration_id, node.name)

    def family(self, s: Session, task_id: int) -> set[int]:
        return family_of(task_id, s.scalar(select(Task.parent_id).where(Task.id == task_id)),
                         s.scalars(select(Task.id).where(Task.parent_id == task_id)))

    def members(self, s: Session, collaboration_id: int, organization_ids: Iterable[int]) -> set[int]:
        # only the organisations asked about: loading all of a large collaboration's took most
        # of a task creation's time at 1,000 organisations (benchmarks/controlplane.py)
        return set(s.scalars(select(member.c.organization_id).where(
            member.c.collaboration_id == collaboration_id, member.c.organization_id.in_(set(organization_ids)))))

    def live_nodes(self, s: Session) -> set[int]:
        return set(s.scalars(select(Node.id).where(Node.removed_at.is_(None))))


def family_of(task_id: int, parent_id: int | None, children: Iterable[int]) -> set[int]:
    """The tasks whose runs may talk to task `task_id`'s runs: itself, its parent and its
    children — exactly what GET /vpn/algorithm/addresses can return to it (vantage6's
    "siblings" are the runs of the same task at other organisations, not other tasks). The
    relation is symmetric, so the same set says who may send to it and whom it may reach."""
    ids = {task_id, *children}
    if parent_id is not None:
        ids.add(parent_id)
    return ids
