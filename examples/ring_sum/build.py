"""Build the ring_sum example image from Python, as `vpnagent images build-algorithm
examples/ring_sum` does from the shell (the integration tests call this): the directory's
vpnagent-algorithm.yaml on top of the algorithm base image (`vpnagent images build`)."""
from __future__ import annotations

from pathlib import Path

from vpnagent.algorithm_recipe import load_algorithm

HERE = Path(__file__).resolve().parent
TAG = load_algorithm(HERE).tag


def build(client=None, force: bool = False, progress=print) -> str:
    """The image id of vpnagent/ring-sum:latest, built or cached."""
    from vpnagent.runtime.docker_images import build_algorithm_dir

    return build_algorithm_dir(HERE, client=client, progress=progress, force=force)[1]
