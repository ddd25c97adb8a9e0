"""clients/python as a package: `pip install ./clients/python` puts it into a fresh
virtualenv that has none of the server's or node's dependencies, and every algorithm
image's file list carries all of its modules."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "python"
MODULES = sorted(p.relative_to(REPO).as_posix() for p in (CLIENT / "vpnagent_algorithm").glob("*.py"))


def _run(argv: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


CHECK_IN_VENV = r"""
import importlib.util, json, sys
import vpnagent_algorithm
from vpnagent_algorithm import AlgorithmClient, AlgorithmClientError, MockAlgorithmClient
absent = {name: importlib.util.find_spec(name) is None for name in ("flask", "docker", "sqlalchemy")}
client = AlgorithmClient(token="t", server_url="http://127.0.0.1:9/api")
mock = MockAlgorithmClient([[], []], "json")
print(json.dumps({"file": vpnagent_algorithm.__file__, "version": vpnagent_algorithm.__version__,
                  "absent": absent, "url": client.server_url, "orgs": [o["id"] for o in mock.organization.list()],
                  "prefix": sys.prefix}))
"""


def test_installs_into_a_fresh_venv_without_the_projects_dependencies(tmp_path):
    """`pip install ./clients/python` as a user runs it (setuptools, the build tool, comes from
    the package index): the package installs and imports where flask, docker and sqlalchemy
    are absent."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(CLIENT)], cwd=tmp_path)
    out = _run([str(python), "-c", CHECK_IN_VENV], cwd=tmp_path).stdout  # cwd outside the repo
    import json

    got = json.loads(out)
    assert Path(got["file"]).is_relative_to(venv), got["file"]  # the installed copy, not the checkout
    assert got["absent"] == {"flask": True, "docker": True, "sqlalchemy": True}
    assert got["version"] == tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["version"]
    assert got["url"] == "http://127.0.0.1:9/api" and got["orgs"] == [0, 1]
    listed = _run([str(python), "-m", "pip", "show", "-f", "vpnagent-algorithm-client"], cwd=tmp_path).stdout
    assert all(f"vpnagent_algorithm/{Path(m).name}" in listed for m in MODULES), listed


def test_project_metadata():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "vpnagent-algorithm-client" and project["dependencies"] == []
    assert project["requires-python"] == ">=3.9"


def test_every_algorithm_image_carries_the_whole_package():
    from examples.ring_sum import build as ring_sum_build
    from examples.ring_sum import build_v6
    from test_algorithms import hostile
    from vpnagent.algorithm_recipe import load_algorithm
    from vpnagent.image_recipes import ECHO_FILES

    assert MODULES and "clients/python/vpnagent_algorithm/__init__.py" in MODULES
    for name, files in (("echo", ECHO_FILES), ("hostile", hostile.FILES), ("ring_sum_v6", build_v6.FILES)):
        missing = sorted(set(MODULES) - set(files))
        assert not missing, f"the {name} image lacks {missing}: add them to its file list"
    # these images put repository paths under /app: the v6 example finds the package by its
    # PYTHONPATH, echo and hostile through vpnagent/algorithm_client.py
    assert "PYTHONPATH=/app:/app/clients/python" in build_v6.DOCKERFILE
    for files in (ECHO_FILES, hostile.FILES):
        assert "vpnagent/algorithm_client.py" in files
    # an image from an algorithm directory (build-algorithm) gets the installed package whole
    context = load_algorithm(ring_sum_build.HERE).recipe().contents()
    assert {f"client/vpnagent_algorithm/{Path(m).name}" for m in MODULES} <= set(context)


@pytest.mark.parametrize("entry", ["vpnagent/algorithm_client.py", "test_algorithms/echo.py"])
def test_old_import_path_finds_the_package_beside_it(tmp_path, entry):
    """As in the echo image: repository paths under one root, only that root on the path."""
    root = tmp_path / "app"
    for rel in ("vpnagent/__init__.py", "vpnagent/algorithm_client.py", "test_algorithms/__init__.py",
                "test_algorithms/echo.py", *MODULES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((REPO / rel).read_bytes())
    module = entry.removesuffix(".py").replace("/", ".")
    code = (f"import {module}, vpnagent_algorithm, sys; "
            "assert vpnagent_algorithm.__file__.startswith(sys.argv[1]), vpnagent_algorithm.__file__")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(root / "clients" / "python")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
