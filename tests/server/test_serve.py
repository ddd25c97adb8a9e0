"""`vpnagent-server serve` as it runs in production: a real process (gunicorn, embedded) on
loopback, reached over HTTPS with the CA it made. It answers, stops cleanly on SIGTERM,
cuts clients too slow to finish their request, and refuses bad limits before it starts."""
from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import requests
import yaml

from server_ext.config import ServerConfigError
from server_ext.wsgi import APIServer, Limits
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SLACK_S = 2.5  # the worker looks for overdue connections once a second; the rest is scheduling


@dataclass
class Served:
    """A `serve` process and everything it printed so far."""
    proc: subprocess.Popen
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.output)]

    def get(self, path: str, **kwargs) -> requests.Response:
        verify = str(self.data_dir / "pki" / "ca.crt") if self.url.startswith("https") else True
        return requests.get(self.url + path, verify=verify, timeout=kwargs.pop("timeout", 10), **kwargs)

    def tls_socket(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(self.data_dir / "pki" / "ca.crt"))
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=10),
                               server_hostname="127.0.0.1")

    def stop(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def write_config(tmp_path: Path, **keys) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "host": "127.0.0.1", "port": 0, **keys}))
    return path


def start(tmp_path: Path, *args: str, **keys) -> Served:
    """`serve` with a config of `keys` (and command-line `args`)."""
    proc = subprocess.Popen([sys.executable, "-m", "server_ext.cli", "serve", "--config", str(write_config(tmp_path, **keys)),
                             *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    served = Served(proc, tmp_path / "data")
    threading.Thread(target=lambda: served.lines.extend(line.rstrip("\n") for line in proc.stdout), daemon=True).start()
    found = wait_for(lambda: re.search(r"serving on (\S+)", served.output) or proc.poll() is not None,
                     "serve to say where it listens", 30)
    assert proc.poll() is None, served.output
    served.url = found.group(1)
    return served


@pytest.fixture
def serve(tmp_path) -> Iterator:
    started: list[Served] = []

    def run(*args: str, **keys) -> Served:
        started.append(start(tmp_path, *args, **keys))
        return started[-1]

    yield run
    for served in started:
        if served.proc.poll() is None:
            os.killpg(served.proc.pid, signal.SIGKILL)  # its own session: the master and its worker
            served.proc.wait(10)


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes `sock` (reads nothing more); fails after `seconds`."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        data = sock.recv(1024)
    except (ConnectionResetError, ssl.SSLError):
        data = b""
    except TimeoutError:
        pytest.fail(f"the server kept a stalled connection open for {seconds} s")
    assert data == b"", data
    return time.monotonic() - t0


def test_serve_answers_over_https_and_sigterm_ends_it_cleanly(serve):
    served = serve()
    assert served.url.startswith("https://127.0.0.1:") and served.url.endswith("/api")
    r = served.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    workers = wait_for(served.worker_pids, "the worker to boot", 10)
    assert served.stop() == 0, served.output
    assert "Traceback" not in served.output, served.output
    assert served.output.count("stopped") == 1, served.output
    for pid in workers:
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), f"worker {pid} to end with the master", 10)


def test_half_a_request_line_is_cut_within_the_header_timeout(serve):
    served = serve(api_header_timeout=1)
    half = served.tls_socket()
    half.sendall(b"GET /api/heal")
    assert closed_within(half, 1 + SLACK_S) >= 0.9
    silent = socket.create_connection(("127.0.0.1", served.port))  # never even starts TLS
    closed_within(silent, 1 + SLACK_S)
    assert "its request headers took longer than 1 s" in served.output, served.output
    assert served.get("/health").status_code == 200


def test_a_silent_connection_is_cut_at_the_header_timeout_not_after_a_keepalive(serve):
    """gunicorn parks a connection that sends nothing for 5 s in its poller for a whole
    keepalive period; the header deadline still applies there."""
    served = serve(api_header_timeout=6, api_keepalive=60)
    silent = socket.create_connection(("127.0.0.1", served.port))
    assert 5 < closed_within(silent, 6 + SLACK_S)


def test_stalled_clients_do_not_starve_the_threads(serve):
    served = serve(api_threads=2, api_header_timeout=1)
    stalled = [served.tls_socket() for _ in range(4)]
    for sock in stalled:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
    t0 = time.monotonic()
    assert served.get("/health").status_code == 200
    assert time.monotonic() - t0 < 1 + SLACK_S
    for sock in stalled:
        closed_within(sock, 1 + SLACK_S)


def test_a_body_that_never_arrives_is_cut_at_the_request_timeout(serve):
    served = serve(api_request_timeout=1)
    sock = served.tls_socket()
    sock.sendall(b"POST /api/token/node HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"api_key\":")
    closed_within(sock, 1 + SLACK_S)
    assert served.get("/health").status_code == 200


def test_an_oversized_request_line_or_header_is_refused(serve):
    served = serve()
    assert served.get("/health?x=" + "a" * 5000).status_code == 414
    assert served.get("/health", headers={"X-Big": "b" * 9000}).status_code == 431
    assert served.get("/health", headers={f"X-{i}": "1" for i in range(60)}).status_code == 431
    assert served.get("/health").status_code == 200


def test_a_worker_that_ends_is_replaced_and_does_not_run_the_masters_cleanup(serve):
    served = serve()
    first = wait_for(served.worker_pids, "the worker to boot", 10)[0]
    os.kill(first, signal.SIGTERM)
    wait_for(lambda: len(served.worker_pids()) == 2, "a new worker", 15)
    assert served.get("/health").status_code == 200
    assert "stopped" not in served.output, "the worker ran the master's clean-up (it would stop OpenVPN)"
    assert served.stop() == 0
    assert served.output.count("stopped") == 1


def test_insecure_http_serves_plain_http_and_warns(serve):
    served = serve(insecure_http=True)
    assert served.url.startswith("http://")
    assert served.get("/health").status_code == 200
    assert "plain HTTP" in served.output
    assert served.stop() == 0


@pytest.mark.parametrize("keys, words", [
    ({"api_threads": 0}, "'api_threads' is 0"),
    ({"api_threads": 8, "api_max_connections": 8}, "'api_max_connections' is 8"),
    ({"api_header_timeout": 0}, "'api_header_timeout' is 0"),
    ({"api_request_timeout": -1}, "'api_request_timeout' is -1"),
    ({"api_keepalive": 1.5}, "'api_keepalive'"),
])
def test_bad_limits_are_refused_before_anything_starts(tmp_path, keys, words):
    out = subprocess.run([sys.executable, "-m", "server_ext.cli", "serve", "--config", str(write_config(tmp_path, **keys))],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert out.stderr.startswith("vpnagent-server: ") and words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists(), "a refused config created state"


def test_limits_default_and_come_from_the_api_keys():
    assert Limits.from_config({"data_dir": "/x"}) == Limits()
    assert Limits.from_config({"api_threads": 4, "api_header_timeout": 2.5}) == Limits(threads=4, header_timeout=2.5)
    with pytest.raises(ServerConfigError, match="more than api_threads"):
        Limits.from_config({"api_threads": 300})


def test_listening_sockets_get_tcp_nodelay_and_accepted_ones_inherit_it():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        APIServer(lambda: None, "127.0.0.1", 0, Limits(), None).when_ready(
            SimpleNamespace(LISTENERS=[SimpleNamespace(sock=listener)]))
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_api_workers_are_gunicorn_workers_that_each_build_their_app():
    from server_ext.wsgi import APIServer

    server = APIServer(lambda: None, "127.0.0.1", 0, Limits.from_config({"api_workers": 3}), None)
    got = server.settings()
    assert got["workers"] == 3 and got["preload_app"] is False  # no app, pool or thread is shared by a fork
    assert Limits().workers == 1
    with pytest.raises(ServerConfigError, match="'api_workers' is 0"):
        Limits.from_config({"api_workers": 0})
