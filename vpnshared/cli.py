"""The options both command lines share, so `vpnagent` and `vpnagent-server` read alike:
`--version`, `--log-level LEVEL` (and `-v` for debug) and `--config PATH` with a default
location an environment variable overrides. The shared options are accepted anywhere on
the line, before or after the subcommand: every subcommand parser made through
`add_subcommands` carries them, so a new subcommand gets them without asking."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

DISTRIBUTION = "vpnagent"  # the installed package both commands come from (setup.cfg [metadata] name)
DOC_DIR = ("share", "doc", "vpnagent")  # under the installation's prefix (setup.cfg [options.data_files])
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "info"


def package_version() -> str:
    """The installed package's version (setup.cfg), the one number both CLIs report."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run from a source tree without `pip install`)"


def shipped_doc(name: str) -> Path | None:
    """A file of docs/ as the installed package ships it (e.g. "examples/node.yaml" in
    /opt/vpnagent/share/doc/vpnagent/); None when this installation has none (a source tree)."""
    path = Path(sys.prefix, *DOC_DIR, name)
    return path if path.is_file() else None


@dataclass(frozen=True)
class ConfigOption:
    """Where a command line finds its YAML config when --config is not given."""

    default_path: str  # e.g. /etc/vpnagent/node.yaml
    env_var: str  # overrides default_path, e.g. VPNAGENT_CONFIG
    what: str  # "node config", for the help text and errors
    how_to_create: str  # the fix when the file is missing, as one clause
    example: str = ""  # a shipped example config (shipped_doc name), named in that fix when installed

    def default(self) -> str:
        return os.environ.get(self.env_var) or self.default_path

    def help(self) -> str:
        now = f" (set: {self.default()})" if os.environ.get(self.env_var) else ""
        return f"{self.what} (YAML); default: ${self.env_var}{now} if set, else {self.default_path}"


class MissingConfig(Exception):
    """The config file a command needs is not there; the message says which and how to fix it."""


def require_config(path: str, option: ConfigOption) -> Path:
    """`path` when it is a file, else MissingConfig naming the path, where that path came
    from and how to create a config."""
    p = Path(path)
    if p.is_file():
        return p
    problem = "is a directory, not a file" if p.is_dir() else "does not exist"
    if path != option.default():
        source = "given with --config"
    elif os.environ.get(option.env_var):
        source = f"from ${option.env_var}"
    else:
        source = f"the default; --config PATH or ${option.env_var} name another"
    example = shipped_doc(option.example) if option.example else None
    fix = f"{option.how_to_create} (example: {example})" if example else option.how_to_create
    raise MissingConfig(f"{option.what} {p} ({source}) {problem}; {fix}")


def log_level(text: str) -> str:
    """An argparse type: one of LOG_LEVELS, any case; else a usage error naming them."""
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def _shared_options(config: ConfigOption | None, defaults: bool) -> argparse.ArgumentParser:
    """A parent parser with the shared options. On the top-level parser they carry their
    defaults; on subcommand parsers they default to SUPPRESS, so an option given before the
    subcommand is not overwritten by the subcommand's default."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("options of every command (before or after the subcommand)")
    level = DEFAULT_LOG_LEVEL if defaults else argparse.SUPPRESS
    group.add_argument("--log-level", type=log_level, metavar="LEVEL", default=level,
                       help=f"one of {', '.join(LOG_LEVELS)} (default: {DEFAULT_LOG_LEVEL})")
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                       default=level, help="the same as --log-level debug")
    if config is not None:
        group.add_argument("--config", "-c", metavar="PATH", help=config.help(),
                           default=config.default() if defaults else argparse.SUPPRESS)
    return parent


def top_parser(prog: str, description: str, config: ConfigOption | None) -> argparse.ArgumentParser:
    """The command line's parser with --version and the shared options."""
    parser = argparse.ArgumentParser(prog=prog, description=description, parents=[_shared_options(config, True)])
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return parser


def add_subcommands(parser: argparse.ArgumentParser, config: ConfigOption | None,
                    **kwargs: object) -> argparse._SubParsersAction:
    """`parser.add_subparsers(**kwargs)` whose parsers (and their own subcommands, made
    with this function again) accept the shared options. A subcommand that defines an
    option of the same name itself keeps its own (conflict_handler="resolve")."""
    def make(**parser_kwargs: Any) -> argparse.ArgumentParser:
        # a fresh parent each time: argparse shares a parent's actions with every child, and
        # "resolve" removes a conflicting option string from the action itself, so one
        # subcommand's own --config would take --config away from all the others
        return argparse.ArgumentParser(parents=[_shared_options(config, False)], conflict_handler="resolve",
                                       **parser_kwargs)

    return parser.add_subparsers(parser_class=make, **kwargs)


def setup_logging(level: str, quiet: tuple[str, ...] = ()) -> None:
    """Log lines to stderr at `level`; the `quiet` libraries only from warnings up (their
    debug output is about their own plumbing, not about what went wrong)."""
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
