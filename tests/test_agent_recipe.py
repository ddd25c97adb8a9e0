"""The agent image's recipe: its hash follows exactly what the wheel is built from, its build
context holds the wheelhouse and a Dockerfile that installs without network, and a broken
pip names the fix. The Docker build itself is tested in tests/integration/test_agent_image.py."""
from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

from vpnagent import image_recipes as recipes
from vpnagent.image_recipes import AGENT_PACKAGE_DIRS, AGENT_PROJECT_FILES, AgentRecipe
from vpnagent.runtime import docker_images


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel in AGENT_PROJECT_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    for top in AGENT_PACKAGE_DIRS:
        (root / top / "sub").mkdir(parents=True)
        (root / top / "__init__.py").write_text("")
        (root / top / "sub" / "mod.py").write_text("x = 1\n")
    return root


def test_agent_hash_follows_the_sources_and_the_base_only(fake_repo: Path):
    h1 = AgentRecipe(root=fake_repo).recipe_hash("sha256:base1")
    assert AgentRecipe(root=fake_repo).recipe_hash("sha256:base1") == h1
    assert AgentRecipe(root=fake_repo).recipe_hash("sha256:base2") != h1
    # bytecode, caches and dot files are not what the wheel is made of
    (fake_repo / "vpnagent" / "__pycache__").mkdir()
    (fake_repo / "vpnagent" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (fake_repo / "server_ext" / ".mod.py.swp").write_bytes(b"\0")
    (fake_repo / "tests").mkdir()
    (fake_repo / "tests" / "test_x.py").write_text("")
    assert AgentRecipe(root=fake_repo).recipe_hash("sha256:base1") == h1
    # a changed module, a new data file or a changed setup.cfg each mean a rebuild
    (fake_repo / "server_ext" / "sub" / "mod.py").write_text("x = 2\n")
    h2 = AgentRecipe(root=fake_repo).recipe_hash("sha256:base1")
    assert h2 != h1
    (fake_repo / "test_algorithms" / "sub" / "data.ini").write_text("[a]\n")
    h3 = AgentRecipe(root=fake_repo).recipe_hash("sha256:base1")
    assert h3 != h2
    (fake_repo / "setup.cfg").write_text("[metadata]\n")
    assert AgentRecipe(root=fake_repo).recipe_hash("sha256:base1") != h3
    # another host Python means other binary wheels
    assert AgentRecipe(root=fake_repo, python_version="3.12").recipe_hash("sha256:base1") != \
        AgentRecipe(root=fake_repo).recipe_hash("sha256:base1")


def test_agent_sources_are_copied_exactly(fake_repo: Path, tmp_path: Path):
    recipe = AgentRecipe(root=fake_repo)
    recipe.write_sources(tmp_path / "src")
    copied = {p.relative_to(tmp_path / "src").as_posix() for p in (tmp_path / "src").rglob("*") if p.is_file()}
    assert copied == set(recipe.sources())
    assert "vpnagent/sub/mod.py" in copied and "README.md" in copied


def test_missing_package_is_a_clear_error(fake_repo: Path):
    (fake_repo / "server_ext" / "__init__.py").unlink()
    with pytest.raises(recipes.ImageBuildError, match="server_ext.*complete vpnagent checkout"):
        AgentRecipe(root=fake_repo).recipe_hash("b")


def test_agent_context_installs_from_the_wheelhouse_only(fake_repo: Path, tmp_path: Path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("vpnagent-0.1.0-py3-none-any.whl", "PyYAML-6.0-cp311-cp311-manylinux_2_17_x86_64.whl"):
        (wheels / name).write_bytes(b"PK")
    with tarfile.open(fileobj=AgentRecipe(root=fake_repo, python_version="3.11").context(wheels)) as tar:
        names = set(tar.getnames())
        dockerfile = tar.extractfile("Dockerfile").read().decode()
    assert names == {"Dockerfile", "wheels/vpnagent-0.1.0-py3-none-any.whl",
                     "wheels/PyYAML-6.0-cp311-cp311-manylinux_2_17_x86_64.whl"}
    assert f"FROM {recipes.AGENT_BASE_IMAGE} AS wheels" in dockerfile
    assert "pip install --no-index" in dockerfile and "--find-links /wheels vpnagent" in dockerfile
    assert "COPY --from=wheels /opt/vpnagent /opt/vpnagent" in dockerfile
    assert "ENV PATH=/opt/vpnagent/bin:" in dockerfile and 'CMD ["vpnagent", "--help"]' in dockerfile
    # the python check is an exec-form RUN: it passes only where python3's X.Y is the host's
    def check(version: str) -> object:
        lines = AgentRecipe(root=fake_repo, python_version=version).dockerfile().splitlines()
        argv = next(json.loads(line[4:]) for line in lines if line.startswith('RUN ["python3"'))
        with pytest.raises(SystemExit) as exit_:
            exec(argv[2], {})
        return exit_.value.code

    assert check(f"{sys.version_info.major}.{sys.version_info.minor}") is None
    assert "wheelhouse was built with Python 2.7 on the host" in str(check("2.7"))


def test_agent_base_has_what_the_agent_shells_out_to():
    pkgs = recipes.AGENT_BASE_RECIPE.packages
    for pkg in ("python3", "python3-venv", "iptables", "iproute2", "util-linux", "ca-certificates"):
        assert pkg in pkgs
    assert recipes.AGENT_BASE_RECIPE.recipe_hash() != recipes.ALGO_BASE_RECIPE.recipe_hash()


def test_pip_failure_names_the_fix(fake_repo: Path, tmp_path: Path):
    # an interpreter that exits 1 stands in for a pip that cannot reach its index
    recipe = AgentRecipe(root=fake_repo, python="/bin/false")
    with pytest.raises(recipes.ImageBuildError, match="pip wheel failed.*PyPI"):
        docker_images._make_wheelhouse(recipe, tmp_path / "w", tmp_path / "s", progress=lambda m: None)
    recipe = AgentRecipe(root=fake_repo, python=str(tmp_path / "no-such-python"))
    with pytest.raises(recipes.ImageBuildError, match="cannot run"):
        docker_images._make_wheelhouse(recipe, tmp_path / "w", tmp_path / "s", progress=lambda m: None)


@pytest.mark.parametrize("argv,built", [(["images", "build"], ["default"]),
                                         (["images", "build", "--agent"], ["default", "agent"])])
def test_agent_image_is_built_only_when_asked(monkeypatch, argv, built):
    # `make demo` / `make test` run the default build: it stays free of the minute-long agent image
    from vpnagent import cli

    calls: list[str] = []
    monkeypatch.setattr(docker_images, "build_images", lambda **kw: calls.append("default"))
    monkeypatch.setattr(docker_images, "build_agent_image", lambda **kw: calls.append("agent"))
    assert cli.main(argv) == 0
    assert calls == built
