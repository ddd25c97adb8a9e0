"""`vpnagent logs RUN [-f]` over the runtime fake: the run's algorithm container is found by
its labels, its log so far is printed, -f follows it until it exits, and a run that is not
here (elsewhere, finished) is one clear line with where its log is, exit 1."""
from __future__ import annotations

import io

import pytest
import yaml

import vpnagent.runtime
from tests.fakes import FakeRuntime
from vpnagent import agent, cli, runlogs
from vpnagent.runtime import Container, EngineError


def _container(cid: str, node: str, run: int, role: str, status: str = "running", started: float = 1.0) -> Container:
    return Container(cid, f"{node}-{role}-{run}-{cid}", status, {"vpnagent.node": node, "vpnagent.run": str(run),
                                                               "vpnagent.role": role}, started_at=started)


@pytest.fixture
def rt(monkeypatch) -> FakeRuntime:
    fake = FakeRuntime()
    fake.add(_container("h7", "node-a", 7, agent.ROLE_HOLDER))
    fake.add(_container("a7", "node-a", 7, agent.ROLE_ALGORITHM))
    fake.add(_container("b7", "node-b", 7, agent.ROLE_ALGORITHM))  # another node's run of the same number
    fake.add(_container("a8", "node-a", 8, agent.ROLE_ALGORITHM, status="exited"))
    fake.log_text.update({"h7": b"holder\n", "a7": b"step 1\n", "b7": b"node b\n", "a8": b"done\n"})
    monkeypatch.setattr(vpnagent.runtime, "connect_engine", lambda *a, **kw: fake)
    return fake


@pytest.fixture
def config(tmp_path, monkeypatch) -> str:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"name": "node-a", "server_url": "https://127.0.0.1:1/api", "api_key": "k",
                                    "data_dir": str(tmp_path / "data")}))
    monkeypatch.setenv("VPNAGENT_CONFIG", str(path))
    return str(path)


def test_the_role_label_is_the_agents():
    assert runlogs.ROLE_ALGORITHM == agent.ROLE_ALGORITHM


def test_find_algorithm_by_node_run_and_role(rt):
    assert runlogs.find_algorithm(rt, "node-a", 7).id == "a7"
    assert runlogs.find_algorithm(rt, "node-b", 7).id == "b7"
    with pytest.raises(runlogs.RunNotHere, match="run 9 has no algorithm container on node node-a"):
        runlogs.find_algorithm(rt, "node-a", 9)


def test_logs_prints_the_output_so_far_without_following(rt, config, capsysbinary):
    rt.log_follow["a7"] = [b"never read\n"]
    assert cli.main(["logs", "7"]) == 0
    assert capsysbinary.readouterr().out == b"step 1\n"
    assert "follow" not in rt.log_calls[-1] and rt.inspect("a7").running


def test_logs_follow_prints_what_comes_until_the_algorithm_exits(rt, config, capsysbinary):
    rt.log_follow["a7"] = [b"step 2\n", b"step 3\n"]
    assert cli.main(["logs", "-f", "7"]) == 0
    assert capsysbinary.readouterr().out == b"step 1\nstep 2\nstep 3\n"
    assert rt.log_calls[-1]["follow"] is True and not rt.inspect("a7").running


def test_logs_of_an_exited_algorithm_print_it_once_even_with_follow(rt, config, capsysbinary):
    assert cli.main(["logs", "8", "--follow", "--config", config]) == 0
    assert capsysbinary.readouterr().out == b"done\n"
    assert "follow" not in rt.log_calls[-1]


@pytest.mark.parametrize("run", ["9", "12345"])
def test_a_run_not_on_this_node_is_one_line_saying_where_its_log_is(rt, config, capsysbinary, run):
    before = dict(rt.containers)
    assert cli.main(["logs", run, "-f"]) == 1
    captured = capsysbinary.readouterr()
    err = captured.err.decode()
    assert captured.out == b"" and err.count("\n") == 1 and "Traceback" not in err
    assert f"run {run} has no algorithm container on node node-a" in err and f"GET /api/run/{run}" in err
    assert rt.containers == before and rt.calls == []  # looking changed nothing


def test_ctrl_c_ends_following_quietly_and_leaves_the_run(rt, config, capsysbinary, monkeypatch):
    def interrupted(container_id, *, follow=False):
        yield b"step 1\n"
        raise KeyboardInterrupt

    monkeypatch.setattr(rt, "log_stream", interrupted)
    assert cli.main(["logs", "7", "-f"]) == 130
    captured = capsysbinary.readouterr()
    assert captured.out == b"step 1\n" and captured.err == b""
    assert rt.inspect("a7").running and rt.calls == []


def test_an_engine_failure_is_one_line(rt, config, capsysbinary, monkeypatch):
    def broken(labels):
        raise EngineError("list containers: Cannot connect to the Docker daemon")

    monkeypatch.setattr(rt, "list", broken)
    assert cli.main(["logs", "7"]) == 1
    err = capsysbinary.readouterr().err.decode()
    assert err == "vpnagent: cannot read the log of run 7: list containers: Cannot connect to the Docker daemon\n"


@pytest.mark.parametrize("bad", ["x", "0", "-3", "7.5", "²"])
def test_a_bad_run_id_is_a_usage_error(rt, config, capsysbinary, bad):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["logs", "--", bad] if bad.startswith("-") else ["logs", bad])
    assert exit_.value.code == 2
    assert f"{bad!r} is not a run id" in capsysbinary.readouterr().err.decode()
    assert rt.log_calls == []


def test_a_reader_that_goes_away_ends_it_quietly(rt, config, monkeypatch, capsys):
    class ClosedPipe:
        def write(self, data: bytes) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    class Stdout:
        buffer = ClosedPipe()

        def fileno(self) -> int:
            raise io.UnsupportedOperation("fileno")

    monkeypatch.setattr("sys.stdout", Stdout())
    assert cli.main(["logs", "7", "-f"]) == 0  # `vpnagent logs 7 -f | head`
    assert capsys.readouterr().err == "" and rt.inspect("a7").running
