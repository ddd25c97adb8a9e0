"""A run's way from start to report, with the runtime and the server faked: a start that
failed after its holder was wired leaves nothing behind (the stress runs caught the agent
removing the algorithm container but not the holder on that path), and a result the server
could not take is journaled and delivered once it answers again. The real thing is in
tests/integration/test_survive.py."""
from __future__ import annotations

from pathlib import Path

from tests.fakes import FakeRuntime
from vpnagent.agent import Agent, LiveRun, RunError
from vpnagent.config import parse_config
from vpnagent.runtime import Container
from vpnagent.serverapi import ServerError


class _Api:
    """A server that is `down` (unreachable) or answers; remembers the reports it took."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, str, object]] = []
        self.down = False
        self.final: dict[int, str] = {}

    def update_run(self, run_id: int, status: str, result=None, log=None) -> dict:
        if self.down:
            raise ServerError(None, "cannot reach the server: Connection refused")
        if run_id in self.final and self.final[run_id] != status:
            raise ServerError(409, f"run {run_id} is already {self.final[run_id]}")
        self.updates.append((run_id, status, result))
        if status in ("completed", "failed"):
            self.final[run_id] = status
        return {}

    def delete_ports(self, run_id: int) -> int:
        if self.down:
            raise ServerError(None, "cannot reach the server: Connection refused")
        return 0


def _agent(tmp_path: Path, monkeypatch, fail_start: bool = False) -> tuple[Agent, FakeRuntime, _Api]:
    cfg = parse_config({"name": "td1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    docker, api = FakeRuntime(), _Api()
    for cid in ("holder-1", "algo-1"):
        docker.add(Container(cid, cid, "running"))
    agent = Agent(cfg, runtime=docker, api=api)
    monkeypatch.setattr(agent, "apply_network", lambda verify=False: None)  # no VPN client here

    def start_run(run: dict) -> LiveRun:
        live = LiveRun(run["id"], run["task_id"], "img", "holder-1", "172.30.0.2", 4242, container_id="algo-1")
        agent.runs[live.run_id] = live
        if fail_start:
            raise RunError("the algorithm container could not be started")
        return live

    monkeypatch.setattr(agent, "start_run", start_run)
    monkeypatch.setattr(agent, "wait_run", lambda run_id: ("completed", {"sum": 42}, "done"))
    return agent, docker, api


RUN = {"id": 7, "task_id": 3, "image": "img"}


def test_a_run_that_fails_after_its_holder_started_leaves_no_holder(tmp_path: Path, monkeypatch):
    agent, docker, api = _agent(tmp_path, monkeypatch, fail_start=True)
    agent._handle(RUN)
    assert sorted(docker.calls) == ["remove algo-1", "remove holder-1"]
    assert api.updates[-1][:2] == (7, "failed")
    assert 7 not in agent.runs
    assert list((tmp_path / "node" / "journal").iterdir()) == []  # delivered: nothing kept


def test_a_result_the_server_cannot_take_is_journaled_and_delivered_later(tmp_path: Path, monkeypatch):
    agent, docker, api = _agent(tmp_path, monkeypatch)
    api.down = True
    agent._handle(RUN)
    assert sorted(docker.calls) == ["remove algo-1", "remove holder-1"]  # resources go back at once
    assert api.updates == [] and agent.status()["reports_waiting"] == [7]
    # a new agent process (after a crash) finds the result on disk, not only this one
    kept = Agent(agent.cfg, runtime=docker, api=api).journal.load()
    assert kept[7].report == {"status": "completed", "result": {"sum": 42}, "log": "done"}
    agent._deliver_reports()  # still down: kept
    assert agent.status()["reports_waiting"] == [7]
    api.down = False
    agent._deliver_reports()
    assert api.updates == [(7, "completed", {"sum": 42})]
    assert agent.status()["reports_waiting"] == [] and agent.journal.load() == {}


def test_a_report_the_server_already_has_is_not_sent_for_ever(tmp_path: Path, monkeypatch):
    agent, _, api = _agent(tmp_path, monkeypatch)
    api.final[7] = "failed"  # e.g. the server marked it failed while the node was away
    agent._handle(RUN)
    assert agent.journal.load() == {} and agent.status()["reports_waiting"] == []


def test_an_unreadable_journal_record_is_set_aside(tmp_path: Path, monkeypatch):
    agent, _, _ = _agent(tmp_path, monkeypatch)
    (agent.journal.dir / "9.json").write_text("{not json")
    assert agent.journal.load() == {}
    assert (agent.journal.dir / "9.json.bad").exists()


def test_server_calls_of_a_starting_run_wait_out_a_short_outage(tmp_path: Path, monkeypatch):
    """Found by test_results_reach_a_server_that_was_away: a subtask taken just before the
    server went down failed at its first call (the container token), and (issue 15's full
    run) a run whose port registration was cut off mid-request by the server's death failed
    too. Every server call of a starting run is idempotent (a token, the family, a port the
    server registers once), so one the server never answered is asked again for a while;
    one the server answered with an error is not."""
    from vpnagent import agent as agent_module

    agent, _, _ = _agent(tmp_path, monkeypatch)
    monkeypatch.setattr(agent_module, "START_OUTAGE_S", 2.0)
    calls = []

    def flaky(n_refused: int, sent: bool = False):
        def call(x):
            calls.append(x)
            if len(calls) <= n_refused:
                raise ServerError(None, "cannot reach the server: Connection refused", sent=sent)
            return f"ok {x}"
        return call

    assert agent._patiently(flaky(3), 7) == "ok 7" and len(calls) == 4
    calls.clear()
    # sent, and the connection cut before an answer: repeated too (the calls are idempotent)
    assert agent._patiently(flaky(2, sent=True), 7) == "ok 7" and len(calls) == 3
    calls.clear()

    def refused(x):
        calls.append(x)
        raise ServerError(400, "run 7 is failed; ports can only be registered for active runs")
    try:
        agent._patiently(refused, 7)  # the server answered: asking again would get the same answer
        raise AssertionError("expected ServerError")
    except ServerError:
        assert len(calls) == 1
    calls.clear()
    try:
        agent._patiently(flaky(100), 7)  # longer than the budget: the error after about 2 s
        raise AssertionError("expected ServerError")
    except ServerError:
        assert 3 <= len(calls) < 100


def test_the_loop_leaves_a_report_to_the_run_thread_still_giving_its_run_back(tmp_path: Path, monkeypatch):
    """Found by the stress runs: the loop delivered a result journaled a moment before the
    run's own thread had removed its containers and files, so the researcher saw the run
    finished while its directory and a container still existed."""
    from vpnagent.journal import DONE, RunRecord

    agent, _, api = _agent(tmp_path, monkeypatch)
    rec = RunRecord(7, 3, "img", phase=DONE, report={"status": "completed", "result": 1})
    agent._records[7] = rec
    agent._admitted[7] = False  # its thread is still tearing it down
    agent._deliver_reports()
    assert api.updates == []
    del agent._admitted[7]  # the thread ended (its own delivery failed): the loop takes over
    agent._deliver_reports()
    assert api.updates == [(7, "completed", 1)]
