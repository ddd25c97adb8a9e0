"""Runs the REAL vantage6-server 4.13.7 on a loopback port and drives it through its own
HTTP API, for tests/v6server/harness.py. Runs under .venv-v6server/bin/python
(scripts/v6-server.sh), so it imports nothing of vpnagent.

    python driver.py WORKDIR JWT_SECRET [DATABASE_URI]

DATABASE_URI is vantage6's `uri` (default: SQLite in WORKDIR); a PostgreSQL one is
postgresql://..., as vantage6 spells it.
The first line on stdout is `V6 {"port", "database_url", "api"}`; then it reads one JSON
command per line on stdin ({"cmd": ..., optional "seq"}) and answers each with one line
`V6 <json>` (the command's "seq" echoed when it had one; failures as {"error": ...}). Every
other output (vantage6's logging, werkzeug's, prints) goes to stderr. The server keeps
serving other clients between commands (see _stdin_lines)."""
from __future__ import annotations

import base64
import enum
import json
import logging
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

# What vantage6's own clients wait for at most, per HTTP request to the server.
HTTP_TIMEOUT = 30
# A command that has not finished by then is answered with an error, so the driver keeps
# answering (vantage6's NodeClient retries a refused connection forever).
COMMAND_TIMEOUT = 50

log = logging.getLogger("v6driver")


class CommandError(Exception):
    """A command that cannot be done; answered as {"error": str(exc)}."""


def _answer_stream():
    """Keep stdout's file for answers only and point fd 1 at stderr, so nothing vantage6
    or its libraries print (even from C) can be taken for an answer."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _py310_enum_format() -> None:
    """vantage6 4.13.7 formats `(str, Enum)` members with f-strings and expects the value,
    as Python 3.10 gave (e.g. f"{operation}_{Scope.GLOBAL}" in vantage6/server/permission.py,
    the name of the permission attribute). Python 3.11 gives "Scope.GLOBAL" instead, and
    e.g. POST /api/organization then fails with 500. Restore 3.10's format for those enums
    (only those that did not define their own __format__)."""
    todo = [enum.Enum]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if issubclass(cls, str) and cls.__format__ is enum.Enum.__format__:
            cls.__format__ = lambda self, spec: format(self._value_, spec)


def _write_config(work: Path, jwt_secret: str, database_uri: str) -> Path:
    import yaml

    config = {
        "description": "vpnagent test harness",
        "ip": "127.0.0.1",
        "port": 0,  # not used: the driver serves the app itself
        "api_path": "/api",
        "uri": database_uri,
        "allow_drop_all": True,
        "jwt_secret_key": jwt_secret,
        "logging": {
            "level": "INFO",
            "file": str(work / "v6.log"),
            "use_console": False,
            "backup_count": 1,
            "max_size": 10 * 1024 * 1024,
            "format": "%(asctime)s %(name)s %(levelname)s %(message)s",
            "datefmt": "%H:%M:%S",
            "loggers": [],
        },
    }
    path = work / "v6.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Driver:
    """The commands, each through vantage6's HTTP API as the real clients would do it."""

    def __init__(self, api: str) -> None:
        import requests

        self.requests = requests
        self.api = api
        self._root_token: str | None = None
        self._setups = 0

    # --- HTTP ---------------------------------------------------------------------------

    def http(self, method: str, path: str, token: str | None = None, body: Any = None,
             params: dict | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.requests.request(method, self.api + path, json=body, params=params, headers=headers,
                                  timeout=HTTP_TIMEOUT)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def ok(self, method: str, path: str, token: str | None = None, body: Any = None,
           params: dict | None = None, expect: tuple[int, ...] = (200, 201)) -> Any:
        status, out = self.http(method, path, token, body, params)
        if status not in expect:
            raise CommandError(f"{method} /api{path} answered {status} (expected {expect}): {out}")
        return out

    def root(self) -> str:
        if self._root_token is None:
            self._root_token = self.ok("POST", "/token/user", body={"username": "root", "password": "root"})[
                "access_token"]
        return self._root_token

    def node_token(self, api_key: str) -> str:
        # a fresh token each time: a deleted node must not keep working through a cache
        return self.ok("POST", "/token/node", body={"api_key": api_key})["access_token"]

    def all_pages(self, path: str, token: str, params: dict) -> list[dict]:
        """vantage6 lists are paginated ({"data": [...], "links": ...}, 10 per page by default)."""
        items, page = [], 1
        while True:
            out = self.ok("GET", path, token, params={**params, "page": page, "per_page": 100})
            items.extend(out["data"])
            if len(out["data"]) < 100:
                return items
            page += 1

    # --- commands -----------------------------------------------------------------------

    def cmd_setup(self, cmd: dict) -> dict:
        self._setups += 1
        n = self._setups  # unique names, so setup may be called again for a second world
        root = self.root()
        orgs = [self.ok("POST", "/organization", root, {"name": f"org{n}-{i}"})["id"] for i in (1, 2, 3)]
        collab = self.ok("POST", "/collaboration", root,
                         {"name": f"collab{n}", "organization_ids": orgs, "encrypted": False})
        nodes = []
        for org in orgs:
            name = f"node{n}-org{org}"
            node = self.ok("POST", "/node", root, {"name": name, "organization_id": org,
                                                    "collaboration_id": collab["id"]})
            nodes.append({"id": node["id"], "organization_id": org, "api_key": node["api_key"], "name": name})
        roles = [r for r in self.all_pages("/role", root, {"name": "Researcher"}) if r["name"] == "Researcher"]
        if len(roles) != 1:
            raise CommandError(f"expected one default 'Researcher' role, found {roles}")
        username, password = f"researcher{n}", f"Researcher-{n}-pw!"
        user = self.ok("POST", "/user", root, {
            "username": username, "password": password, "email": f"{username}@example.org",
            # firstname and lastname are optional in vantage6's schema, but POST /user
            # reads them with data[...] and answers 500 without them
            "firstname": "Re", "lastname": "Searcher",
            "organization_id": orgs[0], "roles": [roles[0]["id"]]})
        return {"organizations": orgs, "collaboration_id": collab["id"], "nodes": nodes,
                "user": {"id": user["id"], "username": username, "password": password,
                         "organization_id": orgs[0]}}

    def cmd_node_token(self, cmd: dict) -> dict:
        return {"access_token": self.node_token(cmd["api_key"])}

    def cmd_user_token(self, cmd: dict) -> dict:
        out = self.ok("POST", "/token/user", body={"username": cmd["username"], "password": cmd["password"]})
        return {"access_token": out["access_token"]}

    def _task(self, token: str, collaboration_id: int, cmd: dict) -> dict:
        """POST /api/task with vantage6 4.13's body (what its UserClient and AlgorithmClient
        send for an unencrypted collaboration), then the task's runs."""
        raw_input = json.dumps(cmd.get("input", {"method": "echo"})).encode()
        body = {
            "collaboration_id": collaboration_id,
            "organizations": [{"id": o, "input": base64.b64encode(raw_input).decode()}
                              for o in cmd["organizations"]],
            "image": cmd["image"],
            "name": cmd.get("name", "harness task"),
            "description": cmd.get("description", ""),
            "databases": cmd.get("databases", []),
        }
        task = self.ok("POST", "/task", token, body, expect=(201,))
        runs = self.all_pages("/run", self.root(), {"task_id": task["id"]})
        # the run JSON names its organisation as {"id", "link"}; flatten it for the tests.
        # In run id order (GET /api/run lists the newest first).
        task["runs"] = sorted(({**r, "organization_id": r["organization"]["id"]} for r in runs),
                              key=lambda r: r["id"])
        return task

    def cmd_create_task(self, cmd: dict) -> dict:
        if cmd.get("parent_task_id") is not None:
            raise CommandError("vantage6 sets a task's parent only from a container token: use create_subtask")
        if "collaboration_id" in cmd:
            collaboration_id = cmd["collaboration_id"]
        else:  # the user's organisation's collaborations: the harness makes one per setup
            collabs = self.all_pages("/collaboration", cmd["user_token"], {})
            if len(collabs) != 1:
                raise CommandError(f"give collaboration_id: the user is in {len(collabs)} collaborations")
            collaboration_id = collabs[0]["id"]
        return self._task(cmd["user_token"], collaboration_id, cmd)

    def cmd_create_subtask(self, cmd: dict) -> dict:
        import jwt

        # the container's identity is the token's subject (as AlgorithmClient reads it)
        identity = jwt.decode(cmd["container_token"], options={"verify_signature": False})["sub"]
        return self._task(cmd["container_token"], identity["collaboration_id"], cmd)

    def cmd_container_token(self, cmd: dict) -> dict:
        out = self.ok("POST", "/token/container", self.node_token(cmd["node_api_key"]),
                      {"task_id": cmd["task_id"], "image": cmd["image"]})
        return {"container_token": out["container_token"]}

    def cmd_set_run(self, cmd: dict) -> dict:
        # PATCH /api/run replaces result, log and finished_at with what the body has (None
        # when absent), as the node sends them all at the end
        body = {"status": cmd["status"]}
        body.update({k: cmd[k] for k in ("result", "log", "started_at", "finished_at") if k in cmd})
        return self.ok("PATCH", f"/run/{cmd['run_id']}", self.node_token(cmd["node_api_key"]), body)

    def cmd_add_port(self, cmd: dict) -> dict:
        return self.ok("POST", "/port", self.node_token(cmd["node_api_key"]),
                       {"run_id": cmd["run_id"], "port": cmd["port"], "label": cmd.get("label")}, expect=(201,))

    def cmd_set_node_ip(self, cmd: dict) -> dict:
        return self.ok("PATCH", f"/node/{cmd['node_id']}", self.node_token(cmd["node_api_key"]), {"ip": cmd["ip"]})

    def cmd_addresses(self, cmd: dict) -> dict:
        status, body = self.http("GET", "/vpn/algorithm/addresses", cmd["container_token"],
                                 params=cmd.get("params") or {})
        return {"status": status, "body": body}

    def cmd_delete_node(self, cmd: dict) -> dict:
        status, body = self.http("DELETE", f"/node/{cmd['node_id']}", self.root())
        return {"status": status, "body": body}

    @staticmethod
    def _node_client(cmd: dict):
        """vantage6's own NodeClient for a base URL: it joins host, port and api path as
        f"{host}:{port}{path}" (without ":port" when port is None)."""
        from vantage6.common.client.node_client import NodeClient

        url = urlsplit(cmd["url"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CommandError(f"url must be http(s)://host[:port][/prefix], not {cmd['url']!r}")
        host = f"{url.scheme}://{url.netloc.rsplit(':', 1)[0] if url.port else url.netloc}"
        path = url.path.rstrip("/") + cmd.get("api_path", "/api")
        client = NodeClient(host, url.port, path)
        client.authenticate(cmd["api_key"])
        return client

    def cmd_node_client_vpn(self, cmd: dict) -> dict:
        ok, ovpn = self._node_client(cmd).get_vpn_config()
        return {"ok": ok, "ovpn_config": ovpn}

    def cmd_node_client_refresh(self, cmd: dict) -> dict:
        return {"ok": self._node_client(cmd).refresh_vpn_keypair(cmd["ovpn_file"])}


def _stdin_lines() -> Iterator[str]:
    """stdin's lines, read without stopping the server. vantage6.server runs gevent's
    monkey.patch_all() on import, so the HTTP server's threads are greenlets: a plain
    blocking read of stdin would stop them all between two commands (nothing else could
    reach the server). Wait for input the cooperative way, then read what is there."""
    from gevent.socket import wait_read

    fd, buf = sys.stdin.fileno(), b""
    while True:
        while b"\n" not in buf:
            wait_read(fd)
            chunk = os.read(fd, 65536)
            if not chunk:
                if buf:
                    yield buf.decode(errors="replace")
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line.decode(errors="replace")


def _run_bounded(fn: Callable[[dict], dict], cmd: dict) -> dict:
    """fn(cmd) in a thread (a greenlet, under vantage6's gevent patching), answered as an
    error if it takes longer than the command's "timeout" (default COMMAND_TIMEOUT); a stuck
    one is left behind (daemon)."""
    result: dict = {}

    def work() -> None:
        try:
            result["out"] = fn(cmd)
        except CommandError as exc:
            result["out"] = {"error": str(exc)}
        except KeyError as exc:
            result["out"] = {"error": f"command {cmd.get('cmd')!r} needs key {exc}"}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            log.error("command %s failed:\n%s", cmd.get("cmd"), traceback.format_exc())
            result["out"] = {"error": f"{type(exc).__name__}: {exc}"}

    thread = threading.Thread(target=work, daemon=True, name=f"cmd-{cmd.get('cmd')}")
    thread.start()
    timeout = float(cmd.get("timeout", COMMAND_TIMEOUT))
    thread.join(timeout)
    if thread.is_alive():
        return {"error": f"command {cmd.get('cmd')!r} did not finish within {timeout:g} s"}
    return result["out"]


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print("usage: python driver.py WORKDIR JWT_SECRET [DATABASE_URI]", file=sys.stderr)
        return 2
    answers = _answer_stream()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    work, jwt_secret = Path(sys.argv[1]).resolve(), sys.argv[2]
    database_uri = sys.argv[3] if len(sys.argv) == 4 else f"sqlite:///{work / 'v6.db'}"
    work.mkdir(parents=True, exist_ok=True)
    # the harness's server has the documented default root user root/root
    for var in ("V6_INIT_SUPER_PASS_HASHED", "V6_INIT_SUPER_PASS_HASHED_FILE"):
        os.environ.pop(var, None)

    from vantage6.server import run_server

    _py310_enum_format()  # before the server builds its permissions and default roles
    config = _write_config(work, jwt_secret, database_uri)
    app = run_server(str(config), system_folders=False)
    _py310_enum_format()  # and for enums of modules the server imported while starting

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="v6-http")
    thread.start()
    port = server.server_port
    api = f"http://127.0.0.1:{port}/api"
    driver = Driver(api)

    def say(out: dict) -> None:
        answers.write("V6 " + json.dumps(out) + "\n")
        answers.flush()

    say({"port": port, "database_url": database_uri, "api": api})
    try:
        for line in _stdin_lines():
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                say({"error": f"bad command line {line.strip()[:200]!r}: {exc}"})
                continue
            name = cmd.get("cmd")
            echo = {"seq": cmd["seq"]} if "seq" in cmd else {}
            if name == "stop":
                say({"stopped": True, **echo})
                break
            fn = getattr(driver, f"cmd_{name}", None) if isinstance(name, str) else None
            if fn is None:
                say({"error": f"unknown command {name!r}", **echo})
                continue
            say({**_run_bounded(fn, cmd), **echo})
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
