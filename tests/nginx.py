"""Debian's nginx in front of a test's servers, on a loopback port: a config of the test's
own `server` block, a prefix directory of the test's, stopped afterwards (also on failure)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tests.conftest import docker_unavailable
from tests.waiting import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@contextmanager
def running_nginx(root: Path, server: Callable[[int], str], what: str) -> Iterator[int]:
    """nginx with `server(port)` as its one server block's body; yields the port once it
    listens. `what` names the test in the skip (or failure) when nginx is missing."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        docker_unavailable("needs nginx (apt-get install nginx-light)", what)
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    temps = " ".join(f"{name}_temp_path {root / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (root / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {root / 'nginx.pid'};
error_log {root / 'error.log'} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    {temps}
    server {{
        {server(port)}
    }}
}}
""")
    proc = subprocess.Popen([binary, "-p", str(root), "-c", str(root / "nginx.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, "nginx to listen", 10)
        assert proc.poll() is None, (root / "error.log").read_text()
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
