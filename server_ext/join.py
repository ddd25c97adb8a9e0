"""One-step node join, the server's half: issue a single-use, expiring join token for a
node, print it as a join string (vpnshared/joinstring.py) with the server's URL and the
pin of its CA, and spend it on POST /node/join for the node's API key.

The API key is made when the token is spent, never before: it exists only in the
response to the node that joined, so no pasteable line ever holds a long-lived key. A
spent token cannot be spent again (replay), a token is bound to one node (the name in the
string must be that node's), and issuing a new token replaces the node's unspent one."""
from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from vpnshared.joinstring import JoinString, spki_pin

from .store import JoinToken, Node, Store, StoreError, hash_key, replace_key

DEFAULT_LIFETIME = dt.timedelta(hours=24)
MIN_LIFETIME, MAX_LIFETIME = dt.timedelta(minutes=1), dt.timedelta(days=30)
_DURATION_RE = re.compile(r"^(\d{1,6})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class JoinError(Exception):
    """A join token was refused; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def parse_lifetime(text: str) -> dt.timedelta:
    """'30m', '24h', '7d' -> a timedelta within 1 minute and 30 days; ValueError naming the
    value and the accepted form otherwise."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise ValueError(f"join token lifetime {text!r} must be a number with m, h or d, like 30m, 24h or 7d")
    lifetime = dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise ValueError(f"join token lifetime {text!r} must be between 1m and 30d")
    return lifetime


def ca_pin(ca_pem: str | bytes) -> str:
    """The pin of the CA in `ca_pem`: sha256 of its SubjectPublicKeyInfo."""
    data = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
    cert = x509.load_pem_x509_certificate(data)
    return spki_pin(cert.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class IssuedJoin:
    node_id: int
    node_name: str
    token: str
    expires_at: dt.datetime  # naive UTC, as the store keeps times


def issue_join_token(store: Store, node_id: int, lifetime: dt.timedelta = DEFAULT_LIFETIME) -> IssuedJoin:
    """A new join token for the node (shown once; only its hash is kept). The node's earlier
    unspent tokens stop working: there is at most one to leak."""
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise StoreError(f"join token lifetime {lifetime} must be between 1 minute and 30 days")
    token = secrets.token_urlsafe(32)
    now = _now()
    with store.session() as s:
        node = s.get(Node, node_id)
        if node is None:
            raise StoreError(f"node {node_id} does not exist")
        if node.removed_at is not None:
            raise StoreError(f"node {node.id} ({node.name}) was removed; a removed node cannot join again: add a "
                             "new one with add-node")
        s.execute(delete(JoinToken).where(JoinToken.node_id == node.id, JoinToken.used_at.is_(None)))
        s.add(JoinToken(node_id=node.id, token_hash=hash_key(token), created_at=now, expires_at=now + lifetime))
        return IssuedJoin(node.id, node.name, token, now + lifetime)


def redeem(s: Session, token: str, name: str) -> tuple[Node, str]:
    """Spend a join token in the session `s` of the request: the node it was issued for and
    a new API key for it (its earlier key stops working). JoinError for a token that is
    unknown, spent, expired, another node's or of a removed node; then nothing changes."""
    record = s.scalar(select(JoinToken).where(JoinToken.token_hash == hash_key(token)))
    if record is None:
        raise JoinError(401, "unknown join token (it was replaced by a newer one, or never issued); issue a new one "
                             "with `vpnagent-server join-token NODE_ID`")
    node = s.get(Node, record.node_id)
    reissue = f"issue a new one with `vpnagent-server join-token {node.id}`"
    now = _now()
    if record.used_at is not None:
        raise JoinError(401, f"this join token was used already ({record.used_at:%Y-%m-%d %H:%M} UTC) and works "
                             f"only once; {reissue}")
    if record.expires_at <= now:
        raise JoinError(401, f"this join token expired at {record.expires_at:%Y-%m-%d %H:%M} UTC; {reissue}")
    if node.removed_at is not None:
        raise JoinError(401, f"node {node.name} was removed from the server; add a new node with add-node")
    if name != node.name:
        raise JoinError(403, f"this join token is for node {node.name!r}, not {name!r}; use the join string as "
                             "printed")
    # Spent in one conditional write: of two requests with the same token only one finds it unspent.
    spent = s.execute(update(JoinToken).where(JoinToken.id == record.id, JoinToken.used_at.is_(None))
                      .values(used_at=now))
    if spent.rowcount != 1:
        raise JoinError(401, f"this join token was used already and works only once; {reissue}")
    key = replace_key(node)
    s.flush()
    return node, key


def join_string(url: str, ca_pem: str, issued: IssuedJoin) -> str:
    return JoinString(url, ca_pin(ca_pem), issued.node_name, issued.token).encode()


def api_url(raw: dict[str, Any], default_port: int, default_host: str) -> str:
    """The URL nodes reach the API at, as far as the server config tells: the first of
    tls_hostnames, else openvpn_remote_host, else the listen address (the names the
    self-issued certificate covers); in one-port mode the OpenVPN port. `--server-url`
    overrides it where nodes come through a proxy or another name."""
    names = raw.get("tls_hostnames") or []
    host = str(names[0]) if names else raw.get("openvpn_remote_host") or raw.get("host") or default_host
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if raw.get("one_port"):
        port = raw.get("openvpn_remote_port") or 443
    else:
        port = raw.get("port") or default_port
    return f"https://{host}:{port}/api"
