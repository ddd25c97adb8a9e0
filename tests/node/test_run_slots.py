"""Run slots: top-level runs and subtasks have their own limits, and subtasks go first.
Parents hold their slots while they wait for their subtasks; with one shared limit, ten
echo tasks at once filled every slot with parents and none could finish (issue "Runs
survive"). The real thing: tests/integration/test_survive.py
(test_subtasks_are_admitted_when_parents_fill_every_slot)."""
from __future__ import annotations

from pathlib import Path

from vpnagent.agent import Agent
from vpnagent.config import parse_config


class _Api:
    def __init__(self, pending: list[dict]) -> None:
        self.pending = pending

    def pending_runs(self) -> list[dict]:
        return self.pending


def _agent(tmp_path: Path, monkeypatch, pending: list[dict], **extra) -> tuple[Agent, list[int]]:
    cfg = parse_config({"name": "rs1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node"), **extra})
    agent = Agent(cfg, runtime=object(), api=_Api(pending))
    started: list[int] = []
    monkeypatch.setattr(agent, "_spawn", lambda run_id, target, *args: started.append(run_id))
    return agent, started


def _runs(first: int, count: int, parent: int | None = None) -> list[dict]:
    return [{"id": i, "task_id": i, "image": "img", "parent_id": parent} for i in range(first, first + count)]


def test_parents_filling_every_slot_do_not_keep_their_subtasks_out(tmp_path: Path, monkeypatch):
    parents = _runs(1, 6)
    agent, started = _agent(tmp_path, monkeypatch, parents, max_concurrent_runs=2)
    agent._admit()
    assert started == [1, 2]  # the top-level limit
    agent.api.pending = parents[2:] + _runs(100, 2, parent=1)  # the two parents' subtasks arrive
    agent._admit()
    assert started == [1, 2, 100, 101]


def test_subtasks_have_their_own_limit_and_go_first(tmp_path: Path, monkeypatch):
    pending = _runs(1, 3) + _runs(100, 5, parent=1)
    agent, started = _agent(tmp_path, monkeypatch, pending, max_concurrent_runs=2, max_concurrent_subtasks=3)
    agent._admit()
    assert started == [100, 101, 102, 1, 2]
    assert agent.cfg.subtask_limit == 3


def test_the_subtask_limit_defaults_to_four_times_the_run_limit(tmp_path: Path, monkeypatch):
    agent, _ = _agent(tmp_path, monkeypatch, [], max_concurrent_runs=3)
    assert agent.cfg.subtask_limit == 12


def test_a_taken_run_is_not_taken_twice(tmp_path: Path, monkeypatch):
    agent, started = _agent(tmp_path, monkeypatch, _runs(1, 2))
    agent._admit()
    agent._admit()  # the server still lists them pending until their first report lands
    assert started == [1, 2]
