"""The API as an OpenAPI 3.1 document, served at /api/openapi.json and kept in
docs/openapi.json (a test checks both are the same). Written next to the validators in
api.py: the bodies here are the ones `body()` accepts, no more."""
from __future__ import annotations

from typing import Any

from .config import DATA_PLANES
from .store import NODE_REPORTS, RUN_STATES
from .wireguard import MAX_ENDPOINTS

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


def _port_post() -> dict:
    op = _op("Register a port of an active run (201); the same registration again confirms it (200)", "node",
             _obj({"run_id": INT, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                   "label": {"type": "string", "minLength": 1, "maxLength": 64}}, ["run_id", "port"]),
             ok="201", errors=("400", "401", "403", "404", "409", "413"))
    op["responses"]["200"] = op["responses"]["201"]
    return op


def _q(name: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema}


INT = {"type": "integer", "minimum": 0}
# vantage6's reading: any non-empty value turns a flag on ("false" and "0" too).
FLAG_Q = {"type": "string", "description": "on when non-empty, whatever the value; absent or empty: off"}
PAGE = _q("page", {"type": "integer", "minimum": 1})


def _path_id(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": INT}


RUN_ID, TASK_ID = _path_id("run_id"), _path_id("task_id")
CONTRACT = {"type": "string", "enum": ["vpnagent", "vantage6"]}
V6_ORG = _obj({"id": INT, "input": {"type": "string", "contentEncoding": "base64",
                                    "description": "base64 of the UTF-8 JSON input (unencrypted)"}}, ["id", "input"])
PLANE_SETTING = {"type": "string", "enum": [*DATA_PLANES, "default"],
                 "description": "default: the server config's data_plane"}
WIREGUARD_PUT = _obj({
    "public_key": {"type": "string", "minLength": 44, "maxLength": 44, "contentEncoding": "base64",
                   "description": "standard base64 of the 32-byte WireGuard public key"},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "endpoints": {"type": "array", "maxItems": MAX_ENDPOINTS, "items": {
        "type": "string", "description": "IPv4:port outside the VPN subnet (not loopback, unspecified, multicast, "
                                         "broadcast or link-local)"}}}, ["public_key", "port"])
DATABASES = {"type": "array", "maxItems": 100, "items": {
    "type": "object", "properties": {"label": {"type": "string", "minLength": 1, "maxLength": 128}},
    "required": ["label"]}}


def _admin_paths() -> dict:
    """/admin: the admin commands over HTTP (server_ext/adminapi.py); admin tokens only."""
    def op(summary: str, body: dict | None = None, params: list | None = None, ok: str = "200",
           errors: tuple[str, ...] = ("400", "401", "403", "404", "413")) -> dict:
        return _op(summary, "admin", body, params, ok, errors)

    name = {"type": "string", "minLength": 1, "maxLength": 64, "description": "see the name rules in "
            "docs/operator-guide.md"}
    changes = ("400", "401", "403", "404", "409", "413")
    org_q, collab_q = _q("organization_id", INT), _q("collaboration_id", INT)
    org_id, collab_id = _path_id("organization_id"), _path_id("collaboration_id")
    node_id, user_id = _path_id("node_id"), _path_id("user_id")
    return {
        "/token/admin": {"post": _op("Admin token from an admin's API key (vpnagent-server add-admin)", None,
                                     _obj({"api_key": {"type": "string"}}, ["api_key"]))},
        "/admin/organization": {
            "get": op("Every organisation with its collaborations"),
            "post": op("Create an organisation (201)", _obj({"name": name}, ["name"]), ok="201", errors=changes)},
        "/admin/organization/{organization_id}": {
            "get": op("An organisation with its collaborations, nodes and researchers", params=[org_id]),
            "delete": op("Remove every node and researcher of an organisation", params=[org_id])},
        "/admin/collaboration": {
            "get": op("Every collaboration with its organisations and data plane"),
            "post": op("Create a collaboration of organisations (201)", _obj({
                "name": name, "organizations": {"type": "array", "minItems": 1, "maxItems": 1000, "items": INT},
                "data_plane": PLANE_SETTING}, ["name", "organizations"]), ok="201", errors=changes)},
        "/admin/collaboration/{collaboration_id}": {
            "get": op("A collaboration with its organisations, data plane, nodes and number of tasks",
                      params=[collab_id]),
            "patch": op("Move a collaboration to a data plane; every node of it is told at once",
                        _obj({"data_plane": {"oneOf": [PLANE_SETTING, {"type": "null"}]}}, ["data_plane"]),
                        params=[collab_id])},
        "/admin/node": {
            "get": op("Every node (removed ones too), optionally of one organisation or collaboration",
                      params=[org_q, collab_q]),
            "post": op("Create a node (201); the answer holds its API key, once", _obj({
                "name": name, "organization_id": INT, "collaboration_id": INT},
                ["name", "organization_id", "collaboration_id"]), ok="201", errors=changes)},
        "/admin/node/{node_id}": {
            "get": op("A node: organisation, collaboration, VPN IP, last seen, certificates, runs in progress",
                      params=[node_id]),
            "delete": op("Remove a node: key disabled, certificates revoked, VPN session ended", params=[node_id])},
        "/admin/node/{node_id}/key": {"post": op(
            "A new API key for a node, in the answer once; the old key and its tokens stop working",
            params=[node_id], errors=changes)},
        "/admin/user": {
            "get": op("Every researcher (removed ones too), optionally of one organisation", params=[org_q]),
            "post": op("Create a researcher (201); the answer holds its API key, once", _obj({
                "name": name, "organization_id": INT}, ["name", "organization_id"]), ok="201", errors=changes)},
        "/admin/user/{user_id}": {
            "get": op("A researcher with its organisation", params=[user_id]),
            "delete": op("Remove a researcher: its key and tokens stop working", params=[user_id], errors=changes)},
        "/admin/user/{user_id}/key": {"post": op(
            "A new API key for a researcher, in the answer once; the old key and its tokens stop working",
            params=[user_id], errors=changes)},
        "/admin/task": {"get": op("Every task with its status and run states, optionally of one collaboration",
                                  params=[collab_q])},
        "/admin/task/{task_id}": {"get": op("A task with its runs (state, node, times, ports) and subtasks",
                                            params=[TASK_ID])},
    }


def _events_op() -> dict:
    op = _op("This node's event stream (server-sent events): hello, then run / peers / revoked / cert events as "
             "they happen, a keepalive comment every 25 s, bye at the end (docs/api.md)", "node",
             errors=("401", "403", "404", "503"))
    op["responses"]["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    return op


def spec(prefix: str = "/api") -> dict:
    key = _obj({"api_key": {"type": "string"}}, ["api_key"])
    paths = {
        "/token/node": {"post": _op("Node token from the node's API key", None, key)},
        "/token/user": {"post": _op("Researcher token from an API key", None, key)},
        "/token/container": {"post": _op("Container token for one of this node's active runs", "node",
                                         _obj({"run_id": INT}, ["run_id"]))},
        "/health": {"get": _op("Liveness", None, errors=())},
        "/openapi.json": {"get": _op("This document", None, errors=())},
        "/node/ca": {"get": _op("The CA that signs the API's certificate (PEM), for `vpnagent join` to check "
                                "against the pin in its join string", None, errors=())},
        "/node/join": {"post": _op("Spend a join token (single use, expiring) for the node's API key; the node's "
                                   "earlier key stops working", None,
                                   _obj({"token": {"type": "string"}, "name": {"type": "string"}}, ["token", "name"]),
                                   errors=("400", "401", "403", "413"))},
        "/node/self": {"get": _op("The calling node", "node")},
        "/node/events": {"get": _events_op()},
        "/node/peers": {"get": _op("Task families of this node's active runs, with the data plane and each peer's "
                                   "WireGuard key and endpoints", "node", params=[_q("run_id", INT)])},
        "/node/wireguard": {
            "get": _op("This node's WireGuard registration and its collaboration's data plane", "node",
                       errors=("401", "403")),
            "put": _op("Register this node's WireGuard peer (public key, port, endpoints); a change tells the "
                       "nodes of its task families", "node", WIREGUARD_PUT,
                       errors=("400", "401", "403", "409", "413"))},
        "/node/runs": {"post": _op("The runs this node still has; its other initializing or active runs are failed",
                                   "node", _obj({"runs": {"type": "array", "maxItems": 100000, "items": INT}},
                                                ["runs"]), errors=("400", "401", "403", "413"))},
        "/vpn": {"get": _op("A fresh inline OpenVPN client config", "node")},
        "/vpn/update": {"post": _op("Renew: fresh keypair, the given config's certificate revoked", "node",
                                    _obj({"vpn_config": {"type": "string", "maxLength": 65536}}, ["vpn_config"]))},
        "/vpn/algorithm/addresses": {"get": _op(
            "VPN addresses of the caller's task family (vantage6 flags)", "container",
            params=[_q("label", {"type": "string"})] + [_q(f, FLAG_Q) for f in (
                "only_children", "only_parent", "only_siblings", "only_self", "include_children", "include_parent")])},
        "/run": {"get": _op("Node: this node's runs in a state. User or container: a task's runs (vantage6's "
                            "paginated shape)", "node, user or container", params=[_q("state", {
                                "type": "string", "enum": list(RUN_STATES)}),
                                _q("task_id", INT), PAGE])},
        "/run/{run_id}": {
            "get": _op("One run (vantage6's shape)", "user or container", params=[RUN_ID]),
            "patch": _op("Report a run's state and result", "node", _obj({
                "status": {"type": "string", "enum": list(NODE_REPORTS)},
                "result": {}, "log": {"type": "string"}}, ["status"]), params=[RUN_ID],
                errors=("400", "401", "403", "404", "409", "413")),
        },
        "/result": {"get": _op("The runs of a task with their results, base64 JSON (vantage6's paginated shape)",
                               "user or container", params=[_q("task_id", INT, True), PAGE])},
        "/result/{run_id}": {"get": _op("One run with its result, base64 JSON (vantage6's shape)", "user or container",
                                        params=[RUN_ID])},
        "/port": {
            "post": _port_post(),
            "delete": _op("Delete all ports of a run", "node", params=[_q("run_id", INT, True)]),
        },
        "/task": {"post": _op("Create a task: one run per organisation (our body, or vantage6's with one base64 "
                              "input per organisation)", "user or container", _obj({
            "collaboration_id": INT,
            "organizations": {"type": "array", "minItems": 1, "maxItems": 1000,
                              "items": {"oneOf": [INT, V6_ORG]}},
            "image": {"type": "string", "maxLength": 512}, "input": {}, "name": {"type": "string", "maxLength": 256},
            "description": {"type": "string", "maxLength": 10000}, "databases": DATABASES, "contract": CONTRACT,
            "study_id": INT, "store_id": INT},
            ["collaboration_id", "organizations", "image"]), ok="201")},
        "/task/{task_id}": {"get": _op("A task with its runs and results", "user or container", params=[TASK_ID])},
        "/task/{task_id}/status": {"get": _op("A task's status", "user or container", params=[TASK_ID])},
        "/task/{task_id}/kill": {"post": _op("Stop a task and its subtasks: unfinished runs become 'killed by user' "
                                             "and their nodes stop them at once; answers the task and `killed` "
                                             "(run ids)", "user", params=[TASK_ID])},
        "/organization": {"get": _op("Organisations of a collaboration (collaboration_id: required for users, a "
                                     "container's own by default)", "user or container",
                                     params=[_q("collaboration_id", INT), PAGE])},
        "/organization/{organization_id}": {"get": _op("An organisation that shares a collaboration with the caller",
                                                       "user or container", params=[_path_id("organization_id")])},
        "/collaboration/{collaboration_id}": {"get": _op("A collaboration of the caller", "user or container",
                                                         params=[_path_id("collaboration_id")])},
        "/blobstream/status": {"get": _op("Whether blob storage is on (never: inputs and results travel inline)",
                                          "node, user or container", errors=("401",))},
        **_admin_paths(),
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
