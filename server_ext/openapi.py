"""The API as an OpenAPI 3.1 document, served at /api/openapi.json and kept in
docs/openapi.json (a test checks both are the same). Written next to the validators in
api.py: the bodies here are the ones `body()` accepts, no more."""
from __future__ import annotations

from typing import Any

ERR = {"$ref": "#/components/responses/Error"}
BEARER = [{"bearer": []}]


def _obj(props: dict[str, Any], required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _op(summary: str, who: str | None, body: dict | None = None, params: list | None = None,
        ok: str = "200", errors: tuple[str, ...] = ("400", "401", "403", "404", "413")) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {ok: {"description": "OK", "content": {
        "application/json": {"schema": {"type": "object"}}}}}}
    if who:
        op["security"] = BEARER
        op["description"] = f"Token kind: {who}."
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    for code in errors:
        op["responses"][code] = ERR
    return op


def _q(name: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema}


INT = {"type": "integer", "minimum": 0}
BOOL_Q = {"type": "string", "enum": ["true", "false", "1", "0"]}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": INT}
TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": INT}


def spec(prefix: str = "/api") -> dict:
    key = _obj({"api_key": {"type": "string"}}, ["api_key"])
    paths = {
        "/token/node": {"post": _op("Node token from the node's API key", None, key)},
        "/token/user": {"post": _op("Researcher token from an API key", None, key)},
        "/token/container": {"post": _op("Container token for one of this node's active runs", "node",
                                         _obj({"run_id": INT}, ["run_id"]))},
        "/health": {"get": _op("Liveness", None, errors=())},
        "/openapi.json": {"get": _op("This document", None, errors=())},
        "/node/self": {"get": _op("The calling node", "node")},
        "/node/peers": {"get": _op("Task families of this node's active runs", "node", params=[_q("run_id", INT)])},
        "/vpn": {"get": _op("A fresh inline OpenVPN client config", "node")},
        "/vpn/update": {"post": _op("Renew: fresh keypair, the given config's certificate revoked", "node",
                                    _obj({"vpn_config": {"type": "string", "maxLength": 65536}}, ["vpn_config"]))},
        "/vpn/algorithm/addresses": {"get": _op(
            "VPN addresses of the caller's task family (vantage6 flags)", "container",
            params=[_q("label", {"type": "string"})] + [_q(f, BOOL_Q) for f in (
                "only_children", "only_parent", "only_siblings", "only_self", "include_children", "include_parent")])},
        "/run": {"get": _op("This node's runs in a state", "node", params=[_q("state", {
            "type": "string", "enum": ["pending", "initializing", "active", "completed", "failed"]})])},
        "/run/{run_id}": {"patch": _op("Report a run's state and result", "node", _obj({
            "status": {"type": "string", "enum": ["initializing", "active", "completed", "failed"]},
            "result": {}, "log": {"type": "string"}}, ["status"]), params=[RUN_ID],
            errors=("400", "401", "403", "404", "409", "413"))},
        "/port": {
            "post": _op("Register a port of an active run", "node", _obj({
                "run_id": INT, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "label": {"type": "string", "minLength": 1, "maxLength": 64}}, ["run_id", "port"]),
                ok="201", errors=("400", "401", "403", "404", "409", "413")),
            "delete": _op("Delete all ports of a run", "node", params=[_q("run_id", INT, True)]),
        },
        "/task": {"post": _op("Create a task: one run per organisation", "user or container", _obj({
            "collaboration_id": INT, "organizations": {"type": "array", "items": INT, "minItems": 1, "maxItems": 1000},
            "image": {"type": "string", "maxLength": 512}, "input": {}, "name": {"type": "string", "maxLength": 256}},
            ["collaboration_id", "organizations", "image"]), ok="201")},
        "/task/{task_id}": {"get": _op("A task with its runs and results", "user or container", params=[TASK_ID])},
        "/organization": {"get": _op("Organisations of a collaboration", "user or container",
                                     params=[_q("collaboration_id", INT, True)])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "vpnagent server API", "version": "1",
                 "description": "See docs/api.md. Errors are {\"msg\": ...}; bodies over 64 KiB get 413."},
        "servers": [{"url": prefix}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {"Error": {"description": "Error with the reason and the fix", "content": {
                "application/json": {"schema": _obj({"msg": {"type": "string"}}, ["msg"])}}}},
        },
    }
