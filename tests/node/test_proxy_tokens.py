"""The node proxy keeps a long run's access alive: a container token of the run whose holder
sent the call is swapped for that run's current token; every other Authorization header
reaches the server as sent. Tokens are issued by the server's own TokenService, so the
claim decode is tested against the format the server really issues."""
from __future__ import annotations

import base64
import json
import logging

import pytest
import requests

from server_ext.tokens import TokenService
from tests.node.test_proxy import _get, make_proxy, raw_request, upstream  # noqa: F401 - fixtures
from vpnagent.proxy import token_run_id

SECRET = "s" * 32
RUN, OTHER_RUN = 7, 8


def _sub(run_id: int) -> dict:
    return {"client_type": "container", "node_id": 1, "organization_id": 2, "collaboration_id": 3,
            "task_id": 40 + run_id, "run_id": run_id, "image": "algo", "databases": []}


def container_token(run_id: int, lifetime: int = 6 * 60 * 60) -> str:
    return TokenService(SECRET, {"container": lifetime}).issue("container", _sub(run_id))


def _forged(payload: object) -> str:
    """A JWT-shaped token with `payload` as its claims (no valid signature)."""
    middle = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{middle}.c2ln"


# --- the claim decode ---------------------------------------------------------------------

def test_a_container_token_names_its_run():
    assert token_run_id(f"Bearer {container_token(RUN)}") == RUN


def test_an_expired_container_token_still_names_its_run():
    """Expiry is the server's business; the run outliving its token is the point."""
    assert token_run_id(f"Bearer {container_token(RUN, lifetime=-3600)}") == RUN


def test_the_signature_is_not_checked():
    """The node cannot check it (no secret); what this decides is safe either way."""
    assert token_run_id(f"Bearer {_forged({'kind': 'container', 'sub': {'run_id': RUN}})}") == RUN


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", f"bearer {container_token(RUN)}",
    "Bearer opaque-token", "Bearer a.b", "Bearer a.b.c.d", "Bearer a.!!!.c", "Bearer a.e30.c.",
    "Bearer a.bm90IGpzb24.c",  # base64 of 'not json'
    "Bearer a._-8.c",  # base64 of bytes that are not UTF-8
    "Bearer a." + base64.urlsafe_b64encode(b"[" * 20000).decode() + ".c",  # nested past Python's recursion limit
    f"Bearer {_forged([1, 2])}", f"Bearer {_forged('container')}", f"Bearer {_forged(None)}",
], ids=lambda h: (h or repr(h))[:30])
def test_garbage_names_no_run(header):
    assert token_run_id(header) is None


@pytest.mark.parametrize("kind", ["node", "user", None, "Container"])
def test_other_kinds_of_token_name_no_run(kind):
    assert token_run_id(f"Bearer {_forged({'kind': kind, 'sub': {'run_id': RUN}})}") is None
    if kind in ("node", "user"):
        real = TokenService(SECRET).issue(kind, {"run_id": RUN, "node_id": 1})
        assert token_run_id(f"Bearer {real}") is None


@pytest.mark.parametrize("sub", [{}, {"task_id": 47}, {"run_id": None}, {"run_id": "7"}, {"run_id": 7.0},
                                 {"run_id": True}, {"run_id": [7]}, "run_id=7", None])
def test_a_container_token_without_an_integer_run_id_names_no_run(sub):
    assert token_run_id(f"Bearer {_forged({'kind': 'container', 'sub': sub})}") is None


# --- through the proxy --------------------------------------------------------------------

@pytest.fixture
def holders():
    """The agent's side of `fresh_token`: holder address -> (run id, current token); the
    addresses it was asked about."""
    table = {"127.0.0.1": (RUN, container_token(RUN))}
    asked: list[str] = []

    def fresh_token(client_ip: str, run_id: int) -> str | None:
        asked.append(client_ip)
        found = table.get(client_ip)
        return found[1] if found and found[0] == run_id else None

    fresh_token.table, fresh_token.asked = table, asked  # type: ignore[attr-defined]
    return fresh_token


@pytest.fixture
def through(make_proxy, upstream, holders):  # noqa: F811 - pytest fixtures by name
    """Make one call from `source` with `token`; the Authorization header the server got."""
    proxy = make_proxy(fresh_token=holders)

    def send(token: str | None, source: str = "127.0.0.1") -> str | None:
        before = len(upstream.seen)
        headers = [f"Authorization: Bearer {token}".encode()] if token else []
        assert raw_request(proxy, _get("/api/task/47", *headers), source=source)[0] == 200
        assert len(upstream.seen) == before + 1
        return upstream.seen[-1]["headers"].get("Authorization")

    return send


def test_the_runs_own_token_is_replaced_by_its_current_one(through, holders):
    expired = container_token(RUN, lifetime=-60)
    assert through(expired) == f"Bearer {holders.table['127.0.0.1'][1]}"
    assert holders.asked == ["127.0.0.1"]


def test_a_token_of_another_run_passes_unchanged(through, holders):
    """A container that got hold of another run's token does not get that run refreshed."""
    other = container_token(OTHER_RUN, lifetime=-60)
    assert through(other) == f"Bearer {other}"


def test_the_runs_token_from_another_address_passes_unchanged(through, holders):
    """A stolen token is only ever refreshed for calls from its own run's holder."""
    stolen = container_token(RUN, lifetime=-60)
    assert through(stolen, source="127.0.0.2") == f"Bearer {stolen}"
    assert holders.asked == ["127.0.0.2"]


def test_no_run_at_the_address_passes_the_token_unchanged(through, holders):
    holders.table.clear()  # e.g. the run ended
    own = container_token(RUN, lifetime=-60)
    assert through(own) == f"Bearer {own}"


def test_no_authorization_header_gets_none_added(through, holders):
    assert through(None) is None
    assert holders.asked == []  # nothing to refresh: the agent is not even asked


@pytest.mark.parametrize("token", [_forged({"kind": "node", "sub": {"run_id": RUN}}), "opaque", "a.b.c"])
def test_tokens_that_name_no_run_pass_unchanged(through, holders, token):
    assert through(token) == f"Bearer {token}"
    assert holders.asked == []


def test_a_failing_lookup_sends_the_token_as_it_came(make_proxy, upstream):  # noqa: F811
    def broken(_client_ip: str, _run_id: int) -> str | None:
        raise RuntimeError("agent busy")

    p = make_proxy(fresh_token=broken)
    own = container_token(RUN)
    r = requests.get(f"{p.url}/task/47", headers={"Authorization": f"Bearer {own}"}, timeout=5)
    assert r.status_code == 200 and upstream.seen[-1]["headers"]["Authorization"] == f"Bearer {own}"


def test_tokens_never_reach_the_log(through, holders, caplog):
    own = container_token(RUN, lifetime=-60)
    with caplog.at_level(logging.DEBUG):
        through(own)
        through(container_token(OTHER_RUN))
    fresh = holders.table["127.0.0.1"][1]
    assert "run 7's current token" in caplog.text  # the swap is visible, as a run id
    for token in (own, fresh):
        for part in token.split("."):
            assert part not in caplog.text
