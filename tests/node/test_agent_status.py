"""What the agent reports follows what it did: a correction shows up in status.json and the
metrics only once it is in place (tests and operators waiting for it then find it done),
and `vpnagent status` says when its file was written and whether that agent still runs.

The integration tests wait for these conditions on a real node; this drives the order of
reconcile's steps against a fake namespace, where it is exact."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.fake_iptables import FakeRunner, Tables

from vpnagent import agent as agent_mod
from vpnagent import firewall
from vpnagent import metrics as m
from vpnagent.agent import Agent
from vpnagent.cli import render_status, status_freshness
from vpnagent.config import parse_config
from vpnagent.dataplane import Tunnel
from vpnagent.netapply import NetworkApplier


class _Unreachable:
    def __getattr__(self, name):
        raise AssertionError(f"unexpected use of {name}")


def _agent(tmp_path: Path) -> Agent:
    cfg = parse_config({"name": "st1", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                        "data_dir": str(tmp_path / "node")})
    agent = Agent(cfg, runtime=_Unreachable(), api=_Unreachable())
    agent.iso_subnet, agent.iso_gateway = __import__("ipaddress").IPv4Network("172.30.0.0/24"), "172.30.0.1"
    return agent


def _status(agent: Agent) -> dict:
    return json.loads((agent.cfg.data_dir / "status.json").read_text())


def test_a_recorded_fix_is_in_the_status_file_at_once(tmp_path):
    agent = _agent(tmp_path)
    agent._record_fix("reconnected the VPN client (test)", m.FIX_VPN_CLIENT)
    assert any("reconnected the VPN client (test)" in f for f in _status(agent)["fixes"])


def _synced_agent(tmp_path) -> tuple[Agent, FakeRunner]:
    """An agent whose VPN client (pid 4242) is applied once and so believed in sync, its
    namespaces faked by a model of iptables."""
    runner = FakeRunner()
    runner.ns(None).restore("*filter\n:DOCKER-USER - [0:0]\nCOMMIT\n")  # Docker's own, on the host
    agent = _agent(tmp_path)
    agent.net = NetworkApplier(runner)
    agent.vpn.state = Tunnel("c1", 4242, "10.76.0.3", "172.30.0.2", "eth1", time.time())
    agent.apply_network()
    runner.take_calls()
    return agent, runner


def test_drift_is_counted_and_reported_only_after_the_repair(tmp_path, monkeypatch):
    agent, runner = _synced_agent(tmp_path)
    runner.namespaces[4242] = Tables()  # someone flushed the VPN client's tables

    seen_at_count: list[list[tuple]] = []  # the namespace writes made when the metric moved
    counted = agent.metrics.count_correction

    def spy(kind: str) -> None:
        seen_at_count.append([c[:2] for c in runner.calls if c[0] == "restore"])
        counted(kind)

    monkeypatch.setattr(agent.metrics, "count_correction", spy)
    before = agent.reconciles
    agent.reconcile()
    assert agent.reconciles == before + 1
    assert len(seen_at_count) == 1, "one drift: the base rules"
    # the VPN client's batch went in before the drift was counted
    assert ("restore", 4242) in seen_at_count[0]
    assert any("installed the base rules" in f for f in _status(agent)["fixes"])
    assert _status(agent)["reconciles"] == before + 1
    assert _status(agent)["last_apply"]["path"] == "full"


def test_status_says_who_wrote_it_and_when(tmp_path):
    agent = _agent(tmp_path)
    agent._write_status()
    st = _status(agent)
    assert st["pid"] == __import__("os").getpid() and abs(st["written_at"] - time.time()) < 60
    fresh, line = status_freshness(st, time.time())
    assert fresh and f"agent process {st['pid']}" in line


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_of_a_gone_agent_is_called_stale():
    fresh, line = status_freshness({"written_at": time.time() - 5, "pid": _dead_pid()}, time.time())
    assert not fresh and "STALE" in line and "is gone" in line


def test_status_not_rewritten_for_long_is_called_stale():
    import os

    fresh, line = status_freshness({"written_at": time.time() - 300, "pid": os.getpid()}, time.time())
    assert not fresh and "has not updated its status for 300 s" in line


@pytest.mark.parametrize("alive", [True, False])
def test_status_command_exit_code_follows_the_agent(tmp_path, alive):
    import os

    data_dir = tmp_path / "node"
    data_dir.mkdir()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"name": "st2", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                                   "data_dir": str(data_dir)}))
    pid = os.getpid() if alive else _dead_pid()
    (data_dir / "status.json").write_text(json.dumps({
        "node": "st2", "written_at": time.time(), "pid": pid, "reconciles": 3, "vpn_checks": 9,
        "vpn": {"connected": True, "vpn_ip": "10.76.0.9", "since": time.time(), "error": None,
                "cert_expires": None, "renewals": 0}, "runs": [], "fixes": []}))
    proc = subprocess.run([sys.executable, "-m", "vpnagent.cli", "status", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert "VPN connected  ip 10.76.0.9" in proc.stdout
    if alive:
        assert proc.returncode == 0 and f"by agent process {pid}" in proc.stdout
    else:
        assert proc.returncode == 1 and "STALE" in proc.stdout, proc.stdout


def test_firewall_drift_names_the_base_rules():
    """The words the status shows for the case above come from firewall.drift."""
    desired = firewall.VpnClientRules("10.76.0.3", "eth1", "172.30.0.0/24", runs=())
    empty = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
    found = firewall.drift(desired, firewall.parse_save(empty))
    assert found == ["installed the base rules (FORWARD policy DROP, dispatch chains, MSS clamp)"]


def test_removed_run_leaves_the_allow_rules_of_its_family(tmp_path):
    """Runs 1 and 2 of one family on this node admit each other's holder (hairpin). When 2
    ends, the batch that removes its chains also rewrites 1's chain without 2's address: a
    new holder that gets that address must not inherit the trust."""
    agent, runner = _synced_agent(tmp_path)
    for run_id, ip in ((1, "172.30.0.11"), (2, "172.30.0.12")):
        agent.runs[run_id] = agent_mod.LiveRun(run_id, 7, "img", f"h{run_id}", ip, 100 + run_id,
                                               ports=[agent_mod.PortMap(6000 + run_id, 8888, "echo")],
                                               peer_run_ids=(1, 2))
    agent.apply_network()
    assert "-s 172.30.0.12/32" in runner.ns(4242).save("filter")  # run 1 admits run 2's holder while both live
    runner.take_calls()
    agent.runs.pop(2)
    agent.apply_network()
    batches = [c[2] for c in runner.take_calls() if c[0] == "restore"]
    assert len(batches) == 1, "one batch for the removal"
    assert "-X VA-2-N" in batches[0] and "-X VA-2-F" in batches[0]
    assert ":VA-1-F - [0:0]" in batches[0] and "172.30.0.12" not in batches[0]
    assert "172.30.0.12" not in runner.ns(4242).save("filter")


# --- what `vpnagent status` says about the VPN session, the server and a stopped agent

# noon today: times a few minutes before it are today's (HH:MM:SS without a date)
NOW = time.mktime(time.localtime()[:3] + (12, 0, 0, 0, 0, -1))


def _status_file(**changes) -> dict:
    """A status.json of a live agent (this process) written at NOW, its VPN client connected."""
    import os

    now = NOW
    status = {"node": "st3", "written_at": now, "pid": os.getpid(), "reconciles": 3, "vpn_checks": 9,
              "vpn": {"connected": True, "vpn_ip": "10.76.0.9", "since": now - 600, "error": None,
                      "cert_expires": None, "renewals": 0}, "runs": [], "fixes": []}
    vpn = changes.pop("vpn", {})
    status.update(changes)
    status["vpn"].update(vpn)
    return status


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def test_connected_with_the_session_up_or_not_reported():
    """Files of older agents have no "session": tun0 is all they knew."""
    for status in (_status_file(vpn={"session": {"state": "up", "since": NOW - 60,
                                                 "detail": "Initialization Sequence Completed"}}),
                   _status_file()):
        lines, code = render_status(status, NOW)
        assert lines[0].startswith("node st3: VPN connected  ip 10.76.0.9  since ")
        assert code == 0 and not any("server:" in line for line in lines)


def test_reconnecting_session_is_not_called_connected():
    lost = NOW - 90
    status = _status_file(vpn={"connected": False,  # what the agent writes while the session is lost
                               "session": {"state": "reconnecting", "since": lost,
                                           "detail": "[vpnagent-openvpn-server] Inactivity timeout "
                                                     "(--ping-restart), restarting"}})
    lines, code = render_status(status, NOW)
    assert lines[0].startswith(f"node st3: VPN NOT connected, session RECONNECTING since {_clock(lost)} "
                               "([vpnagent-openvpn-server] Inactivity timeout (--ping-restart), restarting)  ip 10.76.0.9")
    assert code == 0, "the agent runs and says what it sees; the exit code is about the agent"


def test_session_lost_days_ago_shows_the_date():
    lost = NOW - 3 * 86400
    status = _status_file(vpn={"session": {"state": "reconnecting", "since": lost, "detail": "TLS Error: x"}})
    lines, _ = render_status(status, NOW)
    assert f"RECONNECTING since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(lost))} (TLS Error: x)" in lines[0]


def test_starting_session_and_session_of_a_disconnected_client():
    starting = _status_file(vpn={"session": {"state": "starting", "since": None, "detail": "TLS: Initial packet"}})
    assert "VPN connected, session STARTING (TLS: Initial packet)  ip" in render_status(starting, NOW)[0][0]
    down = _status_file(vpn={"connected": False, "vpn_ip": None, "session": None})
    assert render_status(down, NOW)[0][0].startswith("node st3: VPN NOT connected  ip -")


def test_server_unreachable_or_refusing_gets_a_line():
    t = NOW - 30
    unreachable = _status_file(server={"state": "unreachable", "since": t, "error": "connection refused"})
    lines, code = render_status(unreachable, NOW)
    assert f"  server: unreachable since {_clock(t)} (connection refused)" in lines and code == 0
    refused = _status_file(server={"state": "refused", "since": t, "error": "401 node removed"})
    assert f"  server: refusing this node (401 node removed) since {_clock(t)}" in render_status(refused, NOW)[0]
    ok = _status_file(server={"state": "ok", "since": t, "error": None})
    assert not any("server:" in line for line in render_status(ok, NOW)[0])


def test_stopped_agent_says_what_it_left_running_and_exits_1():
    written = NOW - 120
    status = _status_file(stopped=True, written_at=written, pid=_dead_pid())
    lines, code = render_status(status, NOW)
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(written))
    assert lines[0] == (f"agent stopped at {at}; its runs and VPN client were left running "
                        "for the next agent to adopt")
    assert code == 1
    assert any("STALE" in line for line in lines), "the freshness line stays as it is"


def test_stopped_agent_through_the_command(tmp_path):
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"name": "st3", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                                   "data_dir": str(data_dir)}))
    (data_dir / "status.json").write_text(json.dumps(_status_file(stopped=True, pid=_dead_pid(),
                                                                  written_at=time.time())))
    proc = subprocess.run([sys.executable, "-m", "vpnagent.cli", "status", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout.startswith("agent stopped at "), proc.stdout


def test_adopted_runs_and_waiting_reports_get_a_line():
    status = _status_file(adopted=[7, 9], reports_waiting=[12])
    lines, _ = render_status(status, NOW)
    assert "adopted at start from the previous agent: run(s) 7, 9" in lines
    assert "reports waiting for the server (journaled, sent when it answers): run(s) 12" in lines
    assert not any("adopted" in line or "waiting" in line for line in render_status(_status_file(), NOW)[0])


def test_the_event_stream_gets_a_line_saying_whether_the_node_is_told_or_polls():
    lines, _ = render_status(_status_file(push={"state": "connected", "connects": 2, "events": 7,
                                                "error": None}), NOW)
    assert "  event stream: connected (2 connect(s), 7 event(s))" in lines
    lines, _ = render_status(_status_file(push={"state": "away", "connects": 2, "events": 7,
                                                "error": "the event stream broke: reset"}), NOW)
    assert "  event stream: away (2 connect(s), 7 event(s)); the event stream broke: reset" in lines
    assert any("polling every poll_interval" in line
               for line in render_status(_status_file(push={"state": "unsupported"}), NOW)[0])
    assert not any("event stream" in line for line in render_status(_status_file(), NOW)[0])  # older agents
