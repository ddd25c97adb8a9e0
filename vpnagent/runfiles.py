"""The files a run shares with its algorithm container (runs/<id>/ is bind-mounted into it,
writable). The agent runs as root, the container does not deserve its trust: whatever sits
at output.json when the run ends may be a link to a host file, a FIFO, a device or a huge
file. It is read without following links, only from a regular file, and only up to a cap."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any


class OutputRefused(Exception):
    """The run's output cannot be taken; the message says why (it becomes the run's log line)."""


def read_output(path: Path, max_bytes: int) -> Any:
    """The JSON in `path`, or None when the algorithm wrote none. Raises OutputRefused for a
    link, anything but a regular file, more than `max_bytes`, or bytes that are not JSON."""
    try:
        # O_NOFOLLOW: a link fails here (ELOOP) instead of being followed to a host file;
        # O_NONBLOCK: a FIFO opens at once instead of hanging the agent until a writer comes.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        kind = "a symbolic link" if os.path.islink(path) else f"unreadable ({exc.strerror})"
        raise OutputRefused(f"output file is {kind}; refused") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputRefused(f"output file is not a regular file ({_kind(st.st_mode)}); refused")
        if st.st_size > max_bytes:
            raise OutputRefused(f"output file is {st.st_size} bytes, more than max_output_bytes ({max_bytes}); refused")
        data = os.read(fd, max_bytes + 1)  # the size may have grown since fstat
        if len(data) > max_bytes:
            raise OutputRefused(f"output file grew past max_output_bytes ({max_bytes}); refused")
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise OutputRefused(f"output file is not JSON ({exc}); refused") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def prepare(run_dir: Path, files: dict[str, bytes], subdirs: tuple[str, ...] = ()) -> None:
    """A fresh run directory holding only `files` (the input, for vantage6 runs also the
    token) and empty `subdirs`. Whatever an earlier container of the same run left there
    (links included) is removed first, never followed."""
    remove(run_dir)
    run_dir.mkdir(parents=True, mode=0o700)
    for name in subdirs:
        (run_dir / name).mkdir(mode=0o700)
    for name, content in files.items():
        fd = os.open(run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(content)


def remove(run_dir: Path) -> None:
    """Delete a run directory and what the container put in it (rmtree does not follow links)."""
    if run_dir.is_symlink():
        run_dir.unlink()
    elif run_dir.exists():
        shutil.rmtree(run_dir)
