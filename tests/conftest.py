"""Shared fixtures. Docker-marked tests skip on a machine without Docker/root, except when
VPNAGENT_REQUIRE_DOCKER=1 (set by .ci/run): then the missing engine is a failure."""
from __future__ import annotations

import os

import pytest


def _require_docker() -> bool:
    return os.environ.get("VPNAGENT_REQUIRE_DOCKER") == "1"


def docker_unavailable(reason: str) -> None:
    """Skip, or fail when the environment says Docker tests must run."""
    if _require_docker():
        pytest.fail(f"docker test cannot run: {reason} (VPNAGENT_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


@pytest.fixture
def root() -> None:
    """For `root`-marked tests (network namespaces, no Docker): skip without root, or fail
    where .ci/run says every such test must run."""
    if os.geteuid() != 0:
        docker_unavailable("needs root for a network namespace")


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
