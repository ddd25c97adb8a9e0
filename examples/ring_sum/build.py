"""Build the ring_sum example image with vpnagent's image machinery (no registry):
`python -m examples.ring_sum.build` after `vpnagent images build`."""
from __future__ import annotations

import sys
from pathlib import Path

from vpnagent.runtime.docker_images import ImageBuildError, build_algorithm_image

TAG = "vpnagent/ring-sum:latest"
# Copied to /app/<path> in the image; the Dockerfile's PYTHONPATH=/app:/app/clients/python
# makes both the example (examples.ring_sum) and the client (vpnagent_algorithm) importable.
FILES: tuple[str, ...] = (
    "clients/python/vpnagent_algorithm/__init__.py",
    "clients/python/vpnagent_algorithm/client.py",
    "clients/python/vpnagent_algorithm/environment.py",
    "clients/python/vpnagent_algorithm/errors.py",
    "clients/python/vpnagent_algorithm/mock.py",
    "examples/__init__.py",
    "examples/ring_sum/__init__.py",
    "examples/ring_sum/ring_sum.py",
)
DOCKERFILE = Path(__file__).with_name("Dockerfile")


def build(client=None, force: bool = False, progress=print) -> str:
    return build_algorithm_image(TAG, FILES, DOCKERFILE.read_text(), client=client, progress=progress, force=force)


if __name__ == "__main__":
    try:
        build(force="--force" in sys.argv[1:])
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
