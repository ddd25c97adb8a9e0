"""The production HTTP server behind `vpnagent-server serve`: gunicorn, embedded.

The API faces the internet, so the server bounds what a client can hold: a fixed number of
threads and connections, a deadline for a request's headers (TLS handshake included) and
one for the whole request, short keep-alive, limits on the request line and headers, and a
graceful stop on SIGTERM.

Why it is shaped like this:
- api_workers worker processes (1 by default), each with api_threads threads. The app
  keeps no state of its own between requests: the store holds it all (the metrics
  counter too), and the OpenVPN service, not the API, talks to OpenVPN's management
  sockets, so workers, like API servers on several hosts, need share nothing else.
- The worker builds its own app (no preload): SQLAlchemy engines, pooled connections and
  threads made before a fork do not survive it.
- gunicorn's threaded worker waits for a request's bytes without any deadline once the
  first byte has arrived, so one client sending half a request line holds a thread for
  ever. GuardedThreadWorker cuts such connections (Deadlines).
"""
from __future__ import annotations

import gc
import logging
import os
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import _DEFER, ThreadWorker

from . import events, eventstream
from .config import ConfigProblems, default, problems

log = logging.getLogger(__name__)

# Not worth a config key: gunicorn's defaults are fine for a JSON API whose longest header is
# a JWT; fewer header fields than the default 100 leaves less to parse per request.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 50
LIMIT_REQUEST_FIELD_SIZE = 8190
# The master restarts a worker whose main loop has not checked in for this long (a hung
# worker). It does not bound a request: the threaded worker checks in while threads work.
WORKER_HEARTBEAT_S = 30


@dataclass(frozen=True)
class Limits:
    """What one client, and all of them together, may hold. Each field is the server config
    key `api_<field>` (server_ext/config.py), and takes its default from there."""
    workers: int = default("api_workers")
    threads: int = default("api_threads")
    max_connections: int = default("api_max_connections")
    header_timeout: float = float(default("api_header_timeout"))
    request_timeout: float = float(default("api_request_timeout"))
    keepalive: int = default("api_keepalive")  # gunicorn takes whole seconds for these two
    shutdown_timeout: int = default("api_shutdown_timeout")
    event_streams: int = default("api_event_streams")

    def __post_init__(self) -> None:
        # the schema's checks of the api_* keys, for limits built in code too
        found = problems({f"api_{f.name}": getattr(self, f.name) for f in fields(self)}, partial=True)
        if found:
            raise ConfigProblems(found, "the API limits")

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> Limits:
        """The limits a server config sets (its `api_*` keys), defaults for the rest."""
        given = {f.name: raw[f"api_{f.name}"] for f in fields(cls) if raw.get(f"api_{f.name}") is not None}
        return cls(**given)


@dataclass(frozen=True)
class TLS:
    """The API's certificate files (gunicorn switches TLS on by their presence) and the
    context built from them, which is what is actually served."""
    cert: Path
    key: Path
    context: ssl.SSLContext


class Deadlines:
    """Connections whose current phase (reading the headers, serving the request) must end
    by a time. Threads arm and disarm; the worker's main loop cuts what is overdue."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, Any, str]] = {}

    def arm(self, conn: Any, seconds: float, phase: str) -> None:
        with self._lock:
            self._due[id(conn)] = (self._clock() + seconds, conn, phase)

    def armed(self, conn: Any) -> bool:
        with self._lock:
            return id(conn) in self._due

    def disarm(self, conn: Any) -> None:
        with self._lock:
            self._due.pop(id(conn), None)

    def overdue(self) -> list[tuple[Any, str]]:
        now = self._clock()
        with self._lock:
            return [(conn, phase) for due, conn, phase in self._due.values() if due <= now]


def cut(sock: socket.socket) -> bool:
    """Shut the connection down under a thread blocked on it: its read returns at once.
    socket.socket's own shutdown, not SSLSocket's, which would also drop the TLS state the
    blocked thread is using. False when the socket is closed already."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        return False
    return True


class GuardedThreadWorker(ThreadWorker):
    """gunicorn's threaded worker with deadlines: a connection must deliver a request's
    headers within header_timeout of the thread taking it up (TLS handshake included), and
    the whole request must be served within request_timeout; else it is cut."""

    def init_process(self) -> None:
        self.limits: Limits = self.app.limits
        self.deadlines = Deadlines()
        super().init_process()

    def handle(self, conn: Any) -> Any:
        if not self.deadlines.armed(conn):  # a deferred connection keeps the deadline of its arrival
            self.deadlines.arm(conn, self.limits.header_timeout, "request headers")
        result: Any = False
        try:
            result = super().handle(conn)
            return result
        finally:
            # _DEFER: no byte came within gunicorn's wait, so it parks the connection in its
            # poller for a keepalive period; the header deadline still holds it to time.
            if result is not _DEFER:
                self.deadlines.disarm(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        # the headers are in: from here the body, the app and the response share one deadline;
        # an event stream's response lasts as long as its token (and a stalled reader of it
        # is cut at that deadline too)
        long = req.method == "GET" and req.path.endswith(eventstream.PATH)
        self.deadlines.arm(conn, self.limits.request_timeout + (eventstream.STREAM_MAX_S if long else 0), "request")
        return super().handle_request(req, conn)

    def murder_keepalived(self, *args: Any, **kwargs: Any) -> None:
        """The main loop calls this at least once a second: cut the overdue too; once the
        worker is stopping, end the event streams, which would otherwise hold it for the
        whole shutdown timeout."""
        super().murder_keepalived(*args, **kwargs)
        if not self.alive:
            events.close_all()
        for conn, phase in self.deadlines.overdue():
            limit = self.limits.header_timeout if phase == "request headers" else self.limits.request_timeout
            if cut(conn.sock):
                self.log.warning("cut %s: its %s took longer than %g s", _peer(conn.client), phase, limit)
                self.deadlines.disarm(conn)
            elif conn.sock.fileno() == -1:  # closed meanwhile: nothing left to cut
                self.deadlines.disarm(conn)
            # else the thread was just swapping the socket for its TLS wrapper: next round


def _log_level() -> str:
    """gunicorn's own log (errorlog) at the level `vpnagent-server --log-level` set."""
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


def _peer(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


class APIServer(BaseApplication):
    """gunicorn configured in code; the app is built by `app_factory` in the worker."""

    def __init__(self, app_factory: Callable[[], Any], host: str, port: int, limits: Limits,
                 tls: TLS | None) -> None:
        self.app_factory = app_factory
        self.bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.limits = limits
        self.tls = tls
        super().__init__(prog="vpnagent-server")

    def settings(self) -> dict[str, Any]:
        limits = self.limits
        out: dict[str, Any] = {
            "bind": [self.bind], "workers": limits.workers, "worker_class": GuardedThreadWorker, "preload_app": False,
            # an open node event stream holds a thread and a connection of its own: the
            # requests keep theirs (the app turns streams beyond event_streams away)
            "threads": limits.threads + limits.event_streams,
            "worker_connections": limits.max_connections + limits.event_streams,
            "keepalive": limits.keepalive, "graceful_timeout": limits.shutdown_timeout,
            "timeout": WORKER_HEARTBEAT_S, "limit_request_line": LIMIT_REQUEST_LINE,
            "limit_request_fields": LIMIT_REQUEST_FIELDS, "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
            "accesslog": "-", "errorlog": "-", "loglevel": _log_level(), "proc_name": "vpnagent-server",
            "when_ready": self.when_ready,
            # gunicorn's runtime control socket (a file in the working directory): not ours to offer
            "control_socket_disable": True,
        }
        if self.tls is not None:
            context = self.tls.context
            out.update(certfile=str(self.tls.cert), keyfile=str(self.tls.key),
                       ssl_context=lambda _config, _default: context)
        return out

    def load_config(self) -> None:
        for key, value in self.settings().items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        app = self.app_factory()
        # What the worker holds from here on (modules, the app) is left out of later garbage
        # collections: a full collection walked it all and paused requests for 50-65 ms
        # (benchmarks/controlplane.py, POST /task at 1,000 nodes).
        gc.collect()
        gc.freeze()
        return app

    def when_ready(self, arbiter: Any) -> None:
        """Bound and about to start the worker."""
        for listener in arbiter.LISTENERS:
            set_nodelay(listener.sock)
            host, port = listener.sock.getsockname()[:2]
            log.info("serving on %s://%s:%s/api", "https" if self.tls else "http", host, port)


def set_nodelay(sock: socket.socket) -> None:
    """Accepted sockets inherit it (Linux): without it a response's TLS records wait for the
    client's delayed ACK (GET /vpn/algorithm/addresses went from ~3 ms to ~17 ms over HTTPS).
    gunicorn sets it on TCP listeners too; we do not rely on that."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def serve(app_factory: Callable[[], Any], host: str, port: int, limits: Limits, tls: TLS | None) -> int:
    """Serve until SIGTERM or SIGINT (a graceful stop: requests in flight finish within
    shutdown_timeout), then return the exit status. Returns only in the calling process:
    a worker process ends here, so it never runs the caller's clean-up (stopping the
    OpenVPN container is the master's job)."""
    master = os.getpid()
    try:
        APIServer(app_factory, host, port, limits, tls).run()
    except SystemExit as exc:
        status = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        if os.getpid() != master:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        return status
    return 0
