"""Build the local images for the Docker engine (no registry is reachable): the VPN image,
the algorithm base image and the echo test algorithm; on demand also the node agent's own
image. What goes into each image, and the hash that decides whether it is rebuilt, is in
`vpnagent.image_recipes`; this module only turns those recipes into Docker images.

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
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import docker
import docker.errors

from ..algorithm_recipe import AlgorithmSpec, load_algorithm
from ..image_recipes import (AGENT_BASE_RECIPE, AGENT_IMAGE, AGENT_STAGE_LABEL, ALGO_BASE_IMAGE,
                             ALGO_BASE_RECIPE, ECHO_IMAGE, MERGED_USR_HOOK, RECIPE_LABEL, SOURCE_DATE_EPOCH,
                             VPN_IMAGE, VPN_RECIPE, AgentRecipe, AlgorithmRecipe, DebootstrapRecipe,
                             ImageBuildError, echo_recipe)

# ImageBuildError is what every build here raises: callers catch it from this module.
__all__ = ["ImageBuildError", "Progress", "build_agent_image", "build_algorithm_dir", "build_algorithm_image",
           "build_images", "main"]

Progress = Callable[[str], None]

MMDEBSTRAP_TIMEOUT_S = 900
WHEEL_TIMEOUT_S = 600


def _connect(client: docker.DockerClient | None) -> docker.DockerClient:
    """`client`, or a new one to the local engine (long timeout: an import or a build takes
    minutes); an unreachable engine fails here, with the fix, not halfway through a build."""
    if client is not None:
        return client
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"Docker engine unreachable ({exc}); start dockerd (and run as root)") from None
    return client


def _recipe_and_id(client: docker.DockerClient, tag: str) -> tuple[str | None, str | None]:
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
    current, image_id = _recipe_and_id(client, tag)
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
    label, image_id = _recipe_and_id(client, recipe.tag)
    if label != key:
        raise ImageBuildError(f"{recipe.tag}: imported, but the image does not carry the recipe label")
    progress(f"{recipe.tag}: built in {time.monotonic() - t0:.1f} s, {_size_mb(client, recipe.tag)}")
    return image_id  # type: ignore[return-value]


def _build_algorithm(client: docker.DockerClient, recipe: AlgorithmRecipe, base_id: str, progress: Progress,
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
    client = _connect(client)
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
        results[ECHO_IMAGE] = _build_algorithm(client, echo_recipe(), results[ALGO_BASE_IMAGE], progress, force,
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
    client = _connect(client)
    try:
        _, base_id = _recipe_and_id(client, ALGO_BASE_IMAGE)
        if base_id is None:
            raise ImageBuildError(f"{tag}: the base image {ALGO_BASE_IMAGE} is missing; fix: vpnagent images build")
        recipe = AlgorithmRecipe(tag=tag, files=files, dockerfile=dockerfile, extra=dict(extra or {}),
                                 estimate_s=estimate_s)
        return _build_algorithm(client, recipe, base_id, progress, force)
    finally:
        if own_client:
            client.close()


def build_algorithm_dir(directory: str | Path | AlgorithmSpec, tag: str | None = None,
                        client: docker.DockerClient | None = None, progress: Progress = print,
                        force: bool = False) -> tuple[str, str]:
    """`vpnagent images build-algorithm DIR`: the image a directory's vpnagent-algorithm.yaml
    describes, on top of the algorithm base image, with the client package of this
    installation. Returns (tag, image id).

    Everything that can be wrong with the input is found before the engine is asked to build
    (recipe, files, base image), and the legacy builder tags only a finished image, so a
    failure leaves no new tag behind."""
    spec = directory if isinstance(directory, AlgorithmSpec) else load_algorithm(directory, tag)
    recipe = spec.recipe()
    recipe.contents()  # read every file now: a file that vanished is an error before the build
    own_client = client is None
    client = _connect(client)
    try:
        _, base_id = _recipe_and_id(client, ALGO_BASE_IMAGE)
        if base_id is None:
            raise ImageBuildError(f"{spec.tag}: the algorithm base image {ALGO_BASE_IMAGE} is not built yet; "
                                  "fix: vpnagent images build (about 20 s), then run this again")
        return spec.tag, _build_algorithm(client, recipe, base_id, progress, force)
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
    label, image_id = _recipe_and_id(client, tag)
    if label != key or image_id is None:
        raise ImageBuildError(f"{tag}: built, but the image does not carry the recipe label {key}")
    return image_id


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnagent.runtime.docker_images",
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
