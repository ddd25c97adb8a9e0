"""Ports at the server are part of a run's actual state: a registered run whose ports the
server no longer lists (a restored database, a lost request) gets them registered again;
one still being registered is left to its start. Real network:
tests/integration/test_survive.py::test_ports_missing_at_the_server_are_registered_again."""
from __future__ import annotations

from pathlib import Path

from vpnagent.agent import Agent, LiveRun, PortMap
from vpnagent.config import parse_config


class _Api:
    def __init__(self) -> None:
        self.registered: list[tuple[int, int, str | None]] = []

    def register_port(self, run_id: int, port: int, label: str | None) -> dict:
        self.registered.append((run_id, port, label))
        return {}


def _agent(tmp_path: Path) -> Agent:
    cfg = parse_config({"name": "pc1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    agent = Agent(cfg, runtime=object(), api=_Api())
    agent.runs[7] = LiveRun(7, 3, "img", "h7", "172.30.0.2", 107,
                            ports=[PortMap(6001, 8888, "echo"), PortMap(6002, 9000, None)], registered=True)
    agent.runs[8] = LiveRun(8, 4, "img", "h8", "172.30.0.3", 108, ports=[PortMap(6003, 8888, "echo")])
    return agent


def test_ports_the_server_lost_are_registered_again(tmp_path: Path):
    agent = _agent(tmp_path)
    families = {7: [{"run_id": 7, "node_id": 1, "ip": "10.76.0.2", "ports": [6001]}], 8: []}
    agent._converge_ports(families)
    assert agent.api.registered == [(7, 6002, None)]  # run 8 is still registering its own
    assert any("re-registered port 6002 of run 7" in f for f in agent.fixes)


def test_ports_the_server_has_are_left_alone(tmp_path: Path):
    agent = _agent(tmp_path)
    agent._converge_ports({7: [{"run_id": 7, "node_id": 1, "ip": "10.76.0.2", "ports": [6001, 6002]}]})
    assert agent.api.registered == [] and agent.fixes == []
