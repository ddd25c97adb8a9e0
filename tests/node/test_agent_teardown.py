"""A run whose start got as far as its holder and then failed (here: the server did not
take the "active" status) must leave nothing behind. The stress runs caught the agent
removing the algorithm container but not the holder on that path."""
from __future__ import annotations

from pathlib import Path

from vpnagent.agent import Agent, LiveRun
from vpnagent.config import parse_config
from vpnagent.serverapi import ServerError


class _Containers:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def get(self, cid: str):
        containers = self

        class _C:
            def remove(self, force: bool = False) -> None:
                containers.removed.append(cid)
        return _C()


class _Docker:
    def __init__(self) -> None:
        self.containers = _Containers()


class _Api:
    def __init__(self) -> None:
        self.updates: list[tuple[int, str]] = []

    def update_run(self, run_id: int, status: str, result=None, log=None) -> dict:
        self.updates.append((run_id, status))
        if status == "active":
            raise ServerError(None, "cannot reach the server: Connection aborted")
        return {}

    def delete_ports(self, run_id: int) -> int:
        return 0


def test_a_run_that_fails_after_its_holder_started_leaves_no_holder(tmp_path: Path, monkeypatch):
    cfg = parse_config({"name": "td1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    docker, api = _Docker(), _Api()
    agent = Agent(cfg, docker_client=docker, api=api)
    monkeypatch.setattr(agent, "_apply_run_removed", lambda run_id: None)  # no VPN client here

    def start_run(run: dict) -> LiveRun:
        live = LiveRun(run["id"], run["task_id"], "img", "holder-1", "172.30.0.2", 4242, container_id="algo-1")
        agent.runs[live.run_id] = live
        return live

    monkeypatch.setattr(agent, "start_run", start_run)
    agent._handle({"id": 7, "task_id": 3})
    assert sorted(docker.containers.removed) == ["algo-1", "holder-1"]
    assert api.updates[-1][0] == 7 and api.updates[-1][1] == "failed"
    assert 7 not in agent.runs
