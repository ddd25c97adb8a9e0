"""The node's API client against a real HTTP server on loopback that drops a kept-alive
connection the way a server closes an idle one: it reads the request, then closes without
answering (the client sees "Connection aborted: RemoteDisconnected"). The stress runs of the
integration tests caught a run failing on exactly this; a request that is safe to repeat is
sent again once, one that is not (POST /port would register a port twice) is not."""
from __future__ import annotations

import json
import socket
import socketserver
import threading

import pytest

from vpnagent.serverapi import ServerAPI, ServerError

ANSWERS = {("POST", "/api/token/node"): {"access_token": "t"}, ("GET", "/api/node/peers"): {"runs": []},
           ("PATCH", "/api/run/1"): {"id": 1, "status": "active"}, ("POST", "/api/port"): {"id": 1},
           ("DELETE", "/api/port"): {"deleted": 0}, ("POST", "/api/token/container"): {"container_token": "c"}}


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, drop: set[tuple[str, str]]) -> None:
        self.drop = set(drop)  # each dropped once
        self.seen: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            line = self.rfile.readline(4096).decode()
            if not line:
                return
            method, target, _ = line.split(" ", 2)
            path = target.split("?")[0]
            length = 0
            while (header := self.rfile.readline(4096).decode()) not in ("\r\n", ""):
                if header.lower().startswith("content-length:"):
                    length = int(header.split(":")[1])
            self.rfile.read(length)
            self.server.seen.append((method, path))
            if (method, path) in self.server.drop:
                self.server.drop.discard((method, path))
                self.connection.shutdown(socket.SHUT_RDWR)  # read, then closed without an answer
                return
            body = json.dumps(ANSWERS[(method, path)]).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


@pytest.fixture
def server():
    servers = []

    def make(*drop):
        s = _Server(set(drop))
        servers.append(s)
        return s, ServerAPI(f"http://127.0.0.1:{s.server_address[1]}/api", "key", timeout=5)

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("call, key", [
    (lambda api: api.node_peers(), ("GET", "/api/node/peers")),
    (lambda api: api.update_run(1, "active"), ("PATCH", "/api/run/1")),
    (lambda api: api.delete_ports(1), ("DELETE", "/api/port")),
    (lambda api: api.container_token(1), ("POST", "/api/token/container")),
])
def test_a_request_safe_to_repeat_is_sent_again_once(server, call, key):
    srv, api = server(key)
    call(api)
    assert srv.seen.count(key) == 2


def test_a_request_not_safe_to_repeat_fails_with_the_reason(server):
    srv, api = server(("POST", "/api/port"))
    with pytest.raises(ServerError, match="cannot reach the server"):
        api.register_port(1, 6000, "echo")
    assert srv.seen.count(("POST", "/api/port")) == 1


def test_a_server_that_keeps_dropping_is_reported_after_the_second_try(server):
    class _Always(set):
        def discard(self, item):  # never forgets: every attempt is dropped
            pass

    srv, api = server()
    srv.drop = _Always({("GET", "/api/node/peers")})
    with pytest.raises(ServerError, match="cannot reach the server"):
        api.node_peers()
    assert srv.seen.count(("GET", "/api/node/peers")) == 2
