"""Build the ring_sum example as a vantage6 algorithm image (`vpnagent/ring-sum-v6:latest`):
vpnagent's algorithm base image plus vantage6-algorithm-tools 4.13.7 installed offline from
wheels taken from PyPI on the host (scripts/v6-wheels.sh puts them in .cache/v6-wheels/);
no registry, no vantage6 base image. `python -m examples.ring_sum.build_v6`."""
from __future__ import annotations

import sys
from pathlib import Path

from vpnagent.image_recipes import REPO_ROOT
from vpnagent.runtime.docker_images import ImageBuildError, build_algorithm_image

TAG = "vpnagent/ring-sum-v6:latest"
V6_TOOLS = "vantage6-algorithm-tools==4.13.7"
WHEEL_DIR = REPO_ROOT / ".cache" / "v6-wheels"
# The vantage6 module, the ring mechanics it imports (examples.ring_sum.ring_sum) and vpnagent's
# client that imports, copied to /app/<repository path>: the client package lands in
# /app/clients/python, hence the second PYTHONPATH entry.
FILES: tuple[str, ...] = (
    "clients/python/vpnagent_algorithm/__init__.py",
    "clients/python/vpnagent_algorithm/client.py",
    "clients/python/vpnagent_algorithm/environment.py",
    "clients/python/vpnagent_algorithm/errors.py",
    "clients/python/vpnagent_algorithm/mock.py",
    "examples/__init__.py",
    "examples/ring_sum/__init__.py",
    "examples/ring_sum/ring_sum.py",
    "examples/ring_sum/v6.py",
)
# pip runs from its own wheel (the base image has python3 and no pip); --break-system-packages:
# the image is this one algorithm's, Debian's marker would only make us add a venv for nothing.
DOCKERFILE = f"""\
FROM vpnagent/algo-base:latest
COPY wheels/ /tmp/wheels/
RUN python3 "$(ls /tmp/wheels/pip-*.whl)/pip" install --quiet --no-index --find-links /tmp/wheels \\
      --break-system-packages --no-warn-script-location '{V6_TOOLS}' && rm -rf /tmp/wheels /root/.cache
COPY app/ /app/
ENV PYTHONPATH=/app:/app/clients/python PYTHONUNBUFFERED=1 PKG_NAME=examples.ring_sum.v6
WORKDIR /app
EXPOSE 7777
LABEL p7777=ring
CMD ["python3", "-c", "from vantage6.algorithm.tools.wrap import wrap_algorithm; wrap_algorithm()"]
"""


def wheels(wheel_dir: Path = WHEEL_DIR) -> dict[str, Path]:
    """The wheelhouse as build-context files (wheels/<name>)."""
    found = sorted(wheel_dir.glob("*.whl"))
    names = [w.name for w in found]
    if not any(n.startswith("vantage6_algorithm_tools-4.13.7-") for n in names) or \
            not any(n.startswith("pip-") for n in names):
        raise ImageBuildError(f"{TAG}: no vantage6-algorithm-tools 4.13.7 and pip wheels in {wheel_dir}; "
                              "fix: bash scripts/v6-wheels.sh")
    return {f"wheels/{w.name}": w for w in found}


def build(client=None, force: bool = False, progress=print) -> str:
    return build_algorithm_image(TAG, FILES, DOCKERFILE, client=client, progress=progress, force=force,
                                 extra=wheels(), estimate_s=60)


if __name__ == "__main__":
    try:
        build(force="--force" in sys.argv[1:])
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
