"""`vpnagent logs RUN [-f]` against the real engine: an algorithm's output is readable while
it runs, -f follows it until the algorithm exits (or Ctrl-C, which leaves the run alone),
and a finished run says where its log went."""
from __future__ import annotations

import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.waiting import wait_for
from vpnagent.runtime import NetworkSpec, WorkloadSpec
from vpnagent.runtime.dockerengine import DockerRuntime

from .util import live_run, long_peer, user_session, wait_live, wait_task_done

pytestmark = pytest.mark.docker
STARTED = "waiting up to"  # the echo peer's first log line says how long it serves


def _logs(node, run_id: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnagent.cli", "logs", str(run_id), "--config",
                           str(node.config_path), *extra], capture_output=True, text=True, timeout=60)


def _follow(node, run_id: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vpnagent.cli", "logs", "-f", str(run_id), "--config",
                             str(node.config_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _first_line(proc: subprocess.Popen, timeout: float = 30) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no log line within {timeout} s"
    return proc.stdout.readline()


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_log_stream_follows_a_container_until_it_exits(docker_client, images):
    rt = DockerRuntime(docker_client)
    tag = f"vart{uuid.uuid4().hex[:6]}"
    net = rt.ensure_network(NetworkSpec(f"{tag}-net", f"{tag}br", labels={"vpnagent.test": tag}))
    try:
        c = rt.start_holder(WorkloadSpec(name=f"{tag}-talker", image="vpnagent/algo-base:latest",
                                         command=("sh", "-c", "echo one; sleep 3; echo two"), network=net.name,
                                         labels={"vpnagent.test": tag}))
        t0 = time.monotonic()
        seen: list[tuple[float, bytes]] = []
        for chunk in rt.log_stream(c.id, follow=True):
            seen.append((time.monotonic() - t0, chunk))
        text = b"".join(chunk for _, chunk in seen)
        assert text == b"one\ntwo\n"
        assert seen[0][0] < 2.5, "the first line came only when the container exited"  # while it ran
        assert not rt.inspect(c.id).running  # the stream ended because the container exited
        assert b"".join(rt.log_stream(c.id)) == text  # without follow: the same, at once
    finally:
        for c in rt.list({"vpnagent.test": tag}):
            rt.remove(c.id)
        rt.remove_network(net.name)


def test_logs_shows_a_running_algorithms_output_and_follows_it(cluster):
    http = user_session(cluster)
    node = cluster.nodes[0]
    task = long_peer(cluster, http, node, seconds=25)  # waits for 50 peers that never come, then ends
    run_id = task["runs"][0]["id"]
    wait_live(node, run_id)

    # without -f: what the algorithm wrote so far, while it still runs
    so_far = wait_for(lambda: _logs(node, run_id), "the run's first log line", 30, 0.5,
                      until=lambda p: STARTED in p.stdout)
    assert so_far.returncode == 0 and live_run(node, run_id) is not None

    # Ctrl-C ends following quietly and leaves the run running
    interrupted = _follow(node, run_id)
    try:
        assert STARTED in _first_line(interrupted)
        interrupted.send_signal(signal.SIGINT)
        _, err = interrupted.communicate(timeout=20)
        assert interrupted.returncode == 130 and "Traceback" not in err, err
    finally:
        _end(interrupted)
    assert live_run(node, run_id) is not None

    # -f: follows until the algorithm exits, then ends by itself
    follower = _follow(node, run_id)
    try:
        assert STARTED in _first_line(follower)
        assert follower.poll() is None  # still following: the run goes on
        rest, err = follower.communicate(timeout=90)
        assert follower.returncode == 0, err
        assert "probing" in rest  # written after the follower started, at the end of the wait
    finally:
        _end(follower)

    wait_task_done(cluster, http, task["id"])
    gone = wait_for(lambda: _logs(node, run_id), "the finished run's container to be removed", 30, 0.5,
                    until=lambda p: p.returncode == 1)
    assert f"run {run_id} has no algorithm container on node {node.name}" in gone.stderr
    assert f"GET /api/run/{run_id}" in gone.stderr and gone.stderr.count("\n") == 1

    other = cluster.nodes[1]  # the same run asked on another node: not there
    elsewhere = _logs(other, run_id)
    assert elsewhere.returncode == 1 and f"no algorithm container on node {other.name}" in elsewhere.stderr
