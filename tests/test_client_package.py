"""clients/python as a package: it installs offline into a fresh virtualenv that has none of
the server's or node's dependencies, its build backend writes correct wheels and sdists,
and every algorithm image's file list carries all of its modules."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "python"
MODULES = sorted(p.relative_to(REPO).as_posix() for p in (CLIENT / "vpnagent_algorithm").glob("*.py"))


def _backend():
    spec = importlib.util.spec_from_file_location("vpnagent_client_build_backend", CLIENT / "build_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # offline: --no-index, and the in-tree build backend needs nothing (requires = [])
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation", str(CLIENT)],
         cwd=tmp_path)
    out = _run([str(python), "-c", CHECK_IN_VENV], cwd=tmp_path).stdout  # cwd outside the repo
    import json

    got = json.loads(out)
    assert Path(got["file"]).is_relative_to(venv), got["file"]  # the installed copy, not the checkout
    assert got["absent"] == {"flask": True, "docker": True, "sqlalchemy": True}
    assert got["version"] == tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["version"]
    assert got["url"] == "http://127.0.0.1:9/api" and got["orgs"] == [0, 1]


def test_project_metadata_is_read_like_tomllib_reads_it():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    meta = _backend().project()
    assert meta == {k: v for k, v in project.items() if isinstance(v, str)}
    assert project["name"] == "vpnagent-algorithm-client" and project["dependencies"] == []
    assert project["requires-python"] == ">=3.9"
    assert tomllib.loads((CLIENT / "pyproject.toml").read_text())["build-system"]["requires"] == []


def _check_record(whl: zipfile.ZipFile, dist_info: str) -> None:
    lines = whl.read(f"{dist_info}/RECORD").decode().splitlines()
    assert f"{dist_info}/RECORD,," in lines
    for line in lines:
        name, digest, size = line.rsplit(",", 2)
        if name.endswith("RECORD"):
            continue
        data = whl.read(name)
        expect = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expect}" and int(size) == len(data), name
    assert len(lines) == len(whl.namelist())


def test_wheel_editable_and_sdist(tmp_path):
    backend = _backend()
    dist_info = "vpnagent_algorithm_client-0.1.0.dist-info"
    name = backend.build_wheel(str(tmp_path))
    assert name == "vpnagent_algorithm_client-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(tmp_path / name) as whl:
        modules = sorted(n for n in whl.namelist() if n.endswith(".py"))
        assert modules == [m.removeprefix("clients/python/") for m in MODULES]
        metadata = whl.read(f"{dist_info}/METADATA").decode()
        assert "Name: vpnagent-algorithm-client\n" in metadata and "Requires-Python: >=3.9\n" in metadata
        assert "Requires-Dist" not in metadata
        assert "Tag: py3-none-any" in whl.read(f"{dist_info}/WHEEL").decode()
        _check_record(whl, dist_info)
    first = (tmp_path / name).read_bytes()
    (tmp_path / "again").mkdir()
    assert (tmp_path / "again" / backend.build_wheel(str(tmp_path / "again"))).read_bytes() == first  # reproducible

    editable = backend.build_editable(str(tmp_path / "again"))
    with zipfile.ZipFile(tmp_path / "again" / editable) as whl:
        assert whl.read("vpnagent_algorithm_client.pth").decode().strip() == str(CLIENT)
        assert not [n for n in whl.namelist() if n.endswith(".py")]
        _check_record(whl, dist_info)

    sdist = backend.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / sdist) as tar:
        names = set(tar.getnames())
    base = "vpnagent_algorithm_client-0.1.0"
    assert {f"{base}/pyproject.toml", f"{base}/build_backend.py", f"{base}/PKG-INFO"} <= names
    assert {f"{base}/{m.removeprefix('clients/python/')}" for m in MODULES} <= names


def test_every_algorithm_image_carries_the_whole_package():
    from examples.ring_sum import build as ring_sum_build
    from test_algorithms import hostile
    from vpnagent.images import ECHO_FILES

    assert MODULES and "clients/python/vpnagent_algorithm/__init__.py" in MODULES
    for name, files in (("echo", ECHO_FILES), ("hostile", hostile.FILES), ("ring_sum", ring_sum_build.FILES)):
        missing = sorted(set(MODULES) - set(files))
        assert not missing, f"the {name} image lacks {missing}: add them to its file list"
    # the images put repository paths under /app: the example finds the package by its PYTHONPATH,
    # echo and hostile through vpnagent/algorithm_client.py
    assert "PYTHONPATH=/app:/app/clients/python" in ring_sum_build.DOCKERFILE.read_text()
    for files in (ECHO_FILES, hostile.FILES):
        assert "vpnagent/algorithm_client.py" in files


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
