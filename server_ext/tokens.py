"""Short-lived JWTs for nodes, researchers and algorithm containers. `sub` is a dict of
identity claims, the shape vantage6's algorithm client decodes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from .config import default

KINDS = ("node", "user", "container", "admin")
# The container token lifetime is a server config key; its default lives with the others.
LIFETIMES = {"node": 15 * 60, "user": 60 * 60, "container": default("container_token_seconds"), "admin": 15 * 60}


class TokenError(ValueError):
    """Missing, malformed, expired or wrongly signed token (HTTP 401)."""


@dataclass(frozen=True)
class Identity:
    kind: str
    claims: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.claims[key]


class TokenService:
    def __init__(self, secret: str, lifetimes: dict[str, int] | None = None) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 characters")
        self.secret = secret
        self.lifetimes = {**LIFETIMES, **(lifetimes or {})}

    def issue(self, kind: str, sub: dict[str, Any]) -> str:
        now = int(time.time())
        payload = {"kind": kind, "sub": sub, "iat": now, "exp": now + self.lifetimes[kind]}
        return jwt.encode(payload, self.secret, algorithm="HS256")

    def decode(self, token: str) -> Identity:
        try:
            payload = jwt.decode(token, self.secret, algorithms=["HS256"],
                                 options={"verify_sub": False, "require": ["exp", "sub", "kind"]})
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired; request a new one") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from exc
        if payload.get("kind") not in KINDS or not isinstance(payload.get("sub"), dict):
            raise TokenError("invalid token: unknown kind or identity")
        return Identity(payload["kind"], payload["sub"])
