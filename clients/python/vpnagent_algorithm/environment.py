"""Where a run finds its server and who it is, from the two container contracts it may meet.

A vpnagent node sets `VPNAGENT_SERVER_URL` and `VPNAGENT_TOKEN` (plain values). A vantage6
4.x node sets `HOST`, `PORT`, `API_PATH` and `TOKEN_FILE`, each base32-encoded with '='
written as '!' so that no value can carry shell syntax into the container; vantage6's
`wrap_algorithm` decodes them in place, so a value that does not decode is already plain.
Identity comes from the token's `sub` claim, read without verifying the signature: the
token is the server's statement of who the run is, and only the server checks it.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Mapping

from .errors import AlgorithmClientError

ENV_EQUALS_REPLACEMENT = "!"  # vantage6 writes base32's '=' padding as '!'
DEFAULT_API_PATH = "/api"  # vantage6's client default when no API_PATH is given


def decode_env_value(value: str) -> str:
    """A value as a vantage6 node encodes it (base32, '=' as '!'), decoded; a value that is
    not such an encoding is returned unchanged, as vantage6's `get_env_var` does."""
    try:
        return base64.b32decode(value.replace(ENV_EQUALS_REPLACEMENT, "=").encode()).decode()
    except (binascii.Error, ValueError):  # ValueError covers non-ASCII and non-UTF-8 results
        return value


def get_env_var(name: str, default: str | None = None,
                environ: Mapping[str, str] | None = None) -> str | None:
    """`os.environ[name]` decoded the vantage6 node way, or `default` when unset."""
    env = os.environ if environ is None else environ
    if name not in env:
        return default
    return decode_env_value(env[name])


def token_claims(token: str) -> dict[str, Any]:
    """The `sub` claim of a JWT as a dict, without verifying the signature; {} for anything
    that is not a JWT with a dict `sub` (an opaque token is fine: identity then comes from
    the environment)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (binascii.Error, ValueError):
        return {}
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, dict) else {}


def server_url(host: str, port: str | int | None, path: str | None) -> str:
    """vantage6's base path: `<host>:<port><path>`, the port left out when empty."""
    path = DEFAULT_API_PATH if path is None else path
    host = host.rstrip("/")
    return f"{host}:{port}{path}" if port not in (None, "") else f"{host}{path}"


def url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """`VPNAGENT_SERVER_URL`, else vantage6's `HOST`, `PORT` and `API_PATH`."""
    env = os.environ if environ is None else environ
    if env.get("VPNAGENT_SERVER_URL"):
        return env["VPNAGENT_SERVER_URL"]
    host = get_env_var("HOST", environ=env)
    if not host:
        raise AlgorithmClientError("no server URL: pass server_url=, or set VPNAGENT_SERVER_URL (a vpnagent node "
                                   "does) or HOST, PORT and API_PATH (a vantage6 node does)")
    return server_url(host, get_env_var("PORT", environ=env), get_env_var("API_PATH", environ=env))


def token_from_env(environ: Mapping[str, str] | None = None) -> str:
    """`VPNAGENT_TOKEN`, else the contents of the file `TOKEN_FILE` names."""
    env = os.environ if environ is None else environ
    if env.get("VPNAGENT_TOKEN"):
        return env["VPNAGENT_TOKEN"]
    path = get_env_var("TOKEN_FILE", environ=env)
    if not path:
        raise AlgorithmClientError("no token: pass token=, or set VPNAGENT_TOKEN (a vpnagent node does) or "
                                   "TOKEN_FILE (a vantage6 node does)")
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise AlgorithmClientError(f"cannot read the token file {path} named by TOKEN_FILE ({exc}); is the "
                                   "run's task folder mounted?") from None
    if not token:
        raise AlgorithmClientError(f"the token file {path} named by TOKEN_FILE is empty")
    return token


def env_int(name: str, environ: Mapping[str, str] | None = None) -> int | None:
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        return None
