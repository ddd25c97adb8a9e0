"""An algorithm directory and its recipe, `vpnagent-algorithm.yaml`, turned into the build
context of an algorithm image: the listed files under /app, the algorithm client package
`vpnagent_algorithm` under /opt/vpnagent-client (read from the installed package, so no
checkout is needed), and a Dockerfile rendered on top of the algorithm base image.

The recipe is a small YAML mapping rather than a Dockerfile: the algorithm base image has no
package manager and no shell tools worth scripting, so what an algorithm can say is what to
copy, how to start and which ports it serves, and each of those is checked here, before any
engine is asked to do anything. No container engine is imported; building the context for
Docker is `vpnagent.runtime.docker_images.build_algorithm_dir`.
"""
from __future__ import annotations

import difflib
import importlib.resources
import json
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from vpnshared.schema import Key, schema_table

from .image_recipes import (AGENT_BASE_IMAGE, AGENT_IMAGE, ALGO_BASE_IMAGE, ECHO_IMAGE, VPN_IMAGE,
                            AlgorithmRecipe, ImageBuildError)
from .ports import LABEL_RE, MAX_PORTS_PER_RUN

RECIPE_FILE = "vpnagent-algorithm.yaml"
CLIENT_PACKAGE = "vpnagent_algorithm"
CLIENT_DIR = "/opt/vpnagent-client"  # on PYTHONPATH after /app: the algorithm's own files win
APP_DIR = "/app"
# The images `vpnagent images build` makes: an algorithm recipe must not replace them.
RESERVED_TAGS = frozenset({VPN_IMAGE, ALGO_BASE_IMAGE, ECHO_IMAGE, AGENT_BASE_IMAGE, AGENT_IMAGE})

SCHEMA: dict[str, Key] = {
    "tag": Key(str, "the image's name, e.g. `myorg/ring-sum:1.0` (`:latest` when no tag is given); "
               "`--tag` overrides it", shown="from `--tag`"),
    "module": Key(str, "the Python module the container runs as `python3 -m MODULE`; give this or `command`"),
    "command": Key(list, "the container's command as a list of words, e.g. `[python3, main.py]`; give "
                   "this or `module`"),
    "files": Key(list, "files and directories of the algorithm directory (relative paths) copied to "
                 "`/app/<path>`; a directory is copied whole, without `__pycache__`, `*.pyc` and dot files",
                 required=True),
    "ports": Key(dict, f"TCP ports other runs connect to, each with its label or null: `{{7777: ring}}` "
                 f"(`EXPOSE 7777`, `LABEL p7777=ring`); none: the node gives the run port 8888; at most "
                 f"{MAX_PORTS_PER_RUN}", default={}, shown="`{}`"),
    "env": Key(dict, "environment variables of the image, name: value", default={}, shown="`{}`"),
    "pythonpath": Key(list, "directories among `files` that go on `PYTHONPATH` after `/app` (e.g. `vendor`, "
                      "filled by `pip install --target vendor PACKAGE`)", default=[], shown="`[]`"),
}
# Keys a Dockerfile writer reaches for, and why they are not there.
NOT_SUPPORTED = {
    "packages": "the algorithm base image has no package manager (apt); vendor pure-Python dependencies "
                "instead: `pip install --target DIR/vendor PACKAGE` on a host with the base image's Python "
                "(3.11), then list `vendor` under files and pythonpath",
    "from": f"algorithm images are always built on {ALGO_BASE_IMAGE} (`vpnagent images build`); for another "
            "base, write a Dockerfile and use `docker build`",
    "run": "there is no RUN step (the base image has no package manager or build tools); prepare files on "
           "the host and list them under files",
}
NOT_SUPPORTED |= {"apt": NOT_SUPPORTED["packages"], "base": NOT_SUPPORTED["from"], "image": NOT_SUPPORTED["from"]}

TAG_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = ("PYTHONPATH", "PYTHONUNBUFFERED")  # set by the recipe; PYTHONPATH grows with `pythonpath`
MAX_FILE_BYTES = 512 << 20  # a build context is held in memory


class AlgorithmRecipeError(ImageBuildError):
    """The algorithm directory or its recipe cannot be built; the message lists every problem
    with its fix. Nothing has been built or tagged."""

    def __init__(self, directory: Path, problems: list[str]) -> None:
        self.problems = problems
        where = directory / RECIPE_FILE
        super().__init__(f"{where}: " + problems[0] if len(problems) == 1 else
                         f"{where}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class AlgorithmSpec:
    """A validated recipe: what goes into the image and how it starts."""

    directory: Path
    tag: str
    command: tuple[str, ...]
    files: dict[str, Path]  # path under /app (posix) -> file in the directory
    ports: tuple[tuple[int, str | None], ...]
    env: tuple[tuple[str, str], ...]
    pythonpath: tuple[str, ...]

    def dockerfile(self) -> str:
        """The image on top of the algorithm base: the client package, then the algorithm's
        files (the layer that changes most, last), the environment, the ports, the command."""
        path = ":".join([APP_DIR, *(f"{APP_DIR}/{p}" for p in self.pythonpath), CLIENT_DIR])
        env = " ".join(f"{name}={_quoted(value)}" for name, value in
                       (("PYTHONPATH", path), ("PYTHONUNBUFFERED", "1"), *self.env))
        lines = [f"FROM {ALGO_BASE_IMAGE}",
                 f"COPY client/ {CLIENT_DIR}/",
                 f"COPY app/ {APP_DIR}/",
                 f"ENV {env}",
                 f"WORKDIR {APP_DIR}"]
        lines += [f"EXPOSE {port}" for port, _ in self.ports]
        lines += [f"LABEL p{port}={label}" for port, label in self.ports if label]
        lines.append(f"CMD {json.dumps(list(self.command))}")
        return "\n".join(lines) + "\n"

    def recipe(self) -> AlgorithmRecipe:
        """The image recipe: context app/<file>, client/vpnagent_algorithm/<module>, Dockerfile.
        Its hash covers all of them, so a changed file or client rebuilds the image."""
        extra: dict[str, Path | Traversable] = {f"app/{rel}": path for rel, path in self.files.items()}
        extra |= {f"client/{CLIENT_PACKAGE}/{name}": res for name, res in client_package_files().items()}
        return AlgorithmRecipe(tag=self.tag, files=(), dockerfile=self.dockerfile(), root=self.directory,
                               extra=extra)


def _quoted(value: str) -> str:
    """A Dockerfile ENV value: double quotes, with `\\`, `"` and `$` (variable expansion) escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def client_package_files() -> dict[str, Traversable]:
    """The modules of the installed algorithm client package (name -> resource). In a wheel
    install it is the `vpnagent_algorithm` the vpnagent distribution ships; in a checkout,
    clients/python/vpnagent_algorithm through the top-level link."""
    try:
        root = importlib.resources.files(CLIENT_PACKAGE)
    except ModuleNotFoundError:
        raise ImageBuildError(f"the algorithm client package {CLIENT_PACKAGE} is not installed; reinstall "
                              "vpnagent (its distribution ships it), or pip install ./clients/python") from None
    found = {res.name: res for res in root.iterdir() if res.is_file() and res.name.endswith(".py")}
    if "__init__.py" not in found:
        raise ImageBuildError(f"the algorithm client package {CLIENT_PACKAGE} at {root} has no __init__.py; "
                              "reinstall vpnagent")
    return dict(sorted(found.items()))


def load_algorithm(directory: str | Path, tag: str | None = None) -> AlgorithmSpec:
    """Read and check DIRECTORY/vpnagent-algorithm.yaml and the files it lists; every problem
    is reported at once, as one AlgorithmRecipeError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AlgorithmRecipeError(directory, [f"{directory} is not a directory; give the algorithm's "
                                               f"directory, the one holding {RECIPE_FILE}"])
    path = directory / RECIPE_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AlgorithmRecipeError(directory, [
            f"no recipe: write {path}, e.g.\n"
            "      tag: myorg/my-algorithm:1.0\n      module: my_algorithm\n"
            "      files: [my_algorithm.py]\n      ports: {7777: ring}"]) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AlgorithmRecipeError(directory, [f"cannot read the recipe: {exc}; fix: write it as a YAML "
                                               "mapping of key: value"]) from None
    return parse_algorithm(raw, directory, tag)


def parse_algorithm(raw: Any, directory: Path, tag: str | None = None) -> AlgorithmSpec:
    """Validate a recipe mapping (as loaded from YAML) against the files of `directory`."""
    if not isinstance(raw, dict):
        raise AlgorithmRecipeError(directory, [f"the recipe must be a YAML mapping of key: value (got "
                                               f"{type(raw).__name__}); keys: {', '.join(SCHEMA)}"])
    problems: list[str] = []
    for key in raw:
        if key in SCHEMA:
            continue
        why = NOT_SUPPORTED.get(str(key).lower())
        if why:
            problems.append(f"{key}: not supported: {why}")
        else:
            close = difflib.get_close_matches(str(key), list(SCHEMA), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"{key}: unknown key; {hint}keys: {', '.join(SCHEMA)}")
    values: dict[str, Any] = {}
    for key, spec in SCHEMA.items():
        value = raw.get(key)
        if value is None:
            if spec.required:
                problems.append(f"{key}: missing; {spec.help}")
            values[key] = spec.default
        elif not spec.accepts(value):
            problems.append(f"{key}: {_shown(value)} is a {type(value).__name__}; it must be a {spec.type_names} "
                            f"({spec.help})")
            values[key] = spec.default
        else:
            values[key] = value

    image = _tag(tag, values["tag"], problems)
    command = _command(values["module"], values["command"], problems)
    if values["files"] == []:
        problems.append("files: empty; list the files and directories to copy to /app, e.g. [my_algorithm.py]")
    files = _files(directory, values["files"] or [], problems)
    ports = _ports(values["ports"], problems)
    env = _env(values["env"], problems)
    pythonpath = _pythonpath(values["pythonpath"], files, problems)
    if problems:
        raise AlgorithmRecipeError(directory, problems)
    return AlgorithmSpec(directory=directory, tag=image, command=command, files=files, ports=ports, env=env,
                         pythonpath=pythonpath)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _tag(option: str | None, value: str | None, problems: list[str]) -> str:
    given, source = (option, "--tag") if option is not None else (value, "tag")
    if not given:
        problems.append("tag: missing; name the image in the recipe (tag: myorg/my-algorithm:1.0) or with --tag")
        return ""
    if not TAG_RE.match(given) or len(given) > 255:
        problems.append(f"{source}: {_shown(given)} is not an image name; use lower-case letters, digits, "
                        "'.', '_', '-' and '/' with an optional :TAG, e.g. myorg/my-algorithm:1.0")
        return ""
    name = given if ":" in given.rsplit("/", 1)[-1] else f"{given}:latest"
    if name in RESERVED_TAGS:
        problems.append(f"{source}: {name} is one of vpnagent's own images (`vpnagent images build` makes it); "
                        "give the algorithm a name of its own")
    return name


def _command(module: str | None, command: list | None, problems: list[str]) -> tuple[str, ...]:
    if module is not None and command is not None:
        problems.append("module, command: give one of them, not both (module: M runs `python3 -m M`)")
        return ()
    if module is not None:
        if not MODULE_RE.match(module):
            problems.append(f"module: {_shown(module)} is not a Python module name; give dotted identifiers, "
                            "e.g. my_algorithm or my_package.main")
            return ()
        return ("python3", "-m", module)
    if command is not None:
        if not command or not all(isinstance(word, str) and word and "\0" not in word for word in command):
            problems.append(f"command: {_shown(command)} must be a non-empty list of non-empty strings, "
                            "e.g. [python3, main.py]")
            return ()
        return tuple(command)
    problems.append("module: missing; say how the algorithm starts: module: my_algorithm (runs "
                    "`python3 -m my_algorithm`) or command: [python3, main.py]")
    return ()


def _skipped(rel: PurePosixPath) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in rel.parts) or rel.suffix == ".pyc"


def _files(directory: Path, listed: list, problems: list[str]) -> dict[str, Path]:
    """Path under /app -> file, for every listed file and every file under a listed
    directory. Paths stay inside the directory, links included."""
    root = directory.resolve()
    found: dict[str, Path] = {}
    total = 0
    for entry in listed:
        if not isinstance(entry, str) or not entry.strip():
            problems.append(f"files: {_shown(entry)} is not a path; give paths relative to {directory}")
            continue
        rel = PurePosixPath(entry)
        if rel.is_absolute() or ".." in rel.parts or "\\" in entry:
            problems.append(f"files: {entry!r} is outside the algorithm directory; give a path relative to "
                            f"{directory}, without '..'")
            continue
        path = directory / rel
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            problems.append(f"files: {entry!r} does not exist in {directory}; create it or remove it from files")
            continue
        if resolved != root and root not in resolved.parents:
            problems.append(f"files: {entry!r} leads outside {directory} (a link); copy the file into the "
                            "directory instead")
            continue
        if resolved.is_dir():
            members = [p for p in sorted(path.rglob("*"))
                       if p.is_file() and not _skipped(PurePosixPath(p.relative_to(directory).as_posix()))]
            if not members:
                problems.append(f"files: the directory {entry!r} holds no files to copy")
        else:
            members = [path]
        for member in members:
            resolved = member.resolve()
            if root not in resolved.parents:
                problems.append(f"files: {member.relative_to(directory).as_posix()!r} leads outside {directory} "
                                "(a link); copy the file into the directory instead")
                continue
            total += resolved.stat().st_size
            found[PurePosixPath(member.relative_to(directory).as_posix()).as_posix()] = member
    if total > MAX_FILE_BYTES:
        problems.append(f"files: {total >> 20} MiB in all; at most {MAX_FILE_BYTES >> 20} MiB (the build context "
                        "is held in memory): leave data out of the image, nodes mount it as databases")
    return dict(sorted(found.items()))


def _ports(value: dict, problems: list[str]) -> tuple[tuple[int, str | None], ...]:
    ports: list[tuple[int, str | None]] = []
    for key, label in value.items():
        number = key if isinstance(key, int) and not isinstance(key, bool) else \
            int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else None
        if number is None or not 1 <= number <= 65535:
            problems.append(f"ports: {_shown(key)} is not a TCP port; give a number within 1-65535, e.g. 7777: ring")
            continue
        if label is not None and not (isinstance(label, str) and LABEL_RE.match(label)):
            problems.append(f"ports: label {_shown(label)} of port {number} must be 1-64 of A-Z a-z 0-9 _ . - "
                            "(or null for none)")
            continue
        ports.append((number, label))
    if len(ports) > MAX_PORTS_PER_RUN:
        problems.append(f"ports: {len(ports)} ports; a node forwards at most {MAX_PORTS_PER_RUN} per run")
    return tuple(sorted(ports))


def _env(value: dict, problems: list[str]) -> tuple[tuple[str, str], ...]:
    env: list[tuple[str, str]] = []
    for name, item in value.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            problems.append(f"env: {_shown(name)} is not a variable name; use letters, digits and _")
            continue
        if name.upper().startswith("VPNAGENT_") or name in RESERVED_ENV:
            problems.append(f"env: {name} is set by vpnagent (the node sets VPNAGENT_* per run; PYTHONPATH comes "
                            "from pythonpath); remove it")
            continue
        if isinstance(item, (dict, list)) or item is None:
            problems.append(f"env: {name}: {_shown(item)} must be a single value (a string or a number)")
            continue
        text = ("true" if item else "false") if isinstance(item, bool) else str(item)
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            problems.append(f"env: {name}: {_shown(text)} holds control characters (a newline?); give one line")
            continue
        env.append((name, text))
    return tuple(env)


def _pythonpath(value: list, files: dict[str, Path], problems: list[str]) -> tuple[str, ...]:
    dirs: list[str] = []
    for entry in value:
        rel = PurePosixPath(entry) if isinstance(entry, str) and entry.strip() else None
        if rel is None or rel.is_absolute() or ".." in rel.parts or ":" in entry:
            problems.append(f"pythonpath: {_shown(entry)} must be a directory relative to /app, e.g. vendor")
            continue
        if not any(PurePosixPath(f).is_relative_to(rel) and PurePosixPath(f) != rel for f in files):
            problems.append(f"pythonpath: {entry!r} is not a directory among files; list it under files too")
            continue
        dirs.append(rel.as_posix())
    return tuple(dirs)


def reference_markdown() -> str:
    """The recipe's keys as the Markdown table in docs/algorithm-guide.md."""
    return schema_table(SCHEMA)
