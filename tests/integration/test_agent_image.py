"""The node agent's own image: it builds, its CLI works, and the run line of
docs/operator-guide.md ("Running the agent in a container") runs a real node of the session
cluster: the containerised agent connects its VPN, `vpnagent status` works inside it,
`docker stop` (SIGTERM) leaves its VPN client for the next agent and `vpnagent cleanup` in the
same image removes everything; and `docker restart` of the agent's container keeps a live
run answering every request of a peer."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker.errors
import pytest

from tests.waiting import wait_for
from vpnagent.config import load_config
from vpnagent.image_recipes import AGENT_IMAGE
from vpnagent.runtime.docker_images import build_agent_image

pytestmark = pytest.mark.docker

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
# The flags of the documented run line; the test checks the guide still says exactly these.
# Capabilities rather than --privileged: the narrow set is what the agent needs, and
# --privileged cannot start at all where dockerd's own bounding set lacks a capability.
RUN_FLAGS = ["--network", "host", "--pid", "host",
             "--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN", "--cap-add", "SYS_PTRACE",
             "-v", "/var/run/docker.sock:/var/run/docker.sock"]


@pytest.fixture(scope="module")
def agent_image(docker_client) -> str:
    return build_agent_image(docker_client, progress=lambda m: print(f"[agent image] {m}", flush=True))


def _run(docker_client, argv: list[str]) -> str:
    return docker_client.containers.run(AGENT_IMAGE, argv, remove=True, network_mode="none").decode()


def test_agent_image_has_the_cli_and_the_tools(docker_client, agent_image):
    assert docker_client.images.get(AGENT_IMAGE).id == agent_image
    assert "vpnagent node agent" in _run(docker_client, ["vpnagent", "--help"])
    assert "| `server_url` | string | **required**" in _run(docker_client, ["vpnagent", "config-reference"])
    # the image's default command is the help, so a bare `docker run` explains itself
    assert "usage: vpnagent" in docker_client.containers.run(AGENT_IMAGE, remove=True, network_mode="none").decode()
    tools = _run(docker_client, ["sh", "-c", "iptables -V; nsenter --version; ip -V"])
    # the agent's rules go into the host's tables: the image's backend must be the host's
    host_iptables = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=True).stdout
    assert "(nf_tables)" in host_iptables and "(nf_tables)" in tools
    assert "util-linux" in tools and "iproute2" in tools
    # a second build finds it cached
    lines: list[str] = []
    assert build_agent_image(docker_client, progress=lines.append) == agent_image
    assert f"{AGENT_IMAGE}: cached" in lines


def test_the_guide_documents_this_run_line():
    text = GUIDE.read_text()
    block = text[text.index("docker run -d --name vpnagent-node-a"):]
    line = " ".join(block[:block.index("```")].replace("\\\n", " ").split())
    assert " ".join(RUN_FLAGS) in line
    assert f"{AGENT_IMAGE} vpnagent run --config /etc/vpnagent/node-a.yaml" in line


def _host_chains() -> str:
    return subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout


def _logs(name: str) -> str:
    proc = subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True, check=False)
    return proc.stdout + proc.stderr


def test_documented_run_line_runs_a_node(cluster, docker_client, agent_image):
    node = cluster.add_node(f"{cluster.prefix}k")
    cfg = load_config(node.config_path)
    ca_dir = cluster.ca_file.parent
    name = f"{cluster.prefix}-agent-{node.name}"
    argv = ["docker", "run", "-d", "--name", name, *RUN_FLAGS,
            "-v", f"{node.config_path}:{node.config_path}:ro",
            "-v", f"{ca_dir}:{ca_dir}:ro",  # server_ca_file points in here
            "-v", f"{node.data_dir}:{node.data_dir}",  # the same path as on the host
            AGENT_IMAGE, "vpnagent", "run", "--config", str(node.config_path)]
    try:
        started = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        assert started.returncode == 0, started.stderr
        def connected_status() -> dict | None:
            state = docker_client.containers.get(name).status
            assert state == "running", f"agent container {state}:\n{_logs(name)}"
            return node.status()  # written by the containerised agent into the shared data dir

        status = wait_for(connected_status, "the containerised agent to connect its VPN", 90, 0.2,
                          until=lambda st: st and st["vpn"]["connected"])
        assert status["node"] == node.name

        shown = subprocess.run(["docker", "exec", name, "vpnagent", "status", "--config", str(node.config_path)],
                               capture_output=True, text=True, timeout=30, check=False)
        assert shown.returncode == 0, shown.stderr
        assert f"node {node.name}: VPN connected  ip {status['vpn']['vpn_ip']}" in shown.stdout
        # what it made lives on the host: the VPN client container, the network, the host chain
        vpn = docker_client.containers.get(cfg.vpn_container)
        assert vpn.status == "running"
        docker_client.networks.get(cfg.isolated_network)
        assert f":{cfg.host_chain} " in _host_chains()

        stop = subprocess.run(["docker", "stop", "-t", "20", name], capture_output=True, text=True, timeout=60,
                              check=False)
        assert stop.returncode == 0, stop.stderr
        exit_code = docker_client.containers.get(name).attrs["State"]["ExitCode"]
        assert exit_code == 0, f"agent exited {exit_code} (137 = killed after the 20 s):\n{_logs(name)}"
        # a stopped agent leaves the node as it is, for the next agent to adopt ...
        assert docker_client.containers.get(cfg.vpn_container).status == "running"
        assert node.status()["stopped"] is True
        # ... and cleanup, run from the same image, removes everything
        cleaned = subprocess.run(["docker", "run", "--rm", *RUN_FLAGS, "-v", f"{node.config_path}:{node.config_path}:ro",
                                  "-v", f"{ca_dir}:{ca_dir}:ro", "-v", f"{node.data_dir}:{node.data_dir}", AGENT_IMAGE, "vpnagent", "cleanup",
                                  "--config", str(node.config_path)], capture_output=True, text=True, timeout=120,
                                 check=False)
        assert cleaned.returncode == 0, cleaned.stderr
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(cfg.vpn_container)
        with pytest.raises(docker.errors.NotFound):
            docker_client.networks.get(cfg.isolated_network)
        assert f":{cfg.host_chain} " not in _host_chains()
        assert docker_client.containers.list(all=True, filters={"label": f"vpnagent.node={node.name}"}) == []
    finally:
        try:
            docker_client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        # whatever the agent did not remove (a failed start, a kill): the host's cleanup does it
        subprocess.run([sys.executable, "-m", "vpnagent.cli", "cleanup", "--config", str(node.config_path)],
                       capture_output=True, timeout=120, check=False)


def test_docker_restart_of_the_containerised_agent_keeps_a_live_run(cluster, docker_client, agent_image):
    """A node of the collaboration moves from its host agent into the agent container (which
    adopts its VPN client and runs), then the container is restarted with `docker restart`
    while a peer sends a request every 50 ms to a live run: none fails, and the run's
    result reaches the server."""
    from .test_survive import _family_run, no_request_fails_while
    from .util import user_session, vpn_container, wait_task_done

    a, b = cluster.nodes[0], cluster.nodes[1]
    http = user_session(cluster)
    name = f"{cluster.prefix}-agent-{b.name}"
    ca_dir = cluster.ca_file.parent
    cluster.stop_node(b, clean=False)  # the host agent leaves; the containerised one adopts
    argv = ["docker", "run", "-d", "--name", name, *RUN_FLAGS, "-v", f"{b.config_path}:{b.config_path}:ro",
            "-v", f"{ca_dir}:{ca_dir}:ro", "-v", f"{b.data_dir}:{b.data_dir}",
            AGENT_IMAGE, "vpnagent", "run", "--config", str(b.config_path)]
    try:
        (b.data_dir / "status.json").unlink(missing_ok=True)
        started = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        assert started.returncode == 0, started.stderr
        wait_for(b.status, "the containerised agent to take over", 90, 0.2,
                 until=lambda st: st and st["vpn"]["connected"] and st.get("adopted_at"))
        task, run_id, ip, port = _family_run(cluster, docker_client, http, a, b, seconds=40)
        vpn_before = vpn_container(docker_client, b.name).id

        def restart() -> None:
            restarted = subprocess.run(["docker", "restart", "-t", "20", name], capture_output=True, text=True,
                                       timeout=60, check=False)
            assert restarted.returncode == 0, restarted.stderr
            wait_for(b.status, "the restarted agent to adopt the run", 60, 0.1,
                     until=lambda st: st and not st.get("stopped") and run_id in (st.get("adopted") or []))

        no_request_fails_while(docker_client, a.name, ip, port, 15, 200, restart)
        assert vpn_container(docker_client, b.name).id == vpn_before
        done = wait_task_done(cluster, http, task["id"], 90)
        run = next(r for r in done["runs"] if r["id"] == run_id)
        assert run["status"] == "completed" and run["result"], run["log"]
    finally:
        try:
            docker_client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        if b.proc is None:  # back to the host agent, for the tests after this one
            cluster.start_node(b)
            cluster.wait_connected(90, nodes=[b])
