"""Image recipes: the hash follows exactly what goes into an image; the docker test builds
(or finds cached) the real images and checks what the node relies on."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vpnagent import image_recipes as recipes
from vpnagent.image_recipes import (ALGO_BASE_RECIPE, ECHO_FILES, VPN_RECIPE, AlgorithmRecipe, DebootstrapRecipe,
                                    echo_recipe)
from vpnagent.runtime import docker_images


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    for rel in ECHO_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    return tmp_path


def test_echo_hash_is_stable_and_follows_file_content(fake_repo: Path):
    h1 = echo_recipe(fake_repo).recipe_hash("sha256:base1")
    assert echo_recipe(fake_repo).recipe_hash("sha256:base1") == h1
    (fake_repo / "test_algorithms/echo.py").write_text("# changed\n")
    h2 = echo_recipe(fake_repo).recipe_hash("sha256:base1")
    assert h2 != h1
    # an unrelated file in the tree changes nothing
    (fake_repo / "vpnagent/agent.py").write_text("x = 1\n")
    assert echo_recipe(fake_repo).recipe_hash("sha256:base1") == h2
    # a rebuilt base image means a rebuilt echo image
    assert echo_recipe(fake_repo).recipe_hash("sha256:base2") != h2


def test_echo_context_holds_dockerfile_and_packages(fake_repo: Path):
    with tarfile.open(fileobj=echo_recipe(fake_repo).context()) as tar:
        names = set(tar.getnames())
        dockerfile = tar.extractfile("Dockerfile").read().decode()
    assert names == {"Dockerfile", *(f"app/{rel}" for rel in ECHO_FILES)}
    assert "EXPOSE 8888" in dockerfile and "LABEL p8888=echo" in dockerfile
    assert f"FROM {recipes.ALGO_BASE_IMAGE}" in dockerfile and "PYTHONPATH=/app" in dockerfile


def test_missing_echo_file_is_a_clear_error(fake_repo: Path):
    (fake_repo / "vpnagent/algorithm_client.py").unlink()
    with pytest.raises(recipes.ImageBuildError, match="algorithm_client.py"):
        echo_recipe(fake_repo).recipe_hash("b")


def test_algorithm_recipe_carries_extra_host_files(fake_repo: Path, tmp_path: Path):
    # how examples and test algorithms build theirs: repo files under app/, wheels beside them
    wheel = tmp_path / "wheelhouse" / "x-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK1")

    def recipe() -> AlgorithmRecipe:
        return AlgorithmRecipe("vpnagent/other:latest", ("test_algorithms/echo.py",), "FROM base\n",
                               root=fake_repo, extra={f"wheels/{wheel.name}": wheel})

    with tarfile.open(fileobj=recipe().context()) as tar:
        assert set(tar.getnames()) == {"Dockerfile", "app/test_algorithms/echo.py", f"wheels/{wheel.name}"}
    h1 = recipe().recipe_hash("sha256:base1")
    wheel.write_bytes(b"PK2")
    assert recipe().recipe_hash("sha256:base1") != h1


def test_recipes_need_no_container_engine():
    # the recipes are data: reading them (tests, a registry-based runtime) must not load docker
    code = "import sys, vpnagent.image_recipes; sys.exit('docker' in sys.modules)"
    repo = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, check=False).returncode == 0


def test_debootstrap_hash_follows_packages_only():
    assert VPN_RECIPE.recipe_hash() == DebootstrapRecipe(VPN_RECIPE.tag, VPN_RECIPE.packages,
                                                         later_suite=VPN_RECIPE.later_suite).recipe_hash()
    assert VPN_RECIPE.recipe_hash() != DebootstrapRecipe(VPN_RECIPE.tag, VPN_RECIPE.packages).recipe_hash()
    assert VPN_RECIPE.recipe_hash() != ALGO_BASE_RECIPE.recipe_hash()
    more = DebootstrapRecipe(VPN_RECIPE.tag, VPN_RECIPE.packages + ("iperf3",))
    assert more.recipe_hash() != VPN_RECIPE.recipe_hash()
    assert "python3" in ALGO_BASE_RECIPE.packages and "python3-minimal" not in ALGO_BASE_RECIPE.packages
    cmd = VPN_RECIPE.command("/tmp/x.tar")
    assert cmd[0] == "mmdebstrap" and "--variant=essential" in cmd
    assert "--include=openvpn,iptables,iproute2,iputils-ping,procps,wireguard-go/trixie,wireguard-tools" in cmd
    # Debian 12 stays the default release; Debian 13 is a second source for wireguard-go only
    assert 'APT::Default-Release "bookworm"' in " ".join(cmd) and cmd[-2:] == [
        f"deb {recipes.MIRROR} bookworm main", f"deb {recipes.MIRROR} trixie main"]
    assert ALGO_BASE_RECIPE.command("/tmp/x.tar")[-1] == recipes.MIRROR  # the others: one source, as before
    assert f"LABEL {recipes.RECIPE_LABEL}={VPN_RECIPE.recipe_hash()}" in VPN_RECIPE.changes()


def test_mmdebstrap_missing_names_the_fix(monkeypatch):
    class NoImage:
        class images:
            @staticmethod
            def get(tag):
                import docker.errors
                raise docker.errors.ImageNotFound(tag)

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(recipes.ImageBuildError, match="apt-get install mmdebstrap"):
        docker_images._build_debootstrap(NoImage(), VPN_RECIPE, progress=lambda m: None, force=False)


@pytest.mark.docker
def test_images_build_and_work(docker_client):
    lines: list[str] = []
    ids = docker_images.build_images(docker_client, progress=lines.append)
    assert set(ids) == {recipes.VPN_IMAGE, recipes.ALGO_BASE_IMAGE, recipes.ECHO_IMAGE}
    # a second call finds everything cached
    lines.clear()
    assert docker_images.build_images(docker_client, progress=lines.append) == ids
    assert sorted(lines) == sorted(f"{tag}: cached" for tag in ids)

    echo_cfg = docker_client.images.get(recipes.ECHO_IMAGE).attrs["Config"]
    assert echo_cfg["Labels"]["p8888"] == "echo"
    assert recipes.RECIPE_LABEL in echo_cfg["Labels"]
    assert "8888/tcp" in echo_cfg["ExposedPorts"]
    assert echo_cfg["Cmd"] == ["python3", "-m", "test_algorithms.echo"]

    out = docker_client.containers.run(recipes.VPN_IMAGE, ["openvpn", "--version"], remove=True,
                                       network_mode="none")
    assert b"OpenVPN 2." in out
    out = docker_client.containers.run(
        recipes.ECHO_IMAGE, ["python3", "-c", "import http.server, test_algorithms.echo; print('ok')"],
        remove=True, network_mode="none")
    assert out.strip() == b"ok"


@pytest.mark.docker
def test_echo_image_peer_runs_with_only_the_standard_library(docker_client, tmp_path):
    """The echo image in peer mode against a fake API on loopback (host network, so nothing
    leaves this machine): it serves, probes itself, is probed by us, and writes its result."""
    import json
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from test_algorithms.echo import probe

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        echo_port = s.getsockname()[1]
    seen: list[str] = []

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(f"{self.path} {self.headers.get('Authorization')}")
            body = json.dumps({"addresses": [{"ip": "127.0.0.1", "port": echo_port, "label": "echo",
                                              "organization_id": 1, "task_id": 5, "parent_id": 4,
                                              "run_id": 9}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    api = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=api.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "input.json").write_text(json.dumps(
        {"method": "peer", "kwargs": {"timeout": 20, "n_peers": 1, "port": echo_port}}))
    container = docker_client.containers.run(
        recipes.ECHO_IMAGE, detach=True, network_mode="host",
        volumes={str(run_dir): {"bind": "/mnt/run", "mode": "rw"}},
        environment={"VPNAGENT_SERVER_URL": f"http://127.0.0.1:{api.server_address[1]}/api",
                     "VPNAGENT_TOKEN": "tok", "VPNAGENT_TASK_ID": "5", "VPNAGENT_ORGANIZATION_ID": "1",
                     "VPNAGENT_RUN_ID": "9", "VPNAGENT_INPUT_FILE": "/mnt/run/input.json",
                     "VPNAGENT_OUTPUT_FILE": "/mnt/run/output.json"})
    try:
        pair = probe("127.0.0.1", echo_port, "central@org1", "org1", retry_for=15)
        assert pair["ok"], pair
        status = container.wait(timeout=30)
        logs = container.logs().decode(errors="replace")
        assert status["StatusCode"] == 0, logs
    finally:
        container.remove(force=True)
        api.shutdown()
        api.server_close()
    result = json.loads((run_dir / "output.json").read_text())
    assert result["received_from"] == ["central@org1", "org1"]
    assert [(p["from"], p["to"], p["ok"]) for p in result["pairs"]] == [("org1", "org1", True)]
    assert result["errors"] == []
    assert any("/api/vpn/algorithm/addresses?label=echo Bearer tok" == s for s in seen), seen
