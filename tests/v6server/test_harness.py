"""The harness itself against the REAL vantage6-server 4.13.7 (tests/v6server/harness.py):
what later tests rely on, checked on vantage6's own answers."""
from __future__ import annotations

import jwt
import pytest
import requests

from tests.v6server.harness import V6Server, v6, world  # noqa: F401 - v6, world: fixtures

pytestmark = pytest.mark.root

IMAGE = "harbor.example.org/vpnagent/echo:1"


def claims(v6: V6Server, token: str) -> dict:
    # checked with the secret the harness gave the server; vantage6's integer `sub` is
    # not a string as PyJWT >= 2.10 wants, so only that check is off
    return jwt.decode(token, v6.jwt_secret, algorithms=["HS256"], options={"verify_sub": False})


def top_task(v6: V6Server, world: dict, orgs: list[int]) -> dict:
    user = world["user"]
    token = v6.call({"cmd": "user_token", "username": user["username"], "password": user["password"]})
    return v6.call({"cmd": "create_task", "user_token": token["access_token"], "organizations": orgs,
                    "image": IMAGE})


def test_the_server_answers_others_between_commands(v6, world):
    # vantage6 monkey-patches with gevent: a driver blocked on its stdin would stop it
    assert requests.get(f"{v6.api}/version", timeout=10).json() == {"version": "4.13.7"}
    r = requests.post(f"{v6.api}/token/node", json={"api_key": world["nodes"][0]["api_key"]}, timeout=10)
    assert r.status_code == 200 and claims(v6, r.json()["access_token"])["sub"] == world["nodes"][0]["id"]


def test_setup_makes_three_nodes_whose_tokens_name_them(v6, world):
    orgs = world["organizations"]
    assert len(set(orgs)) == 3
    assert [n["organization_id"] for n in world["nodes"]] == orgs
    assert len({n["api_key"] for n in world["nodes"]}) == 3 and all(n["api_key"] for n in world["nodes"])
    assert world["user"]["organization_id"] == orgs[0]
    for node in world["nodes"]:
        payload = claims(v6, v6.call({"cmd": "node_token", "api_key": node["api_key"]})["access_token"])
        assert payload["sub"] == node["id"] and isinstance(payload["sub"], int)
        assert payload["client_type"] == "node"


def test_container_token_and_subtask(v6, world):
    node = world["nodes"][0]
    task = top_task(v6, world, world["organizations"][:2])
    assert {r["organization_id"] for r in task["runs"]} == set(world["organizations"][:2])
    token = v6.call({"cmd": "container_token", "node_api_key": node["api_key"], "task_id": task["id"],
                     "image": IMAGE})["container_token"]
    payload = claims(v6, token)
    assert payload["sub"]["task_id"] == task["id"]
    assert payload["sub"]["organization_id"] == node["organization_id"]
    assert payload["sub"]["node_id"] == node["id"]
    assert "exp" not in payload, "vantage6 container tokens do not expire"
    sub = v6.call({"cmd": "create_subtask", "container_token": token, "organizations": world["organizations"],
                   "image": IMAGE})
    assert sub["parent"]["id"] == task["id"]
    assert sorted(r["organization_id"] for r in sub["runs"]) == sorted(world["organizations"])


def test_vantage6_addresses_give_the_registered_port_at_the_node_ip(v6, world):
    node = world["nodes"][1]
    task = top_task(v6, world, [node["organization_id"]])
    (run,) = task["runs"]
    v6.call({"cmd": "set_run", "node_api_key": node["api_key"], "run_id": run["id"], "status": "active"})
    v6.call({"cmd": "set_node_ip", "node_api_key": node["api_key"], "node_id": node["id"], "ip": "10.76.3.9"})
    v6.call({"cmd": "add_port", "node_api_key": node["api_key"], "run_id": run["id"], "port": 7123,
             "label": "echo"})
    token = v6.call({"cmd": "container_token", "node_api_key": node["api_key"], "task_id": task["id"],
                     "image": IMAGE})["container_token"]
    got = v6.call({"cmd": "addresses", "container_token": token, "params": {}})
    assert got["status"] == 200, got
    assert got["body"]["addresses"] == [{"port": 7123, "label": "echo", "ip": "10.76.3.9",
                                         "organization_id": node["organization_id"], "task_id": task["id"],
                                         "parent_id": None}]


def test_real_node_client_reaches_the_server(v6, world):
    # no VPN server configured: vantage6 answers /vpn with 501, which NodeClient reports as
    # not ok; authenticating and asking took its real code path
    got = v6.call({"cmd": "node_client_vpn", "url": f"http://127.0.0.1:{v6.port}", "api_path": "/api",
                   "api_key": world["nodes"][2]["api_key"]})
    assert got == {"ok": False, "ovpn_config": ""}


def test_deleted_node_cannot_get_a_token(v6):
    other = v6.call({"cmd": "setup"})  # its own world: the module's nodes stay
    node = other["nodes"][2]
    v6.call({"cmd": "node_token", "api_key": node["api_key"]})
    assert v6.call({"cmd": "delete_node", "node_id": node["id"]})["status"] == 200
    failed = v6.call({"cmd": "node_token", "api_key": node["api_key"]}, check=False)
    assert "401" in failed["error"] and "Api key is not recognized" in failed["error"]


def test_a_bad_command_is_answered_and_the_driver_goes_on(v6, world):
    assert "unknown command" in v6.call({"cmd": "no such thing"}, check=False)["error"]
    assert "needs key" in v6.call({"cmd": "node_token"}, check=False)["error"]
    with pytest.raises(AssertionError, match="unknown command"):
        v6.call({"cmd": "no such thing"})
    assert v6.call({"cmd": "node_token", "api_key": world["nodes"][0]["api_key"]})["access_token"]
