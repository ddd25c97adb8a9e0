"""Shared fixtures. Docker-marked tests skip on a machine without Docker/root, except when
VPNAGENT_REQUIRE_DOCKER=1 (set by .ci/run): then the missing engine is a failure. Root-marked
tests (real network namespaces the test creates, iptables, no Docker) follow the same rule."""
from __future__ import annotations

import os
import shutil

import pytest


def _require_docker() -> bool:
    return os.environ.get("VPNAGENT_REQUIRE_DOCKER") == "1"


def docker_unavailable(reason: str, what: str = "docker test") -> None:
    """Skip, or fail when the environment says Docker (and root) tests must run."""
    if _require_docker():
        pytest.fail(f"{what} cannot run: {reason} (VPNAGENT_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


ROOT_TOOLS = ("ip", "nsenter", "iptables-save", "iptables-restore")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A `root` test needs root and the namespace tools; without them it skips, or fails
    where the environment says these tests must run (VPNAGENT_REQUIRE_DOCKER=1)."""
    if item.get_closest_marker("root") is None:
        return
    if os.geteuid() != 0:
        docker_unavailable("needs root for network namespaces", "root test")
    missing = [tool for tool in ROOT_TOOLS if shutil.which(tool) is None]
    if missing:
        docker_unavailable(f"needs {', '.join(missing)}; apt-get install iproute2 iptables util-linux", "root test")


@pytest.fixture(scope="session")
def docker_client():
    if os.geteuid() != 0:
        docker_unavailable("needs root")
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine"
        docker_unavailable(f"Docker engine unreachable: {exc}")
    yield client
    client.close()
