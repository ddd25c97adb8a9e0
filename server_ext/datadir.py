"""Who may read the server's state: the data directory is 0700 and the SQLite store 0600,
whatever the umask, because they hold the CA key, the token secret and every API key hash.
A directory or file found with wider rights (made by hand, or by a version before this
check) is tightened, with a warning saying from what, rather than refused: the operator
meant it to be the server's, and refusing would only stop the server."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .config import ServerConfigError

_log = logging.getLogger(__name__)


def private_data_dir(path: Path) -> Path:
    """Make the data directory (parents as the umask says) 0700, or tighten an existing one."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ServerConfigError(f"'data_dir' {str(path)!r} cannot be created: {exc.strerror}; give a directory "
                                "this user may create, or create it (mode 0700) for this user") from None
    if not path.is_dir():
        raise ServerConfigError(f"'data_dir' {str(path)!r} is not a directory; give a directory path")
    _tighten(path, 0o700, "data_dir")
    return path


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if it is missing (so SQLite, which keeps the mode of
    an existing file and gives its -wal and -shm files the same, never makes it 0644), or
    tighten an existing one. A missing parent directory is left for the caller to report."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServerConfigError(f"cannot create {path}: {exc.strerror}; check database_url and the rights on "
                                "its directory") from None
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if each.exists():
            _tighten(each, 0o600, "the store")


def _tighten(path: Path, mode: int, what: str) -> None:
    have = stat.S_IMODE(path.stat().st_mode)
    if have & ~mode == 0:
        return
    try:
        os.chmod(path, have & mode)
    except OSError as exc:
        raise ServerConfigError(f"{what} {path} has mode {have:04o} (others may read it) and cannot be tightened "
                                f"to {mode:04o}: {exc.strerror}; run `chmod {mode:o} {path}` as its owner") from None
    _log.warning("%s %s had mode %04o (others could read it): tightened to %04o", what, path, have, have & mode)
