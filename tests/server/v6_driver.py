"""Drives the REAL vantage6 4.13.7 AlgorithmClient against a vpnagent server, for
tests/server/test_vantage6_client.py. Runs under .venv-v6/bin/python (scripts/v6-wheels.sh),
so it imports nothing of vpnagent.

    python v6_driver.py <server port> <container token>

It reads one JSON command per line on stdin ({"step": ...}) and answers each with one
line `V6 <json>` on stdout; vantage6's own logging goes to stderr."""
from __future__ import annotations

import json
import logging
import sys

from vantage6.algorithm.client import AlgorithmClient


def step_create(client: AlgorithmClient, cmd: dict) -> dict:
    task = client.task.create(input_=cmd["input"], organizations=cmd["organizations"], name="partials")
    return {"created": task, "get": client.task.get(task["id"])}


def step_addresses(client: AlgorithmClient, cmd: dict) -> dict:
    vpn = client.vpn
    return {
        "default": vpn.get_addresses(),
        "family": vpn.get_addresses(include_children=True, include_parent=True),
        "children_echo": vpn.get_addresses(only_children=True, label="echo"),
        "no_such_label": vpn.get_addresses(label="nope"),
        "own": vpn.get_own_address(),
        "parent": vpn.get_parent_address(),
        "children": vpn.get_child_addresses(),
        "siblings": vpn.get_sibling_addresses(),
    }


def step_results(client: AlgorithmClient, cmd: dict) -> dict:
    task_id, run_id = cmd["task_id"], cmd["run_id"]
    # vantage6's task body with an input that is not base64 of JSON (as an encrypting
    # client would send), through the client's own request path
    bad = client.request("task", method="post", json={
        "name": "bad", "image": client.image, "collaboration_id": client.collaboration_id,
        "organizations": [{"id": client.organization_id, "input": "not base64 at all!"}],
        "databases": client.databases})
    return {
        "waited": client.wait_for_results(task_id, interval=0.2),
        "from_task": client.result.from_task(task_id),
        "one_result": client.result.get(run_id),
        "runs": client.run.from_task(task_id),
        "one_run": client.run.get(run_id),
        "organizations": client.organization.list(),
        "organization": client.organization.get(cmd["organization_id"]),
        "collaboration": client.collaboration.get(),
        "bad_body": bad,
    }


STEPS = {"create": step_create, "addresses": step_addresses, "results": step_results}


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    port, token = int(sys.argv[1]), sys.argv[2]
    client = AlgorithmClient(token=token, host="http://127.0.0.1", port=port, path="/api")
    identity = {"organization_id": client.organization_id, "collaboration_id": client.collaboration_id,
                "node_id": client.node_id, "image": client.image, "databases": client.databases}
    print("V6 " + json.dumps({"ready": identity}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["step"] == "quit":
            return 0
        try:
            out = STEPS[cmd["step"]](client, cmd)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            logging.exception("step %s failed", cmd["step"])
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print("V6 " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
