"""What goes into the local images, as data: their tags, the mmdebstrap recipes of the base
images, the algorithm images (this repository's files on top of the algorithm base) and the
node agent's image, each with a hash of its recipe.

No container engine is imported here. The hash decides whether an image must be rebuilt,
so it is worth testing on its own, and the tags and file lists are facts other code and
tests rely on without building anything. Building the images for Docker is
`vpnagent.runtime.docker_images`; a runtime that pulls from a registry needs only the tags.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

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
    # A later Debian release as a second source, for packages named `name/<that release>`;
    # everything else stays on `suite` (it is pinned as the default release).
    later_suite: str | None = None

    def recipe_hash(self) -> str:
        fields = {"suite": self.suite, "mirror": self.mirror, "packages": list(self.packages),
                  "options": list(self.options), "cmd": list(self.cmd), "v": 1}
        if self.later_suite:
            fields["later_suite"] = self.later_suite
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def changes(self) -> list[str]:
        """The Dockerfile instructions an import of the root file system applies (`docker
        import --change`): the recipe label, so the next build can be skipped, and the CMD."""
        return [f"LABEL {RECIPE_LABEL}={self.recipe_hash()}", f"CMD {json.dumps(list(self.cmd))}"]

    def command(self, target: str) -> list[str]:
        if not self.later_suite:
            return ["mmdebstrap", "-q", *self.options, f"--include={','.join(self.packages)}",
                    self.suite, target, self.mirror]
        return ["mmdebstrap", "-q", *self.options, f'--aptopt=APT::Default-Release "{self.suite}"',
                f"--include={','.join(self.packages)}", self.suite, target,
                f"deb {self.mirror} {self.suite} main", f"deb {self.mirror} {self.later_suite} main"]


# wireguard-go and wg: the direct peer links of the WireGuard data plane (dataplane/wireguard.py);
# with kernel WireGuard on the host only `wg` is used. wireguard-go comes from Debian 13: Debian
# 12's (0.0.20220316) predates the 2023 segmentation offloads and moved a quarter as much here
# (632 against 2583 Mbit/s between two containers, 19.1 against 5.4 CPU s/GB). It is one static
# Go program; the rest of the image stays Debian 12.
LATER_SUITE = "trixie"
VPN_RECIPE = DebootstrapRecipe(VPN_IMAGE, ("openvpn", "iptables", "iproute2", "iputils-ping", "procps",
                                           f"wireguard-go/{LATER_SUITE}", "wireguard-tools"),
                               later_suite=LATER_SUITE)
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
class AlgorithmRecipe:
    """An algorithm image: source files of this repo (under /app) and extra host files on top
    of the algorithm base image. The echo image is one (`echo_recipe`); examples and test
    algorithms build theirs the same way."""

    tag: str
    files: tuple[str, ...]
    dockerfile: str
    root: Path = REPO_ROOT
    estimate_s: int = 3
    # More build-context files from outside the repo (context path -> host file or package
    # resource), e.g. wheels, or an algorithm directory's files (`vpnagent.algorithm_recipe`).
    extra: dict[str, Path | Traversable] = field(default_factory=dict)
    _contents: dict[str, bytes] = field(default_factory=dict, repr=False)

    def contents(self) -> dict[str, bytes]:
        """Build-context path -> bytes: app/<file> for the repo files, then the extra files."""
        if not self._contents:
            wanted = {f"app/{rel}": self.root / rel for rel in self.files} | dict(self.extra)
            for name, path in wanted.items():
                try:
                    self._contents[name] = path.read_bytes()
                except OSError as exc:
                    fix = "; run from a complete vpnagent checkout" if name.startswith("app/") and self.files else ""
                    raise ImageBuildError(f"{self.tag}: cannot read {path} ({exc}){fix}") from None
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


def echo_recipe(root: Path = REPO_ROOT) -> AlgorithmRecipe:
    """The echo test algorithm's recipe. A fresh one each time: a recipe keeps the file
    contents it read, and a rebuild must see the files as they are now."""
    return AlgorithmRecipe(ECHO_IMAGE, ECHO_FILES, ECHO_DOCKERFILE, root=root)


# What the vpnagent wheel is built from: these files and every file under these packages.
AGENT_PROJECT_FILES: tuple[str, ...] = ("setup.cfg", "pyproject.toml", "README.md")
# vpnagent_algorithm: the algorithm client (a link to clients/python/vpnagent_algorithm), so the
# agent's image can build algorithm images too.
AGENT_PACKAGE_DIRS: tuple[str, ...] = ("vpnagent", "vpnshared", "server_ext", "test_algorithms",
                                       "vpnagent_algorithm")
AGENT_PREFIX = "/opt/vpnagent"
AGENT_STAGE_LABEL = "vpnagent.stage"  # marks the throw-away wheel stage, removed after the build
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
