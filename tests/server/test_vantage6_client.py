"""The REAL vantage6 4.13.7 AlgorithmClient against our server, unchanged (issue 13).

The app serves on a loopback port (a real HTTP server in a thread); tests/server/v6_driver.py,
run by .venv-v6's Python (scripts/v6-wheels.sh; vantage6-algorithm-tools pins releases that
cannot live in .venv), makes the client calls step by step while this test plays the nodes
through the node API in between: registers ports, reads the runs a node would start,
reports results. The node proxy forwards every path under /api unchanged, so this is what
an algorithm container sees, minus the proxy."""
from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[2]
V6_PYTHON = ROOT / ".venv-v6" / "bin" / "python"
DRIVER = Path(__file__).with_name("v6_driver.py")
STEP_TIMEOUT = 60


@pytest.fixture
def v6_python() -> Path:
    if not V6_PYTHON.exists():
        reason = f"{V6_PYTHON.relative_to(ROOT)} is missing: run scripts/v6-wheels.sh (scripts/setup.sh does)"
        if os.environ.get("VPNAGENT_REQUIRE_DOCKER") == "1":
            pytest.fail(f"the vantage6 client test cannot run: {reason} (VPNAGENT_REQUIRE_DOCKER=1)")
        pytest.skip(reason)
    return V6_PYTHON


@pytest.fixture
def served(world):
    """The world's app on 127.0.0.1:<free port>."""
    server = make_server("127.0.0.1", 0, world.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


class Driver:
    """v6_driver.py in its own process: one JSON command in, one JSON answer out."""

    def __init__(self, python: Path, port: int, token: str, log: Path) -> None:
        self.log = log
        self._stderr = log.open("w")
        self.proc = subprocess.Popen([str(python), str(DRIVER), str(port), token], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=str(ROOT))

    def read(self) -> dict:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the driver ended (exit {self.proc.wait(5)}):\n{self._tail()}")
            if line.startswith("V6 "):
                out = json.loads(line[3:])
                assert "error" not in out, f"{out['error']}\n{self._tail()}"
                return out
        raise AssertionError(f"no answer from the driver within {STEP_TIMEOUT} s:\n{self._tail()}")

    def step(self, name: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"step": name, **args}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"step": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._stderr.close()

    def _tail(self) -> str:
        self._stderr.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _ports(addresses: list[dict]) -> list[int]:
    return sorted(a["port"] for a in addresses)


def test_the_real_vantage6_algorithm_client(world, served, v6_python, tmp_path):
    o1, o2, o3 = world.orgs[:3]
    node_of = {o1: 0, o2: 1, o3: 2}
    for i in range(3):
        assert world.client.get("/api/vpn", headers=world.node_headers(i)).status_code == 200

    def register(org: int, run_id: int, port: int, label: str = "echo") -> None:
        r = world.client.post("/api/port", headers=world.node_headers(node_of[org]),
                              json={"run_id": run_id, "port": port, "label": label})
        assert r.status_code == 201, r.json

    # A researcher's vantage6 task R at org 1; its algorithm made subtask T at orgs 1 and 2;
    # the client under test is T's container at org 1.
    top = world.create_task([o1], contract="vantage6", databases=[{"label": "default"}])
    register(o1, top["runs"][0]["id"], 7000)
    t = world.create_task([o1, o2], headers=world.container_headers(0, top["runs"][0]["id"]),
                          databases=[{"label": "default"}])
    t_runs = {r["organization_id"]: r["id"] for r in t["runs"]}
    register(o1, t_runs[o1], 7001)
    register(o1, t_runs[o1], 7011, "metrics")
    register(o2, t_runs[o2], 7002)
    token = world.container_headers(0, t_runs[o1])["Authorization"][7:]

    driver = Driver(v6_python, served, token, tmp_path / "driver.log")
    try:
        ready = driver.read()["ready"]
        assert ready == {"organization_id": o1, "collaboration_id": world.collab, "node_id": ready["node_id"],
                         "image": "img:1", "databases": [{"label": "default"}]}

        # --- task.create: vantage6's body, one base64 input per organisation
        partial = {"method": "partial", "kwargs": {"column": "age", "bins": [0, 50, 100]}}
        created = driver.step("create", input=partial, organizations=[o1, o2, o3])
        sub = created["created"]
        assert sub["parent_id"] == t["id"] and sub["contract"] == "vantage6", "contract inherited from T (from R)"
        assert sub["databases"] == [{"label": "default"}] and sub["name"] == "partials"
        assert sub["description"].startswith("task from container on node_id=")
        assert created["get"]["id"] == sub["id"] and created["get"]["status"] == "pending"
        sub_runs = {r["organization_id"]: r["id"] for r in sub["runs"]}
        assert set(sub_runs) == {o1, o2, o3}
        for org, i in node_of.items():  # what each node gets to start
            run = next(r for r in world.client.get("/api/run", headers=world.node_headers(i)).json["runs"]
                       if r["id"] == sub_runs[org])
            assert run["input"] == partial
            assert (run["parent_id"], run["contract"], run["databases"]) == (t["id"], "vantage6",
                                                                            [{"label": "default"}])

        # --- the VPN address helpers
        for org, port in ((o1, 7101), (o2, 7102), (o3, 7103)):
            register(org, sub_runs[org], port)
        register(o3, sub_runs[o3], 7113, "metrics")
        got = driver.step("addresses")
        assert _ports(got["default"]) == [7001, 7002, 7011]
        assert _ports(got["family"]) == [7000, 7001, 7002, 7011, 7101, 7102, 7103, 7113]
        assert _ports(got["children_echo"]) == [7101, 7102, 7103]
        assert got["no_such_label"] == []
        assert _ports(got["own"]) == [7001, 7011]
        assert [(a["port"], a["task_id"], a["parent_id"]) for a in got["parent"]] == [(7000, top["id"], None)]
        assert _ports(got["children"]) == [7101, 7102, 7103, 7113]
        assert [(a["port"], a["organization_id"], a["run_id"]) for a in got["siblings"]] == [(7002, o2, t_runs[o2])]
        ips = {world.orgs[i]: world.client.get("/api/node/self", headers=world.node_headers(i)).json["vpn_ip"]
               for i in range(3)}
        assert all(a["ip"] == ips[a["organization_id"]] for a in got["family"])

        # --- the nodes report; the client waits for and decodes the results
        reported = {org: {"partial": [org, 10 * org], "n": 3} for org in sub_runs}
        for org, run_id in sub_runs.items():
            r = world.client.patch(f"/api/run/{run_id}", headers=world.node_headers(node_of[org]),
                                   json={"status": "completed", "result": reported[org], "log": f"log {org}"})
            assert r.status_code == 200, r.json
        before = world.snapshot()
        out = driver.step("results", task_id=sub["id"], run_id=sub_runs[o2], organization_id=o3)
        assert world.snapshot() == before, "the bad body created something"
        assert "not base64" in out["bad_body"]["msg"] and "encrypted input is not supported" in out["bad_body"]["msg"]
        in_order = [reported[org] for org in sorted(sub_runs, key=sub_runs.get)]
        assert out["waited"] == out["from_task"] == in_order
        assert out["one_result"] == reported[o2]
        assert [r["id"] for r in out["runs"]] == sorted(sub_runs.values())
        assert all(r["status"] == "completed" and r["task"] == {"id": sub["id"]} for r in out["runs"])
        assert json.loads(base64.b64decode(out["one_run"]["result"])) == reported[o2]
        assert (out["one_run"]["organization"], out["one_run"]["log"]) == ({"id": o2}, f"log {o2}")
        assert out["organizations"] == [{"id": o, "name": f"org{o}", "public_key": ""} for o in (o1, o2, o3)]
        assert out["organization"] == {"id": o3, "name": f"org{o3}", "public_key": ""}
        assert out["collaboration"] == {"id": world.collab, "name": "C", "encrypted": False,
                                        "organizations": [{"id": o} for o in (o1, o2, o3)]}
    finally:
        driver.close()
    assert driver.proc.returncode == 0, driver._tail()

