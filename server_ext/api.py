"""The HTTP API (docs/api.md) as a Flask Blueprint. Each request is one short transaction:
input is validated first and any error rolls everything back, so a rejected request never
changes the store."""
from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import logging
from typing import Any, Callable, NoReturn
from urllib.parse import urlencode

from flask import Blueprint, current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, default_exceptions
from werkzeug.routing import Map

from .addresses import FLAGS, AddressQuery, AddressQueryError, flag_is_set, select_runs
from .config import setting
from .inputs import InputError, check_id, check_ids, check_text, parse_id, parse_json
from .taskbody import task_databases, task_organizations
from .ovpn import render_client
from .pki import PKIError, cert_from_ovpn, common_name
from .store import (ACTIVE_STATES, CONTRACTS, FINAL_STATES, KILLED, NODE_REPORTS, RUN_STATES, TAKEN_STATES, Certificate, Collaboration,
                    Node, Organization, Port, Run, StoreError, Task, User, hash_key)
from .directory import Refused
from .tokens import Identity, TokenError
from . import wireguard

bp = Blueprint("vpnagent", __name__)
log = logging.getLogger(__name__)

UNMATCHED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

MAX_LOG = 20_000  # characters of a run's log kept: its tail, where the error is
MAX_HELD_RUNS = 100_000  # runs a node may say it holds in one POST /node/runs


class ApiError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


def _api_error(exc: ApiError):
    return jsonify(msg=exc.msg), exc.status


def _input_error(exc: InputError):
    return jsonify(msg=str(exc)), 400


def _http_error(exc: HTTPException):
    msg = {413: f"request body larger than {_size(setting(current_app.config, 'max_body'))}",
           404: "no such endpoint", 405: "method not allowed here"}
    response = jsonify(msg=msg.get(exc.code, exc.description))
    if exc.code == 405 and isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response, exc.code


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


def _bounded_and_ready() -> None:
    """This API's body limit on its routes only (a host app's may take more), and a clear
    503 until the migrate command has set the extension up."""
    request.max_content_length = setting(current_app.config, "max_body")
    try:
        reason = ext().not_ready()
    except StoreError as exc:  # the database is unreachable: say so, as JSON
        raise ApiError(503, str(exc)) from None
    if reason:
        raise ApiError(503, reason)


def json_api(blueprint: Blueprint) -> None:
    """Make `blueprint` one of this extension's APIs: JSON errors, the body limit, a 503
    until set up, and a JSON 404/405 for any path under its prefix that no route takes.
    On the Blueprint, not the app: the host app's own routes keep their own error pages.
    By code as well as by class, because Flask prefers a handler for the code, even the
    host app's, to one for the class."""
    blueprint.register_error_handler(ApiError, _api_error)
    blueprint.register_error_handler(InputError, _input_error)
    blueprint.register_error_handler(HTTPException, _http_error)
    for code in default_exceptions:
        blueprint.register_error_handler(code, _http_error)
    blueprint.before_request(_bounded_and_ready)

    def unmatched(_rest: str) -> NoReturn:
        """Flask hands routing errors to app-wide handlers only, which belong to the host
        app; this route makes them the API's own."""
        raise _routing_error(blueprint.name)

    blueprint.add_url_rule("/<path:_rest>", "_unmatched", unmatched, methods=UNMATCHED_METHODS)


def _routing_error(name: str) -> HTTPException:
    rules = [rule.empty() for rule in current_app.url_map.iter_rules()
             if rule.endpoint.startswith(f"{name}.") and rule.endpoint != f"{name}._unmatched"]
    adapter = Map(rules, converters=current_app.url_map.converters).bind("api")
    try:
        adapter.match(request.path, method=request.method)
    except HTTPException as exc:
        return exc
    return NotFound()


json_api(bp)


@bp.url_value_preprocessor
def _path_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Ids in the path (<int:...>: digits only) must fit the store before a view sees them."""
    for name, value in (values or {}).items():
        if isinstance(value, int):
            check_id(f"path parameter '{name}'", value)


def ext():
    return current_app.extensions["vpnagent"]


# ---------------------------------------------------------------- input validation
def body(**fields: tuple[type | tuple[type, ...], bool]) -> dict[str, Any]:
    """The JSON object body, checked against {name: (type, required)}; integers must be
    ids the store can hold (inputs.py)."""
    data = parse_json(request.get_data(cache=True)) if request.is_json else None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object (Content-Type: application/json)")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    for name, (typ, required) in fields.items():
        if name not in data or data[name] is None:
            if required:
                raise ApiError(400, f"field '{name}' is required")
            continue
        value = data[name]
        if isinstance(value, bool) and typ is not bool and bool not in (typ if isinstance(typ, tuple) else (typ,)):
            raise ApiError(400, f"field '{name}' has the wrong type")
        if typ is not object and not isinstance(value, typ):
            raise ApiError(400, f"field '{name}' has the wrong type")
        if typ is int:
            check_id(f"field '{name}'", value)
    return data


def int_arg(name: str, required: bool = True) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        if required:
            raise ApiError(400, f"query parameter '{name}' is required")
        return None
    return parse_id(f"query parameter '{name}'", raw)


def text_arg(name: str) -> str | None:
    raw = request.args.get(name)
    return None if raw is None else check_text(f"query parameter '{name}'", raw)


# ---------------------------------------------------------------- auth
def requires(*kinds: str) -> Callable:
    """Bearer token of one of `kinds`, valid now by the app's directory (directory.py);
    sets g.identity. Container tokens die with their run."""
    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                raise ApiError(401, "missing 'Authorization: Bearer <token>' header")
            directory = ext().directory
            try:
                ident = directory.identify(header[7:].strip())
            except TokenError as exc:
                raise ApiError(401, str(exc)) from None
            if ident.kind not in kinds:
                raise ApiError(403, f"a {ident.kind} token cannot use this endpoint (needs: {', '.join(kinds)})")
            with ext().store.session() as s:
                g.session = s
                try:
                    ident = directory.check(s, ident)
                except Refused as exc:
                    raise ApiError(exc.status, exc.msg) from None
                g.identity = ident
                return fn(s, ident, *args, **kwargs)
        return wrapper
    return deco


def _node(s: Session, ident: Identity) -> Node:
    return s.get(Node, ident["node_id"])


def _own_run(s: Session, ident: Identity, run_id: int) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise ApiError(404, f"run {run_id} does not exist")
    if run.node_id != ident["node_id"]:
        raise ApiError(403, f"run {run_id} belongs to another node")
    return run


# ---------------------------------------------------------------- tokens
@bp.post("/token/node")
def token_node():
    data = body(api_key=(str, True))
    with ext().store.session() as s:
        node = s.scalar(select(Node).where(Node.api_key_hash == hash_key(data["api_key"])))
        if node is None:
            raise ApiError(401, "unknown node API key")
        node.last_seen_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        sub = {"client_type": "node", "node_id": node.id, "organization_id": node.organization_id,
               "collaboration_id": node.collaboration_id, "key_version": node.key_version}
    return jsonify(access_token=ext().tokens.issue("node", sub))


@bp.post("/token/user")
def token_user():
    data = body(api_key=(str, True))
    with ext().store.session() as s:
        user = s.scalar(select(User).where(User.api_key_hash == hash_key(data["api_key"])))
        if user is None:
            raise ApiError(401, "unknown user API key")
        sub = {"client_type": "user", "user_id": user.id, "organization_id": user.organization_id,
               "key_version": user.key_version}
    return jsonify(access_token=ext().tokens.issue("user", sub))


@bp.post("/token/container")
@requires("node")
def token_container(s: Session, ident: Identity):
    data = body(run_id=(int, True))
    run = _own_run(s, ident, data["run_id"])
    if run.status not in ACTIVE_STATES:
        raise ApiError(400, f"run {run.id} is {run.status}; tokens are only issued for active runs")
    task = run.task
    sub = {"client_type": "container", "node_id": run.node_id, "organization_id": run.organization_id,
           "collaboration_id": task.collaboration_id, "task_id": task.id, "run_id": run.id,
           "image": task.image, "databases": list(task.databases or [])}
    return jsonify(container_token=ext().tokens.issue("container", sub))


@bp.get("/health")
def health():
    return jsonify(status="ok")


@bp.get("/openapi.json")
def openapi():
    from .openapi import spec

    return jsonify(spec(setting(current_app.config, "url_prefix")))


# ---------------------------------------------------------------- node
@bp.get("/node/self")
@requires("node")
def node_self(s: Session, ident: Identity):
    info = ext().directory.node(s, ident["node_id"])
    return jsonify(id=info.id, name=info.name, organization_id=info.organization_id,
                   collaboration_id=info.collaboration_id, vpn_ip=_node(s, ident).vpn_ip,
                   vpn_subnet=str(ext().settings.subnet))


# ---------------------------------------------------------------- join (server_ext/join.py)
@bp.get("/node/ca")
def node_ca():
    """The CA that signs the API's certificate. Public: `vpnagent join` reads it before it
    trusts anything and accepts it only when its pin matches the one in the join string."""
    return jsonify(ca_pem=ext().pki.ca_pem)


@bp.post("/node/join")
def node_join():
    """Spend a join token for the node's API key (a new one: the earlier key stops
    working). A refused token changes nothing."""
    from .join import JoinError, redeem

    data = body(token=(str, True), name=(str, True))
    try:
        with ext().store.session() as s:
            node, key = redeem(s, data["token"], data["name"])
            out = {"api_key": key, "node_id": node.id, "name": node.name, "organization_id": node.organization_id,
                   "collaboration_id": node.collaboration_id, "vpn_subnet": str(ext().settings.subnet)}
    except JoinError as exc:
        raise ApiError(exc.status, str(exc)) from None
    log.info("node %s (%s) joined with a join token; its API key was replaced", out["node_id"], out["name"])
    return jsonify(out)


def issue_config(s: Session, node: Node) -> str:
    """A fresh config for `node` (GET /vpn): its VPN IP, allocated once, and a new
    certificate; any it held before is revoked."""
    e = ext()
    ip = e.store.allocate_vpn_ip(s, node, e.settings.subnet, e.settings.slices)
    e.files.write_ccd(node.common_name, ip)
    # One valid certificate per node: whatever it held before is revoked with this issue,
    # so retries and renewals leave no usable spares behind.
    older = list(s.scalars(select(Certificate).where(Certificate.node_id == node.id,
                                                     Certificate.revoked_at.is_(None))))
    issued = e.pki.issue_node_cert(node.common_name, e.cert_days)
    s.add(Certificate(node_id=node.id, serial=str(issued.serial), not_after=issued.not_after.replace(tzinfo=None)))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for cert in older:
        cert.revoked_at = now
    s.flush()
    if older:
        e.files.write_crl(e.store.revoked_serials(s))
    return render_client(e.settings, e.pki.ca_pem, issued.cert_pem, issued.key_pem,
                         e.pki.tls_crypt_v2_client_key(node.common_name), index=e.settings.process_of(ip))


@bp.get("/vpn")
@requires("node")
def vpn_get(s: Session, ident: Identity):
    return jsonify(ovpn_config=issue_config(s, _node(s, ident)))


@bp.post("/vpn/update")
@requires("node")
def vpn_update(s: Session, ident: Identity):
    data = body(vpn_config=(str, True))
    return jsonify(ovpn_config=renew_config(s, _node(s, ident), data["vpn_config"]))


def renew_config(s: Session, node: Node, vpn_config: str) -> str:
    """POST /vpn/update: a fresh config for the node whose current config `vpn_config` is;
    the presented certificate is revoked with it."""
    try:
        cert = ext().pki.verify_issued(cert_from_ovpn(vpn_config))
    except PKIError as exc:
        if "not issued" in str(exc):
            raise ApiError(403, f"{exc}; fetch a fresh config with GET /vpn") from None
        raise ApiError(400, f"vpn_config is not a usable OpenVPN config: {exc}") from None
    record = s.scalar(select(Certificate).where(Certificate.serial == str(cert.serial_number)))
    if record is None or record.node_id != node.id or common_name(cert) != node.common_name:
        raise ApiError(403, "this config belongs to another node; a node can only renew its own")
    if record.revoked_at is not None:
        raise ApiError(403, "this certificate was revoked; fetch a fresh config with GET /vpn")
    return issue_config(s, node)


# ---------------------------------------------------------------- runs and ports
def _run_json(run: Run) -> dict:
    """A run as its node sees it: what to start, with which input, under which contract."""
    task = run.task
    return {"id": run.id, "task_id": run.task_id, "organization_id": run.organization_id, "node_id": run.node_id,
            "status": run.status, "image": task.image, "input": run.input if run.input is not None else task.input,
            "parent_id": task.parent_id, "collaboration_id": task.collaboration_id, "contract": task.contract,
            "databases": list(task.databases or [])}


@bp.get("/run")
@requires("node", "user", "container")
def runs_list(s: Session, ident: Identity):
    """Nodes: their runs in a state (what to start). Researchers and algorithms: the runs of
    a task, in vantage6's paginated shape."""
    if ident.kind != "node":
        task = _visible_task(s, ident, int_arg("task_id"))
        return _paginated([_run_object(r) for r in task.runs])
    state = request.args.get("state", "pending")
    if state not in RUN_STATES:
        raise ApiError(400, f"state must be one of {', '.join(RUN_STATES)}")
    runs = s.scalars(select(Run).where(Run.node_id == ident["node_id"], Run.status == state).order_by(Run.id))
    return jsonify(runs=[_run_json(r) for r in runs])


@bp.get("/run/<int:run_id>")
@requires("user", "container")
def run_get(s: Session, ident: Identity, run_id: int):
    return jsonify(_run_object(_visible_run(s, ident, run_id)))


@bp.patch("/run/<int:run_id>")
@requires("node")
def run_update(s: Session, ident: Identity, run_id: int):
    data = body(status=(str, True), result=(object, False), log=(str, False))
    if data["status"] not in NODE_REPORTS:
        raise ApiError(400, f"status must be one of {', '.join(NODE_REPORTS)}")
    run = _own_run(s, ident, run_id)
    if run.status in FINAL_STATES:
        if data["status"] == run.status:
            # A node delivers final reports at least once (its journal outlives lost
            # answers): the repeat confirms what is stored, and the first report stands.
            return jsonify(_run_json(run))
        raise ApiError(409, f"run {run_id} is already {run.status}; a finished run keeps its state (repeating "
                            f"'{run.status}' is accepted and changes nothing)")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    run.status = data["status"]
    if "result" in data:
        run.result = data["result"]
    if data.get("log") is not None:
        run.log = data["log"][-MAX_LOG:]
    if run.status in FINAL_STATES:
        _finish(run, now)
    elif run.started_at is None:
        run.started_at = now
    s.flush()
    return jsonify(_run_json(run))


def _finish(run: Run, now: dt.datetime) -> None:
    run.finished_at = now
    run.ports.clear()  # a finished run has no address any more


@bp.post("/port")
@requires("node")
def port_add(s: Session, ident: Identity):
    data = body(run_id=(int, True), port=(int, True), label=(str, False))
    if not 1 <= data["port"] <= 65535:
        raise ApiError(400, "port must be within 1-65535")
    label = data.get("label")
    if label is not None and not (0 < len(label) <= 64):
        raise ApiError(400, "label must be 1-64 characters")
    run = _own_run(s, ident, data["run_id"])
    if run.status not in ACTIVE_STATES:
        raise ApiError(400, f"run {run.id} is {run.status}; ports can only be registered for active runs")
    if _node(s, ident).vpn_ip is None:
        raise ApiError(409, "this node has no VPN IP yet; fetch its VPN config (GET /vpn) first")
    # at least once: a node repeats a registration whose answer it never got; the repeat
    # confirms the record instead of adding a second one
    found = s.scalar(select(Port).where(Port.run_id == run.id, Port.port == data["port"]))
    if found is not None and found.label == label:
        return jsonify(id=found.id, run_id=found.run_id, port=found.port, label=found.label), 200
    port = Port(run_id=run.id, port=data["port"], label=label)
    s.add(port)
    s.flush()
    return jsonify(id=port.id, run_id=port.run_id, port=port.port, label=port.label), 201


@bp.delete("/port")
@requires("node")
def port_delete(s: Session, ident: Identity):
    run = _own_run(s, ident, int_arg("run_id"))
    count = len(run.ports)
    run.ports.clear()
    return jsonify(deleted=count)


# ---------------------------------------------------------------- isolation
@bp.get("/node/peers")
@requires("node")
def node_peers(s: Session, ident: Identity):
    """For each active run of this node, the runs of its task family with their node's VPN
    IP and ports: the node turns this into allow rules (deny by default)."""
    stmt = select(Run).where(Run.node_id == ident["node_id"], Run.status.in_(ACTIVE_STATES)).order_by(Run.id)
    run_id = int_arg("run_id", required=False)
    if run_id is not None:
        stmt = stmt.where(Run.id == run_id)
    mine = s.scalars(stmt)
    plane = _plane(s, _node(s, ident))
    out = []
    for run in mine:
        fam = ext().directory.family(s, run.task_id)
        # the ports of every peer run in one more query, not one per run (selectinload); a
        # removed node's runs are no peers, whatever state they were left in
        rows = s.execute(select(Run, Node).join(Node, Run.node_id == Node.id).options(selectinload(Run.ports))
                         .where(Run.task_id.in_(fam), Run.status.in_(ACTIVE_STATES), Node.removed_at.is_(None))
                         .order_by(Run.id))
        peers = [{"run_id": r.id, "node_id": n.id, "ip": n.vpn_ip, "ports": sorted(p.port for p in r.ports),
                  "wireguard": wireguard.peer_entry(n, plane, ident["node_id"])}
                 for r, n in rows if n.vpn_ip]
        out.append({"run_id": run.id, "peers": peers})
    return jsonify(data_plane=plane, runs=out)


def _plane(s: Session, node: Node) -> str:
    """The data plane of the node's collaboration (its own, else the server's)."""
    return wireguard.plane_of(s.get(Collaboration, node.collaboration_id), ext().data_plane)


@bp.get("/node/wireguard")
@requires("node")
def node_wireguard_get(s: Session, ident: Identity):
    node = _node(s, ident)
    return jsonify(wireguard.registration_view(node, _plane(s, node)))


@bp.put("/node/wireguard")
@requires("node")
def node_wireguard_put(s: Session, ident: Identity):
    """The node's WireGuard peer: its public key (it keeps the private one), listen port and
    the endpoints it found for itself. A change tells the nodes that share a task family
    with it (a `peers` event each); the same registration again changes nothing."""
    data = body(public_key=(str, True), port=(int, True), endpoints=(list, False))
    subnet = ext().settings.subnet
    try:
        reg = wireguard.parse_registration(data, subnet)
    except wireguard.RegistrationError as exc:
        raise ApiError(400, str(exc)) from None
    node = _node(s, ident)
    holder = s.scalar(select(Node.id).where(Node.wg_public_key == reg.public_key, Node.id != node.id))
    if holder is not None:
        raise _key_taken(holder)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    if wireguard.register(node, reg, wireguard.seen_ip(request.remote_addr, subnet), now):
        try:
            s.flush()
        except IntegrityError:  # another node registered the key since the check above
            raise _key_taken(None) from None
    return jsonify(wireguard.registration_view(node, _plane(s, node)))


def _key_taken(holder: int | None) -> ApiError:
    who = f"node {holder}" if holder is not None else "another node"
    return ApiError(409, f"this WireGuard public key is registered by {who}; a key names one peer: generate a new "
                         "key pair on this node (`wg genkey`) and register its public key")


@bp.post("/node/runs")
@requires("node")
def node_runs(s: Session, ident: Identity):
    """The node says which of its runs it still has (live, or with a report it has yet to
    deliver); every other run it had taken is lost, so it is failed here, or its task
    would wait for it forever. Pending runs are left alone: the node has not taken them."""
    data = body(runs=(list, True))
    held = set(check_ids("field 'runs'", data["runs"], MAX_HELD_RUNS))
    node = _node(s, ident)
    taken = s.scalars(select(Run).where(Run.node_id == node.id, Run.status.in_(TAKEN_STATES)).order_by(Run.id))
    lost = [run for run in taken if run.id not in held]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    reason = (f"vpnagent: node {node.name} no longer has this run (its agent lost track of it, e.g. its containers "
              "were removed while the agent was down); marked failed by the server")
    for run in lost:
        run.status = "failed"
        run.log = (f"{run.log}\n{reason}" if run.log else reason)[-MAX_LOG:]
        _finish(run, now)
    s.flush()
    if lost:
        log.warning("node %s (%s) no longer has run(s) %s; marked failed", node.id, node.name,
                    ", ".join(str(run.id) for run in lost))
    return jsonify(failed=[run.id for run in lost])


# ---------------------------------------------------------------- addresses
def address_query() -> AddressQuery:
    """The request's address flags and label, read as vantage6 reads them (addresses.py)."""
    try:
        flags = {f: flag_is_set(text_arg(f)) for f in FLAGS}
        return AddressQuery(**flags, label=text_arg("label") or None).validate()
    except AddressQueryError as exc:
        raise ApiError(400, str(exc)) from None


@bp.get("/vpn/algorithm/addresses")
@requires("container")
def addresses(s: Session, ident: Identity):
    """vantage6 4.13.7's rules (server_ext/addresses.py)."""
    q = address_query()
    task = s.get(Task, ident["task_id"])
    sel = select_runs(q, task.id, task.parent_id,
                      lambda: list(s.scalars(select(Task.id).where(Task.parent_id == task.id).order_by(Task.id))))
    stmt = (select(Port, Run, Task, Node).join(Run, Port.run_id == Run.id).join(Task, Run.task_id == Task.id)
            .join(Node, Run.node_id == Node.id).where(Run.status.in_(ACTIVE_STATES), Task.id.in_(sel.task_ids)))
    if sel.organizations == "own":
        stmt = stmt.where(Run.organization_id == ident["organization_id"])
    elif sel.organizations == "others":
        stmt = stmt.where(Run.organization_id != ident["organization_id"])
    if q.label is not None:
        stmt = stmt.where(Port.label == q.label)
    out = [{"ip": node.vpn_ip, "port": port.port, "label": port.label, "organization_id": run.organization_id,
            "task_id": task.id, "parent_id": task.parent_id, "run_id": run.id}
           for port, run, task, node in s.execute(stmt.order_by(Port.id))]
    return jsonify(addresses=out)


# ---------------------------------------------------------------- tasks
def _task_status(task: Task) -> str:
    statuses = [r.status for r in task.runs]
    if statuses and all(st == "completed" for st in statuses):
        return "completed"
    if "failed" in statuses:
        return "failed"
    if KILLED in statuses and not any(st in ACTIVE_STATES for st in statuses):
        return KILLED
    if any(st in ("initializing", "active") for st in statuses):
        return "active"
    return "pending"


def _task_json(task: Task) -> dict:
    return {"id": task.id, "name": task.name, "image": task.image, "collaboration_id": task.collaboration_id,
            "parent_id": task.parent_id, "status": _task_status(task), "contract": task.contract,
            "description": task.description, "databases": list(task.databases or []),
            "runs": [{"id": r.id, "organization_id": r.organization_id, "node_id": r.node_id, "status": r.status,
                      "result": r.result, "log": r.log} for r in task.runs]}


def _may_see_collaboration(s: Session, ident: Identity, collab: Collaboration) -> bool:
    if ident.kind == "container":
        return ident["collaboration_id"] == collab.id
    return bool(ext().directory.members(s, collab.id, [ident["organization_id"]]))


def _job_of(s: Session, task: Task) -> int:
    """The top-level task above `task`: vantage6's job, everything an algorithm started."""
    for _ in range(10_000):  # parents are created before their children: no cycles, but stay bounded
        if task.parent_id is None:
            break
        task = s.get(Task, task.parent_id)
    return task.id


def _visible_task(s: Session, ident: Identity, task_id: int) -> Task:
    """A task the caller may read: an algorithm those of its own job, a researcher those of
    the collaborations of their organisation."""
    task = s.get(Task, task_id)
    if task is None:
        raise ApiError(404, f"task {task_id} does not exist")
    if ident.kind == "container":
        if _job_of(s, task) != _job_of(s, s.get(Task, ident["task_id"])):
            raise ApiError(403, f"task {task_id} is not part of this algorithm's job; an algorithm sees only the "
                                "tasks under its own top-level task")
    elif not _may_see_collaboration(s, ident, s.get(Collaboration, task.collaboration_id)):
        raise ApiError(403, f"task {task_id} belongs to a collaboration you are not in")
    return task


def _visible_run(s: Session, ident: Identity, run_id: int) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise ApiError(404, f"run {run_id} does not exist")
    try:
        _visible_task(s, ident, run.task_id)
    except ApiError as exc:
        raise ApiError(exc.status, f"run {run_id}: {exc.msg}") from None
    return run


@bp.post("/task")
@requires("user", "container")
def task_create(s: Session, ident: Identity):
    """Our body (organizations: [id], one input) or vantage6's (organizations: [{"id",
    "input": base64 JSON}], description, databases); study_id and store_id are ignored."""
    data = body(collaboration_id=(int, True), organizations=(list, True), image=(str, True),
                input=(object, False), name=(str, False), description=(str, False), databases=(list, False),
                contract=(str, False), study_id=(int, False), store_id=(int, False))
    orgs, inputs = task_organizations(data)
    if len(data["image"]) > 512 or len(data.get("name") or "") > 256:
        raise ApiError(400, "image or name too long (image at most 512, name at most 256 characters)")
    if len(data.get("description") or "") > 10_000:
        raise ApiError(400, "description too long (at most 10000 characters)")
    contract = data.get("contract")
    if contract is not None and contract not in CONTRACTS:
        raise ApiError(400, f"contract must be one of {', '.join(CONTRACTS)}")
    databases = task_databases(data.get("databases"))
    collab = s.get(Collaboration, data["collaboration_id"])
    if collab is None:
        raise ApiError(404, f"collaboration {data['collaboration_id']} does not exist")
    if not _may_see_collaboration(s, ident, collab):
        raise ApiError(403, f"you may not create tasks in collaboration {collab.id}")
    parent = None
    if ident.kind == "container":
        if data["image"] != ident["image"]:
            raise ApiError(403, "an algorithm may only create subtasks with its own image")
        parent = s.get(Task, ident["task_id"])
    members = ext().directory.members(s, collab.id, orgs)
    task = Task(name=data.get("name") or "", image=data["image"], collaboration_id=collab.id,
                parent_id=parent.id if parent else None, input=data.get("input"),
                contract=contract or (parent.contract if parent else "vpnagent"),
                description=data.get("description"), databases=databases)
    s.add(task)
    s.flush()
    for org_id in orgs:
        if org_id not in members:
            raise ApiError(400, f"organisation {org_id} is not in collaboration {collab.id}")
        node = s.scalar(select(Node).where(Node.organization_id == org_id, Node.collaboration_id == collab.id))
        if node is None:
            raise ApiError(400, f"organisation {org_id} has no node in collaboration {collab.id}")
        s.add(Run(task_id=task.id, organization_id=org_id, node_id=node.id,
                  input=inputs[org_id] if inputs is not None else None))
    s.flush()
    s.refresh(task)
    return jsonify(_task_json(task)), 201


@bp.get("/task/<int:task_id>")
@requires("user", "container")
def task_get(s: Session, ident: Identity, task_id: int):
    return jsonify(_task_json(_visible_task(s, ident, task_id)))


@bp.post("/task/<int:task_id>/kill")
@requires("user")
def task_kill(s: Session, ident: Identity, task_id: int):
    """Stop a task and every subtask under it: their unfinished runs become 'killed by
    user' (vantage6's state) and their nodes are told at once (a `stop` event) to stop the
    algorithm containers. Runs already finished keep their state; a second kill is a no-op."""
    task = _visible_task(s, ident, task_id)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    who = f"vpnagent: killed by user {ident.claims.get('user_id')} at {now:%Y-%m-%d %H:%M:%S} UTC"
    killed, todo, seen = [], [task], set()
    while todo:
        t = todo.pop()
        if t.id in seen:
            continue
        seen.add(t.id)
        todo.extend(s.scalars(select(Task).where(Task.parent_id == t.id)))
        for run in t.runs:
            if run.status in ACTIVE_STATES:
                run.status = KILLED
                run.log = (f"{run.log}\n{who}" if run.log else who)[-MAX_LOG:]
                _finish(run, now)
                killed.append(run.id)
    s.flush()
    s.refresh(task)
    return jsonify({**_task_json(task), "killed": sorted(killed)})


@bp.get("/task/<int:task_id>/status")
@requires("user", "container")
def task_status(s: Session, ident: Identity, task_id: int):
    """What vantage6's wait_for_results polls."""
    return jsonify(id=task_id, status=_task_status(_visible_task(s, ident, task_id)))


# ---------------------------------------------------------------- results and runs (vantage6's shapes)
def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _run_object(run: Run) -> dict:
    """A run in vantage6's shape. `result` is what its client base64-decodes and json-loads:
    set for completed runs, null for the others (the client skips those)."""
    result = None
    if run.status == "completed":
        result = base64.b64encode(json.dumps(run.result).encode()).decode("ascii")
    return {"id": run.id, "run_id": run.id, "task": {"id": run.task_id}, "organization": {"id": run.organization_id},
            "task_id": run.task_id, "organization_id": run.organization_id, "node_id": run.node_id,
            "status": run.status, "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
            "log": run.log, "result": result}


def _page_url(page: int) -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "page"] + [("page", str(page))]
    return f"{request.path}?{urlencode(args)}"


def _paginated(items: list, **extra: Any):
    """vantage6's list shape. One page holds everything: page 1 has the data, later pages
    none, and there is never a next page (its client stops there)."""
    page = int_arg("page", required=False)
    if page is None:
        page = 1
    if page < 1:
        raise ApiError(400, "query parameter 'page' must be 1 or more")
    links = {"first": _page_url(1), "self": _page_url(page), "previous": None, "next": None, "last": _page_url(1)}
    return jsonify(**extra, data=items if page == 1 else [], links=links)


@bp.get("/result")
@requires("user", "container")
def results_list(s: Session, ident: Identity):
    task = _visible_task(s, ident, int_arg("task_id"))
    return _paginated([_run_object(r) for r in task.runs])


@bp.get("/result/<int:run_id>")
@requires("user", "container")
def result_get(s: Session, ident: Identity, run_id: int):
    return jsonify(_run_object(_visible_run(s, ident, run_id)))


# ---------------------------------------------------------------- organisations and collaborations
def _org_json(org: Organization) -> dict:
    return {"id": org.id, "name": org.name, "public_key": ""}  # no encryption: no keys


def _shares_collaboration(ident: Identity, org: Organization) -> bool:
    if ident.kind == "container":
        return any(c.id == ident["collaboration_id"] for c in org.collaborations)
    return org.id == ident["organization_id"] or any(
        o.id == ident["organization_id"] for c in org.collaborations for o in c.organizations)


@bp.get("/organization")
@requires("user", "container")
def organizations(s: Session, ident: Identity):
    """A collaboration's organisations; an algorithm's own collaboration by default."""
    collab_id = int_arg("collaboration_id", required=ident.kind != "container")
    if collab_id is None:
        collab_id = ident["collaboration_id"]
    collab = s.get(Collaboration, collab_id)
    if collab is None:
        raise ApiError(404, f"collaboration {collab_id} does not exist")
    if not _may_see_collaboration(s, ident, collab):
        raise ApiError(403, f"you are not in collaboration {collab_id}")
    orgs = [_org_json(o) for o in sorted(collab.organizations, key=lambda o: o.id)]
    return _paginated(orgs, organizations=orgs)


@bp.get("/organization/<int:organization_id>")
@requires("user", "container")
def organization_get(s: Session, ident: Identity, organization_id: int):
    org = s.get(Organization, organization_id)
    if org is None:
        raise ApiError(404, f"organisation {organization_id} does not exist")
    if not _shares_collaboration(ident, org):
        raise ApiError(403, f"organisation {organization_id} shares no collaboration with you")
    return jsonify(_org_json(org))


@bp.get("/collaboration/<int:collaboration_id>")
@requires("user", "container")
def collaboration_get(s: Session, ident: Identity, collaboration_id: int):
    collab = s.get(Collaboration, collaboration_id)
    if collab is None:
        raise ApiError(404, f"collaboration {collaboration_id} does not exist")
    if not _may_see_collaboration(s, ident, collab):
        raise ApiError(403, f"you are not in collaboration {collaboration_id}")
    return jsonify(id=collab.id, name=collab.name, encrypted=False,
                   organizations=[{"id": o.id} for o in sorted(collab.organizations, key=lambda o: o.id)])


@bp.get("/blobstream/status")
@requires("node", "user", "container")
def blobstream_status(s: Session, ident: Identity):
    """vantage6's client asks before creating a task; inputs and results travel inline here."""
    return jsonify(blob_store_enabled=False)
