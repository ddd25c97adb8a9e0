"""Build the local images (no registry is reachable): the VPN image, the algorithm base
image and the echo test algorithm; on demand also the node agent's own image.

The two base images come from `mmdebstrap --variant=essential` (≈20 s each when built in
parallel, 73 / 102 MB) imported with the docker SDK; the echo image is a small `docker build`
on top of the algorithm base. Every image carries a label with a hash of its recipe, so a
build is skipped while the recipe (and, for the echo image, the copied source files and the
base image) is unchanged.

The agent image (`build_agent_image`, `vpnagent images build --agent`) is not part of the
default build, which `make demo` and `make test` run: it needs a wheelhouse from PyPI and
about a minute. It is an mmdebstrap base plus a `docker build` that installs vpnagent from
wheels made on the host, so nothing inside the build touches the network.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker
import docker.errors

Progress = Callable[[str], None]

RECIPE_LABEL = "vpnagent.recipe"
VPN_IMAGE = "vpnagent/vpn:latest"
ALGO_BASE_IMAGE = "vpnagent/algo-base:latest"
ECHO_IMAGE = "vpnagent/echo:latest"
AGENT_BASE_IMAGE = "vpnagent/agent-base:latest"
AGENT_IMAGE = "vpnagent/agent:latest"

SUITE = "bookworm"
MIRROR = os.environ.get("VPNAGENT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SOURCE_DATE_EPOCH = "1700000000"  # reproducible tarball timestamps
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"
MMDEBSTRAP_TIMEOUT_S = 900

# Without the merged-usr hook, `usrmerge` (and with it Perl) lands in the image.
MMDEBSTRAP_OPTIONS: tuple[str, ...] = (
    "--variant=essential",
    f"--hook-dir={MERGED_USR_HOOK}",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log',
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Files copied into the echo image, as (path relative to the repo root) = path under /app.
ECHO_FILES: tuple[str, ...] = (
    "vpnagent/__init__.py",
    "vpnagent/algorithm_client.py",  # finds the package below in /app/clients/python
    "clients/python/vpnagent_algorithm/__init__.py",
    "clients/python/vpnagent_algorithm/client.py",
    "clients/python/vpnagent_algorithm/environment.py",
    "clients/python/vpnagent_algorithm/errors.py",
    "clients/python/vpnagent_algorithm/mock.py",
    "test_algorithms/__init__.py",
    "test_algorithms/echo.py",
)
ECHO_DOCKERFILE = f"""\
FROM {ALGO_BASE_IMAGE}
COPY app/ /app/
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1
WORKDIR /app
EXPOSE 8888
LABEL p8888=echo
CMD ["python3", "-m", "test_algorithms.echo"]
"""


def tar_context(files: dict[str, bytes]) -> io.BytesIO:
    """An in-memory Docker build context of `files` (name -> bytes), with fixed times and
    modes so the same files give the same context."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(SOURCE_DATE_EPOCH)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


class ImageBuildError(RuntimeError):
    """An image could not be built; the message names the image, the cause and the fix."""


@dataclass(frozen=True)
class DebootstrapRecipe:
    """A registry-free Debian image: essential variant plus `packages`."""

    tag: str
    packages: tuple[str, ...]
    cmd: tuple[str, ...] = ("/bin/bash",)
    estimate_s: int = 20
    suite: str = SUITE
    mirror: str = MIRROR
    options: tuple[str, ...] = MMDEBSTRAP_OPTIONS

    def recipe_hash(self) -> str:
        text = json.dumps({"suite": self.suite, "mirror": self.mirror, "packages": list(self.packages),
                           "options": list(self.options), "cmd": list(self.cmd), "v": 1}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def changes(self) -> list[str]:
        return [f"LABEL {RECIPE_LABEL}={self.recipe_hash()}", f"CMD {json.dumps(list(self.cmd))}"]

    def command(self, target: str) -> list[str]:
        return ["mmdebstrap", "-q", *self.options, f"--include={','.join(self.packages)}",
                self.suite, target, self.mirror]


VPN_RECIPE = DebootstrapRecipe(VPN_IMAGE, ("openvpn", "iptables", "iproute2", "iputils-ping", "procps"))
# python3, not python3-minimal: the minimal one has no http.server. libstdc++6: the C++
# runtime compiled Python wheels link (numpy, pandas: every vantage6 algorithm has them).
ALGO_BASE_RECIPE = DebootstrapRecipe(ALGO_BASE_IMAGE, ("python3", "iproute2", "iputils-ping", "libstdc++6"))
# What the agent shells out to (iptables-restore, nsenter, ip, ping for the path MTU probe)
# plus a venv-capable python3 and the CA bundle for a server whose certificate a public CA
# signed. Debian 12's iptables is the nf_tables backend, like the host's: the agent's rules
# must land in the tables the host uses.
AGENT_BASE_RECIPE = DebootstrapRecipe(AGENT_BASE_IMAGE, ("python3", "python3-venv", "iptables", "iproute2",
                                                         "util-linux", "ca-certificates", "iputils-ping"))


@dataclass
class EchoRecipe:
    """The echo algorithm: source files of this repo on top of the algorithm base image."""

    tag: str = ECHO_IMAGE
    root: Path = REPO_ROOT
    files: tuple[str, ...] = ECHO_FILES
    dockerfile: str = ECHO_DOCKERFILE
    estimate_s: int = 3
    # More build-context files from outside the repo (context path -> host file), e.g. wheels.
    extra: dict[str, Path] = field(default_factory=dict)
    _contents: dict[str, bytes] = field(default_factory=dict, repr=False)

    def contents(self) -> dict[str, bytes]:
        """Build-context path -> bytes: app/<file> for the repo files, then the extra files."""
        if not self._contents:
            wanted = {f"app/{rel}": self.root / rel for rel in self.files} | dict(self.extra)
            for name, path in wanted.items():
                try:
                    self._contents[name] = path.read_bytes()
                except OSError as exc:
                    raise ImageBuildError(f"{self.tag}: cannot read {path} ({exc}); run from a complete "
                                          "vpnagent checkout") from None
        return self._contents

    def recipe_hash(self, base_image_id: str) -> str:
        h = hashlib.sha256()
        h.update(self.dockerfile.encode())
        h.update(base_image_id.encode())
        for rel, data in sorted(self.contents().items()):
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()[:16]

    def context(self) -> io.BytesIO:
        """An in-memory tar build context: the Dockerfile, app/<files> and the extra files."""
        return tar_context({"Dockerfile": self.dockerfile.encode(), **dict(sorted(self.contents().items()))})


# What the vpnagent wheel is built from: these files and every file under these packages.
AGENT_PROJECT_FILES: tuple[str, ...] = ("setup.cfg", "pyproject.toml", "README.md")
AGENT_PACKAGE_DIRS: tuple[str, ...] = ("vpnagent", "server_ext", "test_algorithms")
AGENT_PREFIX = "/opt/vpnagent"
AGENT_STAGE_LABEL = "vpnagent.stage"  # marks the throw-away wheel stage, removed after the build
WHEEL_TIMEOUT_S = 600
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _skipped(rel: Path) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in rel.parts) or rel.suffix == ".pyc"


@dataclass
class AgentRecipe:
    """The node agent: vpnagent installed from a host-built wheelhouse into a venv at
    /opt/vpnagent, on top of the agent base image."""

    tag: str = AGENT_IMAGE
    base_tag: str = AGENT_BASE_IMAGE
    root: Path = REPO_ROOT
    python: str = sys.executable  # builds the wheelhouse; its X.Y must be the image's python3
    python_version: str = HOST_PYTHON
    estimate_s: int = 40
    _sources: dict[str, bytes] = field(default_factory=dict, repr=False)

    def sources(self) -> dict[str, bytes]:
        """Every file the wheel is built from (repo-relative path → content); caches, dot
        files and bytecode are left out, so they neither rebuild the image nor end up in it."""
        if not self._sources:
            found: dict[str, bytes] = {}
            try:
                for rel in AGENT_PROJECT_FILES:
                    found[rel] = (self.root / rel).read_bytes()
                for top in AGENT_PACKAGE_DIRS:
                    if not (self.root / top / "__init__.py").is_file():
                        raise OSError(f"{self.root / top} is not a Python package")
                    for path in sorted((self.root / top).rglob("*")):
                        rel = path.relative_to(self.root)
                        if path.is_file() and not _skipped(rel):
                            found[rel.as_posix()] = path.read_bytes()
            except OSError as exc:
                raise ImageBuildError(f"{self.tag}: cannot read the vpnagent sources ({exc}); build from a "
                                      "complete vpnagent checkout") from None
            self._sources = found
        return self._sources

    def dockerfile(self) -> str:
        # The wheels were made by the host's python: binary ones (cryptography, PyYAML, ...)
        # only fit a python3 of the same minor version, so the build checks that first.
        check = ("import sys; v = '%d.%d' % sys.version_info[:2]; "
                 f"sys.exit(None if v == {self.python_version!r} else 'the image has python3 ' + v + "
                 f"', the wheelhouse was built with Python {self.python_version} on the host: build with a "
                 "Python ' + v + ' interpreter (its venv) instead')")
        install = (f"python3 -m venv {AGENT_PREFIX} && {AGENT_PREFIX}/bin/pip install --no-index "
                   "--no-cache-dir --disable-pip-version-check --find-links /wheels vpnagent")
        # Two stages, so the wheelhouse (≈17 MB) is not a layer of the final image.
        return (f"FROM {self.base_tag} AS wheels\n"
                f"LABEL {AGENT_STAGE_LABEL}=agent-wheels\n"
                "COPY wheels/ /wheels/\n"
                f"RUN {json.dumps(['python3', '-c', check])}\n"
                f"RUN {install}\n"
                f"FROM {self.base_tag}\n"
                f"COPY --from=wheels {AGENT_PREFIX} {AGENT_PREFIX}\n"
                f"ENV PATH={AGENT_PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
                "PYTHONUNBUFFERED=1\n"
                'CMD ["vpnagent", "--help"]\n')

    def recipe_hash(self, base_image_id: str) -> str:
        h = hashlib.sha256()
        h.update(b"agent v1\0" + self.dockerfile().encode() + b"\0" + base_image_id.encode())
        for rel, data in sorted(self.sources().items()):
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()[:16]

    def write_sources(self, target: Path) -> None:
        """Copy exactly the hashed files to `target`, so the wheel is built from what the hash
        covers and the build leaves no build/ or *.egg-info in the checkout."""
        for rel, data in self.sources().items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def context(self, wheel_dir: Path) -> io.BytesIO:
        """An in-memory tar build context: the Dockerfile and wheels/<every wheel>."""
        return tar_context({"Dockerfile": self.dockerfile().encode(),
                            **{f"wheels/{w.name}": w.read_bytes() for w in sorted(wheel_dir.glob("*.whl"))}})


def _label(client: docker.DockerClient, tag: str) -> tuple[str | None, str | None]:
    """(recipe label, image id) of `tag`, or (None, None) when it does not exist."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None, None
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    return labels.get(RECIPE_LABEL), image.id


def _size_mb(client: docker.DockerClient, tag: str) -> str:
    try:
        return f"{client.images.get(tag).attrs.get('Size', 0) / 1e6:.0f} MB"
    except docker.errors.DockerException:
        return "? MB"


def _cached(client: docker.DockerClient, tag: str, key: str, force: bool, progress: Progress,
            replaced: list[str] | None) -> str | None:
    """The image id when `tag` already carries this recipe; else note the id it replaces."""
    current, image_id = _label(client, tag)
    if current == key and not force:
        progress(f"{tag}: cached")
        return image_id
    if image_id and replaced is not None:
        replaced.append(image_id)
    return None


def _build_debootstrap(client: docker.DockerClient, recipe: DebootstrapRecipe, progress: Progress,
                       force: bool, replaced: list[str] | None = None) -> str:
    key = recipe.recipe_hash()
    cached = _cached(client, recipe.tag, key, force, progress, replaced)
    if cached:
        return cached
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError(f"{recipe.tag}: mmdebstrap is not installed; fix: apt-get install mmdebstrap")
    if not Path(MERGED_USR_HOOK).is_dir():
        raise ImageBuildError(f"{recipe.tag}: {MERGED_USR_HOOK} is missing; fix: apt-get install mmdebstrap "
                              "(version 1.0 or newer ships the hook)")
    progress(f"{recipe.tag}: building (about {recipe.estimate_s} s)")
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="vpnagent-image-")
    try:
        target = os.path.join(workdir, "rootfs.tar")
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        try:
            proc = subprocess.run(recipe.command(target), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env, timeout=MMDEBSTRAP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise ImageBuildError(f"{recipe.tag}: mmdebstrap took longer than {MMDEBSTRAP_TIMEOUT_S} s; "
                                  f"check that the Debian mirror {recipe.mirror} is reachable") from None
        if proc.returncode != 0 or not os.path.exists(target):
            tail = "\n".join(proc.stderr.decode(errors="replace").strip().splitlines()[-15:])
            raise ImageBuildError(
                f"{recipe.tag}: mmdebstrap failed (exit {proc.returncode}); check that the Debian mirror "
                f"{recipe.mirror} is reachable (set VPNAGENT_DEBIAN_MIRROR for another one) and that "
                f"mmdebstrap runs as root. Its last output:\n{tail}")
        repo, _, tag = recipe.tag.rpartition(":")
        try:
            client.api.import_image_from_file(target, repository=repo, tag=tag, changes=recipe.changes())
        except docker.errors.DockerException as exc:
            raise ImageBuildError(f"{recipe.tag}: docker import failed: {exc}; is the Docker engine running "
                                  "and is there disk space left?") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    label, image_id = _label(client, recipe.tag)
    if label != key:
        raise ImageBuildError(f"{recipe.tag}: imported, but the image does not carry the recipe label")
    progress(f"{recipe.tag}: built in {time.monotonic() - t0:.1f} s, {_size_mb(client, recipe.tag)}")
    return image_id  # type: ignore[return-value]


def _build_echo(client: docker.DockerClient, recipe: EchoRecipe, base_id: str, progress: Progress,
                force: bool, replaced: list[str] | None = None) -> str:
    key = recipe.recipe_hash(base_id)
    cached = _cached(client, recipe.tag, key, force, progress, replaced)
    if cached:
        return cached
    progress(f"{recipe.tag}: building (about {recipe.estimate_s} s)")
    t0 = time.monotonic()
    try:
        image, _logs = client.images.build(fileobj=recipe.context(), custom_context=True, tag=recipe.tag,
                                           labels={RECIPE_LABEL: key}, rm=True, forcerm=True, pull=False)
    except docker.errors.BuildError as exc:
        lines = [str(chunk.get("stream") or chunk.get("error") or "").rstrip() for chunk in exc.build_log]
        tail = "\n".join(line for line in lines if line)[-2000:]
        raise ImageBuildError(f"{recipe.tag}: docker build failed: {exc.msg}\n{tail}") from None
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"{recipe.tag}: docker build failed: {exc}; is the Docker engine running?") from None
    progress(f"{recipe.tag}: built in {time.monotonic() - t0:.1f} s, {_size_mb(client, recipe.tag)}")
    return image.id


def _remove_replaced(client: docker.DockerClient, image_ids: list[str], keep: set[str]) -> None:
    """Drop the images a rebuild untagged, so repeated builds do not pile up dangling layers.
    Children first (the old echo image sits on the old base); one still used by a container
    stays, which is fine."""
    for image_id in reversed(image_ids):
        if image_id in keep:
            continue
        try:
            image = client.images.get(image_id)
            if not image.tags:
                client.images.remove(image_id, noprune=False)
        except docker.errors.DockerException:
            pass


def build_images(client: docker.DockerClient | None = None, progress: Progress = print,
                 force: bool = False) -> dict[str, str]:
    """Build (or find cached) the vpn, algorithm-base and echo images; returns tag → image id.

    The two mmdebstrap builds run in parallel: each is mostly single-threaded dpkg work."""
    own_client = client is None
    if client is None:
        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except docker.errors.DockerException as exc:
            raise ImageBuildError(f"Docker engine unreachable ({exc}); start dockerd (and run as root)") from None
    try:
        results: dict[str, str] = {}
        errors: list[BaseException] = []
        replaced: list[str] = []  # ids of images a rebuild untagged
        say_lock = threading.Lock()

        def say(msg: str) -> None:  # one line at a time from the two build threads
            with say_lock:
                progress(msg)

        def worker(recipe: DebootstrapRecipe) -> None:
            try:
                results[recipe.tag] = _build_debootstrap(client, recipe, say, force, replaced)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(r,), name=f"build {r.tag}", daemon=True)
                   for r in (VPN_RECIPE, ALGO_BASE_RECIPE)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            if len(errors) > 1:
                raise ImageBuildError("; ".join(str(e) for e in errors))
            raise errors[0]
        results[ECHO_IMAGE] = _build_echo(client, EchoRecipe(), results[ALGO_BASE_IMAGE], progress, force,
                                          replaced)
        _remove_replaced(client, replaced, keep=set(results.values()))
        return {tag: results[tag] for tag in (VPN_IMAGE, ALGO_BASE_IMAGE, ECHO_IMAGE)}
    finally:
        if own_client:
            client.close()


def build_algorithm_image(tag: str, files: tuple[str, ...], dockerfile: str,
                          client: docker.DockerClient | None = None, progress: Progress = print,
                          force: bool = False, extra: dict[str, Path] | None = None,
                          estimate_s: int = 3) -> str:
    """An algorithm image built like the echo image: `files` of this repository (under /app)
    and `extra` host files (at their context paths) on top of the algorithm base image,
    skipped while files, Dockerfile and base are unchanged. Returns the image id. The base
    image must exist (`vpnagent images build`)."""
    own_client = client is None
    client = client or docker.from_env(timeout=300)
    try:
        _, base_id = _label(client, ALGO_BASE_IMAGE)
        if base_id is None:
            raise ImageBuildError(f"{tag}: the base image {ALGO_BASE_IMAGE} is missing; fix: vpnagent images build")
        recipe = EchoRecipe(tag=tag, files=files, dockerfile=dockerfile, extra=dict(extra or {}),
                            estimate_s=estimate_s)
        return _build_echo(client, recipe, base_id, progress, force)
    finally:
        if own_client:
            client.close()


def _make_wheelhouse(recipe: AgentRecipe, wheel_dir: Path, src_dir: Path, progress: Progress) -> None:
    """`pip wheel` of the vpnagent sources and all their dependencies (from PyPI) on the host."""
    recipe.write_sources(src_dir)
    progress(f"{recipe.tag}: building the wheelhouse with {recipe.python} -m pip wheel (dependencies from PyPI)")
    t0 = time.monotonic()
    argv = [recipe.python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
            "--wheel-dir", str(wheel_dir), str(src_dir)]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=WHEEL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{recipe.tag}: pip wheel took longer than {WHEEL_TIMEOUT_S} s; check that PyPI "
                              "(or your pip index) is reachable") from None
    except OSError as exc:
        raise ImageBuildError(f"{recipe.tag}: cannot run {recipe.python} ({exc}); run with the Python of the "
                              "vpnagent virtualenv") from None
    wheels = sorted(wheel_dir.glob("*.whl"))
    if proc.returncode != 0 or not any(w.name.startswith("vpnagent-") for w in wheels):
        tail = "\n".join(proc.stdout.decode(errors="replace").strip().splitlines()[-15:])
        raise ImageBuildError(
            f"{recipe.tag}: pip wheel failed (exit {proc.returncode}); check that PyPI (or the index in your "
            f"pip config) is reachable and that {recipe.python} has pip. Its last output:\n{tail}")
    size = sum(w.stat().st_size for w in wheels) / 1e6
    progress(f"{recipe.tag}: {len(wheels)} wheels, {size:.0f} MB in {time.monotonic() - t0:.1f} s")


def _docker_build_streamed(client: docker.DockerClient, tag: str, context: io.BytesIO, key: str,
                           progress: Progress) -> str:
    """`docker build` with each Dockerfile step reported as it starts; returns the image id."""
    log: list[str] = []
    try:
        for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, labels={RECIPE_LABEL: key},
                                      rm=True, forcerm=True, pull=False, decode=True):
            text = str(chunk.get("stream") or "").rstrip()
            if text:
                log.append(text)
                if text.startswith("Step "):
                    progress(f"{tag}: {text[:120]}")
            if "error" in chunk:
                tail = "\n".join(log[-20:])[-3000:]
                raise ImageBuildError(f"{tag}: docker build failed: {str(chunk['error']).strip()}\n{tail}")
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"{tag}: docker build failed: {exc}; is the Docker engine running and is there "
                              "disk space left?") from None
    label, image_id = _label(client, tag)
    if label != key or image_id is None:
        raise ImageBuildError(f"{tag}: built, but the image does not carry the recipe label {key}")
    return image_id


def _connect(client: docker.DockerClient | None) -> docker.DockerClient:
    if client is not None:
        return client
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"Docker engine unreachable ({exc}); start dockerd (and run as root)") from None
    return client


def build_agent_image(client: docker.DockerClient | None = None, progress: Progress = print,
                      force: bool = False, recipe: AgentRecipe | None = None) -> str:
    """Build (or find cached) the node agent image `vpnagent/agent:latest`; returns its id.

    Cached while the sources the wheel is made of and the base image are unchanged; the
    dependencies' versions are whatever PyPI had at the last build (`force` refreshes them)."""
    recipe = recipe or AgentRecipe()
    own_client = client is None
    client = _connect(client)
    try:
        replaced: list[str] = []
        base_id = _build_debootstrap(client, AGENT_BASE_RECIPE, progress, force, replaced)
        key = recipe.recipe_hash(base_id)
        cached = _cached(client, recipe.tag, key, force, progress, replaced)
        if cached:
            return cached
        progress(f"{recipe.tag}: building (about {recipe.estimate_s} s)")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="vpnagent-agent-") as tmp:
            wheel_dir, src_dir = Path(tmp, "wheels"), Path(tmp, "src")
            _make_wheelhouse(recipe, wheel_dir, src_dir, progress)
            try:
                image_id = _docker_build_streamed(client, recipe.tag, recipe.context(wheel_dir), key, progress)
            finally:
                # the wheel stage's images are build leftovers, tagged by nothing
                for image in client.images.list(all=True, filters={"label": f"{AGENT_STAGE_LABEL}=agent-wheels"}):
                    if not image.tags:
                        try:
                            client.images.remove(image.id, noprune=False)
                        except docker.errors.DockerException:
                            pass
        progress(f"{recipe.tag}: built in {time.monotonic() - t0:.1f} s, {_size_mb(client, recipe.tag)}")
        _remove_replaced(client, replaced, keep={base_id, image_id})
        return image_id
    finally:
        if own_client:
            client.close()


def ensure_images(client: docker.DockerClient | None = None, progress: Progress = print,
                  force: bool = False) -> dict[str, str]:
    """Make sure the images exist and match their recipes (building what changed)."""
    return build_images(client, progress=progress, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnagent.images",
                                     description="Build the local vpnagent images (vpn, algo-base, echo).")
    parser.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    parser.add_argument("--agent", action="store_true",
                        help=f"also build the node agent's image {AGENT_IMAGE} (wheels from PyPI, about a minute)")
    args = parser.parse_args(argv)
    try:
        build_images(force=args.force, progress=lambda m: print(m, flush=True))
        if args.agent:
            build_agent_image(force=args.force, progress=lambda m: print(m, flush=True))
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
