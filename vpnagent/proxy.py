"""The node proxy: algorithm containers sit on an internal network with no route out, so
they reach the server through this small HTTP forwarder on the isolated bridge's gateway
address. It passes the container's own Bearer token through and adds no credentials."""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
ADDRESSES_PATH = "/api/vpn/algorithm/addresses"
_PASS_HEADERS = ("Authorization", "Content-Type", "Accept")


class NodeProxy:
    def __init__(self, listen_host: str, listen_port: int, server_url: str,
                 session: requests.Session | None = None,
                 on_addresses: Callable[[list[dict]], None] | None = None) -> None:
        """`on_addresses` sees every address list an algorithm gets, before the algorithm
        does: the agent opens its sending-side rules for them first, so the algorithm's
        first connection is not dropped while the agent's periodic peer sync catches up."""
        self.server_url = server_url.rstrip("/")
        session = session or requests.Session()  # carries the node's TLS checks
        upstream = self.server_url

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # the path only; never headers (tokens)
                log.debug("proxy %s %s", self.command, self.path)

            def _forward(self) -> None:
                if not self.path.startswith("/api/"):
                    return self._reply(404, b'{"msg": "the node proxy serves /api/... only"}')
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    return self._reply(413, b'{"msg": "request body larger than 64 KiB"}')
                body = self.rfile.read(length) if length else None
                headers = {h: self.headers[h] for h in _PASS_HEADERS if self.headers.get(h)}
                try:
                    resp = session.request(self.command, upstream + self.path[len("/api"):],
                                           data=body, headers=headers, timeout=30)
                except requests.RequestException as exc:
                    log.warning("proxy: server unreachable: %s", exc)
                    return self._reply(502, b'{"msg": "node proxy cannot reach the server"}')
                if on_addresses and resp.ok and self.path.startswith(ADDRESSES_PATH):
                    try:
                        on_addresses(resp.json().get("addresses", []))
                    except Exception:  # noqa: BLE001 - the reply must go out; the periodic sync still runs
                        log.exception("proxy: address hook failed")
                self._reply(resp.status_code, resp.content, resp.headers.get("Content-Type"))

            def _reply(self, status: int, body: bytes, ctype: str | None = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype or "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    log.debug("proxy: the algorithm hung up before the reply")  # e.g. it was stopped

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

        self.httpd = ThreadingHTTPServer((listen_host, listen_port), Handler)
        # inherited by accepted sockets: headers and body go out at once, not after a delayed ACK
        self.httpd.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="node-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/api"

    def start(self) -> "NodeProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
