"""The agent's side of the node proxy's token swap: a run's current token goes only to a
call from that run's holder address; renewal at half the lifetime. The swap through a real
proxy: tests/node/test_proxy_tokens.py; a run outliving its token on the real network:
tests/integration/test_survive.py::test_run_outlives_its_token."""
from __future__ import annotations

import time
from pathlib import Path

from server_ext.tokens import TokenService
from vpnagent import agent as agent_module
from vpnagent.agent import Agent, LiveRun, token_times
from vpnagent.config import parse_config

SERVICE = TokenService("s" * 40, {"container": 10})


class _Api:
    def __init__(self) -> None:
        self.issued: list[int] = []

    def container_token(self, run_id: int) -> str:
        self.issued.append(run_id)
        return SERVICE.issue("container", {"run_id": run_id})


def _agent(tmp_path: Path) -> Agent:
    cfg = parse_config({"name": "tk1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    agent = Agent(cfg, runtime=object(), api=_Api())
    for run_id, ip in ((1, "172.30.0.2"), (2, "172.30.0.3")):
        agent.runs[run_id] = LiveRun(run_id, run_id, "img", f"h{run_id}", ip, 100 + run_id)
        agent._fetch_token(run_id)
    return agent


def test_a_runs_token_goes_only_to_its_own_holder(tmp_path: Path):
    agent = _agent(tmp_path)
    assert agent.token_for("172.30.0.2", 1) == agent._tokens[1][0]
    assert agent.token_for("172.30.0.2", 2) is None  # run 1's holder naming run 2
    assert agent.token_for("172.30.0.9", 1) is None  # no run there
    assert agent.token_for("172.30.0.2", 3) is None  # not a live run of this node


def test_the_weakened_switch_hands_any_runs_token_to_any_address(tmp_path: Path, monkeypatch):
    """What the hostile test's negative control runs with: shows its attack can succeed."""
    monkeypatch.setattr(agent_module, "WEAKEN_TOKEN_SWAP", True)
    agent = _agent(tmp_path)
    assert agent.token_for("172.30.0.2", 2) == agent._tokens[2][0]


def test_tokens_are_renewed_once_half_their_lifetime_is_gone(tmp_path: Path, monkeypatch):
    agent = _agent(tmp_path)
    iat, exp = token_times(agent._tokens[1][0])
    assert exp - iat == 10
    agent._renew_tokens()
    assert agent.api.issued == [1, 2]  # fresh: nothing renewed
    monkeypatch.setattr(time, "time", lambda: iat + 6)
    agent._renew_tokens()
    assert agent.api.issued == [1, 2, 1, 2]


def test_token_times_of_garbage_renews_within_the_hour():
    iat, exp = token_times("not a jwt")
    assert 0 < exp - iat <= 3600
