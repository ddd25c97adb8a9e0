"""`vpnagent images build-algorithm DIR`: the recipe (vpnagent-algorithm.yaml) is checked with
every problem named at once, turned into a build context without a checkout (the client
package comes from the installed distribution), and built on the algorithm base image; bad
input builds and tags nothing."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from vpnagent import algorithm_recipe as ar
from vpnagent.algorithm_recipe import RECIPE_FILE, AlgorithmRecipeError, load_algorithm
from vpnagent.cli import main as cli_main
from vpnagent.image_recipes import ALGO_BASE_IMAGE, RECIPE_LABEL, ImageBuildError

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "python" / "vpnagent_algorithm"
CLIENT_MODULES = sorted(p.name for p in CLIENT.glob("*.py"))


def write(directory: Path, recipe: dict | str, files: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe)
    (directory / RECIPE_FILE).write_text(text)
    for rel, content in (files or {"main.py": "print('hi')\n"}).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(content)
    return directory


GOOD = {"tag": "myorg/algo:1.0", "module": "main", "files": ["main.py"], "ports": {7777: "ring", 9000: None}}


def context_of(spec) -> dict[str, bytes]:
    with tarfile.open(fileobj=spec.recipe().context()) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def problems_of(tmp_path: Path, recipe: dict | str, files: dict[str, str] | None = None, tag: str | None = None):
    with pytest.raises(AlgorithmRecipeError) as info:
        load_algorithm(write(tmp_path / "alg", recipe, files), tag)
    return info.value.problems


# --- a good recipe ---------------------------------------------------------------------------

def test_a_recipe_renders_the_image_on_the_algorithm_base(tmp_path):
    spec = load_algorithm(write(tmp_path / "alg", GOOD))
    assert spec.tag == "myorg/algo:1.0" and spec.command == ("python3", "-m", "main")
    assert spec.dockerfile() == (
        f"FROM {ALGO_BASE_IMAGE}\n"
        "COPY client/ /opt/vpnagent-client/\n"
        "COPY app/ /app/\n"
        'ENV PYTHONPATH="/app:/opt/vpnagent-client" PYTHONUNBUFFERED="1"\n'
        "WORKDIR /app\n"
        "EXPOSE 7777\nEXPOSE 9000\n"
        "LABEL p7777=ring\n"
        'CMD ["python3", "-m", "main"]\n')


def test_the_context_holds_the_files_and_the_installed_client_package(tmp_path):
    files = {"main.py": "x = 1\n", "lib/__init__.py": "", "lib/util.py": "y = 2\n",
             "lib/__pycache__/util.cpython-311.pyc": "", "lib/.swp": "", "data/unlisted.csv": "a,b\n"}
    spec = load_algorithm(write(tmp_path / "alg", {**GOOD, "files": ["main.py", "lib"]}, files))
    ctx = context_of(spec)
    assert set(ctx) == {"Dockerfile", "app/main.py", "app/lib/__init__.py", "app/lib/util.py",
                        *(f"client/vpnagent_algorithm/{m}" for m in CLIENT_MODULES)}
    assert ctx["app/lib/util.py"] == b"y = 2\n"
    for module in CLIENT_MODULES:
        assert ctx[f"client/vpnagent_algorithm/{module}"] == (CLIENT / module).read_bytes()


def test_the_hash_follows_the_files(tmp_path):
    directory = write(tmp_path / "alg", GOOD)
    h1 = load_algorithm(directory).recipe().recipe_hash("sha256:base")
    assert load_algorithm(directory).recipe().recipe_hash("sha256:base") == h1
    (directory / "main.py").write_text("print('changed')\n")
    assert load_algorithm(directory).recipe().recipe_hash("sha256:base") != h1
    (directory / "notes.txt").write_text("not listed")  # unlisted files change nothing
    h2 = load_algorithm(directory).recipe().recipe_hash("sha256:base")
    assert load_algorithm(directory).recipe().recipe_hash("sha256:base") == h2
    assert load_algorithm(directory).recipe().recipe_hash("sha256:other-base") != h2


def test_command_env_pythonpath_and_tag_option(tmp_path):
    recipe = {"command": ["python3", "run.py", "--fast"], "files": ["run.py", "vendor"],
              "env": {"GREETING": 'say "hi" to $USER \\o/', "N": 3, "ON": True}, "pythonpath": ["vendor"]}
    spec = load_algorithm(write(tmp_path / "alg", recipe, {"run.py": "", "vendor/pkg/__init__.py": ""}),
                          tag="local/run")
    assert spec.tag == "local/run:latest"
    dockerfile = spec.dockerfile()
    assert ('ENV PYTHONPATH="/app:/app/vendor:/opt/vpnagent-client" PYTHONUNBUFFERED="1" '
            'GREETING="say \\"hi\\" to \\$USER \\\\o/" N="3" ON="true"\n') in dockerfile
    assert 'CMD ["python3", "run.py", "--fast"]' in dockerfile and "EXPOSE" not in dockerfile


def test_the_ring_sum_example_builds_from_its_directory():
    from examples.ring_sum import ring_sum
    from vpnagent.ports import exposed_ports

    spec = load_algorithm(REPO / "examples" / "ring_sum")
    assert spec.tag == "vpnagent/ring-sum:latest" and spec.command == ("python3", "-m", "ring_sum")
    assert list(spec.files) == ["ring_sum.py"]
    assert spec.ports == ((ring_sum.RING_PORT, ring_sum.RING_LABEL),)
    # what the node reads back from such an image
    assert [(s.port, s.label) for s in exposed_ports({"ExposedPorts": {"7777/tcp": {}},
                                                      "Labels": {"p7777": "ring"}})] == list(spec.ports)


# --- bad input: every problem named, with its fix --------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ({"tagg": "x"}, "tagg: unknown key; did you mean 'tag'?"),
    ({"packages": ["numpy"]}, "packages: not supported: the algorithm base image has no package manager"),
    ({"FROM": "python:3.11"}, "FROM: not supported: algorithm images are always built on vpnagent/algo-base"),
    ({"tag": "My Algo"}, "tag: 'My Algo' is not an image name"),
    ({"tag": "vpnagent/echo"}, "tag: vpnagent/echo:latest is one of vpnagent's own images"),
    ({"tag": None}, "tag: missing; name the image in the recipe"),
    ({"module": "2fast"}, "module: '2fast' is not a Python module name"),
    ({"module": None}, "module: missing; say how the algorithm starts"),
    ({"command": ["python3", "main.py"]}, "module, command: give one of them, not both"),
    ({"module": None, "command": []}, "command: [] must be a non-empty list"),
    ({"files": None}, "files: missing;"),
    ({"files": []}, "files: empty;"),
    ({"files": "main.py"}, "files: 'main.py' is a str; it must be a list"),
    ({"files": ["main.py", "gone.py"]}, "files: 'gone.py' does not exist in"),
    ({"files": ["../etc/passwd"]}, "files: '../etc/passwd' is outside the algorithm directory"),
    ({"files": ["/etc/hostname"]}, "files: '/etc/hostname' is outside the algorithm directory"),
    ({"ports": {0: "x"}}, "ports: 0 is not a TCP port; give a number within 1-65535"),
    ({"ports": {"http": "x"}}, "ports: 'http' is not a TCP port"),
    ({"ports": {7777: "has space"}}, "ports: label 'has space' of port 7777 must be 1-64 of"),
    ({"ports": {p: None for p in range(1000, 1033)}}, "ports: 33 ports; a node forwards at most 32"),
    ({"ports": [7777]}, "ports: [7777] is a list; it must be a mapping"),
    ({"env": {"VPNAGENT_TOKEN": "x"}}, "env: VPNAGENT_TOKEN is set by vpnagent"),
    ({"env": {"PYTHONPATH": "/x"}}, "env: PYTHONPATH is set by vpnagent"),
    ({"env": {"BAD-NAME": "x"}}, "env: 'BAD-NAME' is not a variable name"),
    ({"env": {"A": "two\nlines"}}, "env: A: 'two\\nlines' holds control characters"),
    ({"env": {"A": None}}, "env: A: None must be a single value"),
    ({"pythonpath": ["vendor"]}, "pythonpath: 'vendor' is not a directory among files"),
    ({"pythonpath": ["/abs"]}, "pythonpath: '/abs' must be a directory relative to /app"),
])
def test_each_bad_value_is_named_with_its_fix(tmp_path, change, expected):
    problems = problems_of(tmp_path, {**GOOD, **change})
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_all_problems_are_reported_at_once(tmp_path):
    problems = problems_of(tmp_path, {"tagg": "x", "module": "1", "files": ["gone.py"], "ports": {0: None},
                                      "env": {"VPNAGENT_X": "1"}})
    assert [p.split(":")[0] for p in problems] == ["tagg", "tag", "module", "files", "ports", "env"]


def test_a_bad_tag_option_is_named_as_the_option(tmp_path):
    assert problems_of(tmp_path, GOOD, tag="UPPER")[0].startswith("--tag: 'UPPER' is not an image name")


def test_a_link_out_of_the_directory_is_refused(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("key")
    directory = write(tmp_path / "alg", {**GOOD, "files": ["main.py", "lib"]}, {"main.py": "", "lib/a.py": ""})
    (directory / "lib" / "b.txt").symlink_to(outside)
    (directory / "link.txt").symlink_to(outside)
    with pytest.raises(AlgorithmRecipeError, match=r"'lib/b.txt' leads outside"):
        load_algorithm(directory)
    write(directory, {**GOOD, "files": ["main.py", "link.txt"]}, {})
    with pytest.raises(AlgorithmRecipeError, match=r"'link.txt' leads outside"):
        load_algorithm(directory)


@pytest.mark.parametrize("text, expected", [
    (None, "no recipe: write"),
    ("tag: [unclosed", "cannot read the recipe"),
    ("- a\n- b\n", "the recipe must be a YAML mapping of key: value (got list)"),
])
def test_a_missing_or_unreadable_recipe(tmp_path, text, expected):
    directory = tmp_path / "alg"
    directory.mkdir()
    if text is not None:
        (directory / RECIPE_FILE).write_text(text)
    with pytest.raises(AlgorithmRecipeError, match=re.escape(expected)):
        load_algorithm(directory)
    with pytest.raises(AlgorithmRecipeError, match="is not a directory"):
        load_algorithm(tmp_path / "nowhere")


# --- the command ------------------------------------------------------------------------------

def test_the_command_saves_the_context_without_an_engine(tmp_path, capsys):
    directory = write(tmp_path / "alg", GOOD)
    out = tmp_path / "ctx.tar"
    assert cli_main(["images", "build-algorithm", str(directory), "--tag", "x/y:2", "--save-context", str(out)]) == 0
    assert "x/y:2: build context written to" in capsys.readouterr().out
    with tarfile.open(out) as tar:
        assert "app/main.py" in tar.getnames() and "client/vpnagent_algorithm/__init__.py" in tar.getnames()


def test_bad_input_exits_2_before_touching_the_engine(tmp_path, capsys, monkeypatch):
    from vpnagent.runtime import docker_images

    monkeypatch.setattr(docker_images, "_connect", lambda client: pytest.fail("the engine was asked"))
    directory = write(tmp_path / "alg", {**GOOD, "ports": {0: None}})
    out = tmp_path / "ctx.tar"
    assert cli_main(["images", "build-algorithm", str(directory)]) == 2
    assert cli_main(["images", "build-algorithm", str(directory), "--save-context", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ports: 0 is not a TCP port" in err and "Traceback" not in err and not out.exists()


class FakeImages:
    def __init__(self, base: bool, fail_build: bool = False) -> None:
        self.base, self.fail_build, self.built = base, fail_build, []

    def get(self, tag):
        import docker.errors

        if tag == ALGO_BASE_IMAGE and self.base:
            return type("Image", (), {"id": "sha256:base", "attrs": {"Config": {"Labels": {}}}})()
        raise docker.errors.ImageNotFound(tag)

    def build(self, **kwargs):
        import docker.errors

        self.built.append(kwargs["tag"])
        if self.fail_build:
            log = [{"stream": f"Step {i}/8 : something\n"} for i in range(1, 30)] + [{"error": "COPY failed: boom"}]
            raise docker.errors.BuildError("COPY failed: boom", log)
        return type("Image", (), {"id": "sha256:new"})(), []


def test_a_missing_base_image_names_the_command(tmp_path):
    from vpnagent.runtime.docker_images import build_algorithm_dir

    client = type("Client", (), {"images": FakeImages(base=False)})()
    with pytest.raises(ImageBuildError, match=r"vpnagent/algo-base:latest is not built yet; fix: vpnagent images "
                                              r"build"):
        build_algorithm_dir(write(tmp_path / "alg", GOOD), client=client, progress=lambda m: None)
    assert client.images.built == []


def test_a_failed_build_shows_the_end_of_its_log(tmp_path):
    from vpnagent.runtime.docker_images import build_algorithm_dir

    client = type("Client", (), {"images": FakeImages(base=True, fail_build=True)})()
    with pytest.raises(ImageBuildError) as info:
        build_algorithm_dir(write(tmp_path / "alg", GOOD), client=client, progress=lambda m: None)
    assert "myorg/algo:1.0: docker build failed: COPY failed: boom" in str(info.value)
    assert "Step 29/8" in str(info.value)


# --- from an installed wheel, without the source tree -----------------------------------------

def test_an_installed_vpnagent_builds_the_context_without_a_checkout(tmp_path):
    """A wheel of this project installed into a fresh venv (no dependencies: only PyYAML is
    copied in), then the command run from elsewhere, with nothing of the source tree on the
    path."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    src = tmp_path / "src"  # a copy, so the install leaves no build/ or egg-info in the worktree
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", ".cache", "tests", "benchmarks", "docs"))
    (src / "docs").mkdir()
    for doc in (REPO / "docs").glob("*.md"):
        shutil.copy(doc, src / "docs")
    shutil.copytree(REPO / "docs" / "examples", src / "docs" / "examples")
    wheels = tmp_path / "wheels"  # pip fetches the build backend (setuptools, wheel) as for any sdist
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--disable-pip-version-check", "--wheel-dir", str(wheels), str(src)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and any(s in proc.stderr for s in ("Could not find a version", "NewConnectionError",
                                                              "Temporary failure in name resolution")):
        pytest.skip(f"pip cannot fetch the build backend: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(src)  # nothing of it is left to import from
    (wheel,) = wheels.glob("vpnagent-*.whl")
    proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    deps = tmp_path / "deps"
    shutil.copytree(Path(yaml.__file__).parent, deps / "yaml")

    directory = write(tmp_path / "alg", GOOD)
    out = tmp_path / "ctx.tar"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"PYTHONPATH": str(deps)}
    proc = subprocess.run([str(venv / "bin" / "vpnagent"), "images", "build-algorithm", str(directory),
                           "--save-context", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as tar:
        ctx = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert {f"client/vpnagent_algorithm/{m}" for m in CLIENT_MODULES} <= set(ctx)
    assert ctx["client/vpnagent_algorithm/client.py"] == (CLIENT / "client.py").read_bytes()
    # the package came from the venv, and the old import path works there too
    code = ("import vpnagent_algorithm, vpnagent.algorithm_client as old, sys; "
            "assert vpnagent_algorithm.__file__.startswith(sys.prefix), vpnagent_algorithm.__file__; "
            "assert old.AlgorithmClient is vpnagent_algorithm.AlgorithmClient; "
            f"assert not any(p.startswith({str(REPO)!r}) for p in sys.path), sys.path")
    proc = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --- the real engine ------------------------------------------------------------------------

TEST_TAG = "vpnagent-test/build-algorithm:test"


@pytest.mark.docker
def test_build_algorithm_makes_a_working_image(docker_client, tmp_path):
    import docker.errors

    from vpnagent.runtime.docker_images import build_algorithm_dir

    try:
        docker_client.images.get(ALGO_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{ALGO_BASE_IMAGE} is not built (vpnagent images build)")
    code = ("import os, vpnagent_algorithm, helper\n"
            "print(vpnagent_algorithm.__file__, helper.VALUE, os.environ['GREETING'])\n")
    directory = write(tmp_path / "alg", {"tag": TEST_TAG, "module": "main", "files": ["main.py", "lib"],
                                         "pythonpath": ["lib"], "ports": {7777: "ring"},
                                         "env": {"GREETING": "a $HOME \"b\""}},
                      {"main.py": code, "lib/helper.py": "VALUE = 42\n"})
    # bad input tags nothing
    write(tmp_path / "bad", {"tag": TEST_TAG, "module": "main", "files": ["main.py", "gone.py"]})
    with pytest.raises(AlgorithmRecipeError):
        build_algorithm_dir(tmp_path / "bad", client=docker_client, progress=lambda m: None)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(TEST_TAG)
    try:
        lines: list[str] = []
        tag, image_id = build_algorithm_dir(directory, client=docker_client, progress=lines.append)
        assert tag == TEST_TAG and lines[-1].startswith(f"{TEST_TAG}: built in")
        config = docker_client.images.get(TEST_TAG).attrs["Config"]
        assert config["ExposedPorts"] == {"7777/tcp": {}} and config["Labels"]["p7777"] == "ring"
        assert RECIPE_LABEL in config["Labels"] and config["Cmd"] == ["python3", "-m", "main"]
        out = docker_client.containers.run(TEST_TAG, remove=True, network_mode="none").decode()
        assert out.strip() == '/opt/vpnagent-client/vpnagent_algorithm/__init__.py 42 a $HOME "b"'
        # unchanged: cached
        lines.clear()
        assert build_algorithm_dir(directory, client=docker_client, progress=lines.append) == (tag, image_id)
        assert lines == [f"{TEST_TAG}: cached"]
    finally:
        try:
            docker_client.images.remove(TEST_TAG, force=True)
        except docker.errors.DockerException:
            pass
