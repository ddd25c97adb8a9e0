"""The node proxy: algorithm containers sit on an internal network with no route out, so
they reach the server through this small HTTP forwarder on the isolated bridge's gateway
address. It passes the container's own Bearer token through and adds no credentials, with
one exception: a token of the very run whose holder sent the request may be swapped for
that run's current token, so a run outlives its first token's 6 h (`NodeProxy.refreshed`).
Calls that may be repeated are retried through a short server outage (`NodeProxy.forward`).

Its clients may be hostile, so nothing they send is passed on raw. The proxy decides the
exact path it sends (normalised, under /api), three headers and a body of at most 64 KiB,
and builds a fresh request from them. Each connection carries one request, read against
one deadline and a byte budget, and a fixed pool of workers serves them: a flood costs a
refusal per connection, never a thread."""
from __future__ import annotations

import base64
import io
import json
import logging
import queue
import random
import re
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import requests

from .serverapi import never_sent

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_HEAD = 32 * 1024  # request line + headers; a container token is about 1 KiB
API_PREFIX = "/api"
ADDRESSES_PATH = "/api/vpn/algorithm/addresses"
_PASS_HEADERS = ("Authorization", "Content-Type", "Accept")

# 8 workers stay within requests' default pool of 10 upstream connections, so none is
# thrown away after each call; the API calls of a node's algorithms are short.
DEFAULT_WORKERS = 8
DEFAULT_WAITING = 32
DEFAULT_CLIENT_TIMEOUT = 10.0  # s for a whole request (line, headers, body), and again for the reply
DEFAULT_UPSTREAM_TIMEOUT = (5.0, 30.0)  # s: connect, then each read from the server
# The algorithm client (clients/python/vpnagent_algorithm/client.py, DEFAULT_TIMEOUT_S = 10 s)
# gives up 10 s after sending a call. Retrying for 6 s leaves the last attempt about 4 s to be
# answered, so the algorithm hears the outcome (an answer or our 502) rather than its own timeout.
DEFAULT_OUTAGE_RETRY_S = 6.0
_FIRST_BACKOFF_S, _MAX_BACKOFF_S = 0.2, 2.0
_MIN_CONNECT_S = 0.2  # a retry at the end of the budget still gets a real chance to connect
# Only these are repeated after a failed attempt that may have reached the server: repeating
# them changes neither the server's state nor the answer. Any method is repeated when the
# connection could not even be opened (refused, or no answer to the connect): nothing was
# sent. Never POST or PATCH otherwise (POST /task twice is two tasks). PUT and DELETE
# are idempotent in effect but not in answer: a DELETE carried out whose reply was lost comes
# back 404 on the retry, telling the algorithm the wrong outcome; and a container token may
# use neither today. (Only GET reaches forward(): the handler serves no HEAD or OPTIONS.)
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OUTAGE_STATUSES = frozenset({502, 503, 504})  # a gateway or the server saying "not now"

# The API's paths are words and numbers: anything else in a segment (escapes, '\', ';') is
# refused rather than interpreted, so no decoding anywhere can turn it into another path.
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_QUERY = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*")  # RFC 3986 query
_DECIMAL = re.compile(r"[0-9]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


class ProxyError(Exception):
    """A request the proxy answers itself, with `status` and a JSON `{"msg": ...}`."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


@dataclass(frozen=True)
class Target:
    """What the proxy forwards: a checked path under /api and the query as sent."""
    path: str
    query: str


def check_target(target: str) -> Target:
    """The request target as the proxy will forward it, or ProxyError. requests and urllib3
    resolve '.'/'..' segments (after decoding escapes of unreserved characters such as
    %2e), so a path is only forwarded when there is nothing left for them to resolve."""
    if not target.startswith("/"):
        raise ProxyError(400, f"request target {target[:80]!r} is not a path: send `METHOD /api/... HTTP/1.1` "
                              "(origin-form), not a full URL or '*'")
    if "#" in target:
        raise ProxyError(400, "the request target holds a fragment ('#...'): fragments stay in the client; drop it")
    path, _, query = target.partition("?")
    if not _QUERY.fullmatch(query):
        raise ProxyError(400, "the query string holds characters that must be percent-encoded (space, quotes, "
                              "'\\', '<>', '{}', '|', '^', '`', non-ASCII or control characters) or a broken "
                              "%-escape: encode them")
    for segment in path.split("/")[1:]:
        if not segment:
            raise ProxyError(400, f"empty path segment in {path[:80]!r} ('//' or a trailing '/'): remove it")
        if segment in (".", ".."):
            raise ProxyError(400, f"{segment!r} path segment in {path[:80]!r}: send the resolved path")
        if "%" in segment:
            raise ProxyError(400, f"percent-encoded path segment {segment[:40]!r}: escapes in the path are refused "
                                  "(an encoded '/', '.' or '\\' would change the path the server sees); the API's "
                                  "paths need none, put values in the query string")
        if not _SEGMENT.fullmatch(segment):
            raise ProxyError(400, f"path segment {segment[:40]!r} has characters outside A-Z a-z 0-9 - . _ ~: "
                                  "the API's paths need no others; put values in the query string")
    if not path.startswith(API_PREFIX + "/"):
        raise ProxyError(404, "the node proxy serves /api/... only")
    return Target(path, query)


def _one_header(headers: Message, name: str) -> str | None:
    values = headers.get_all(name) or []
    if len(values) > 1:
        raise ProxyError(400, f"{len(values)} {name} headers: send exactly one")
    return values[0] if values else None


def body_length(headers: Message) -> int:
    """How many body bytes to read, or ProxyError. Chunked bodies are refused (411), not
    parsed: one framing with its length known before the first byte is read, and no
    parser for an attacker to probe. Without Content-Length a request has no body
    (RFC 9112 6.3); bytes sent anyway are never read, since the connection then closes."""
    if headers.get_all("Transfer-Encoding"):
        raise ProxyError(411, "Transfer-Encoding (chunked) is not accepted: send the body with a Content-Length "
                              f"of at most {MAX_BODY // 1024} KiB")
    value = _one_header(headers, "Content-Length")
    if value is None:
        return 0
    value = value.strip()
    if not _DECIMAL.fullmatch(value):
        raise ProxyError(400, f"Content-Length {value[:40]!r} is not a number of bytes: send one decimal integer")
    if len(value) > 10 or int(value) > MAX_BODY:
        raise ProxyError(413, f"request body larger than {MAX_BODY // 1024} KiB: the API takes no larger body")
    return int(value)


def passed_headers(headers: Message) -> dict[str, str]:
    """The only headers that reach the server: the container's own token and the content
    types. Values must be printable ASCII (an obs-folded line or a CR would otherwise be
    refused by requests and look like an unreachable server)."""
    passed = {}
    for name in _PASS_HEADERS:
        value = _one_header(headers, name)
        if value and not _PRINTABLE.fullmatch(value):
            raise ProxyError(400, f"the {name} header holds characters outside printable ASCII: send it on one line")
        if value:
            passed[name] = value
    return passed


def unverified_claims(token: str) -> dict | None:
    """A JWT's claims, read without checking its signature (the node does not hold the
    server's secret); None for anything that is not a JWT with a JSON object inside."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; '[[[[...' nested too deep
        return None
    return claims if isinstance(claims, dict) else None


def token_run_id(authorization: str | None) -> int | None:
    """The run a container token (`Authorization: Bearer <JWT>`) names, or None for anything
    else (no token, another kind, garbage). Read WITHOUT checking the signature or expiry:
    the node does not hold the server's secret, and the answer only decides whether the
    sending run's own current token is sent instead; the server checks whatever is sent."""
    if not authorization or not authorization.startswith("Bearer "):  # the server's own test
        return None
    claims = unverified_claims(authorization[len("Bearer "):].strip())
    sub = claims.get("sub") if isinstance(claims, dict) and claims.get("kind") == "container" else None
    run_id = sub.get("run_id") if isinstance(sub, dict) else None
    return run_id if type(run_id) is int else None  # not True, not 7.0, not "7"


class _HeadTooLarge(Exception):
    pass


class _BudgetReader(io.RawIOBase):
    """The socket side of one request. Each recv waits only for the time left until one
    deadline, so a client trickling a byte per second is cut when its request is due, not
    after one idle gap; and no more bytes than the budget (the head's, then the announced
    body's) are ever taken from the socket."""

    def __init__(self, sock: socket.socket, deadline: float, budget: int) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._budget = budget

    def allow(self, nbytes: int) -> None:
        self._budget += nbytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._budget <= 0:
            raise _HeadTooLarge
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send its whole request in time")
        self._sock.settimeout(left)
        nbytes = self._sock.recv_into(buffer, min(len(buffer), self._budget))
        self._budget -= nbytes
        return nbytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # every reply, refusals of odd request lines too, has a status line
    server: _PoolServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader knows no deadline and no budget
        self._reader = _BudgetReader(self.connection, time.monotonic() + self.server.proxy.client_timeout, MAX_HEAD)
        self.rfile = io.BufferedReader(self._reader)
        self.requestline = self.command = self.request_version = ""  # until the request line is parsed

    def handle(self) -> None:
        # One request per connection: an idle keep-alive connection would hold a worker, and
        # nothing the client sends after its body is ever read (no pipelining to smuggle in).
        # Algorithm clients (urllib) open a connection per call anyway.
        try:
            self.handle_one_request()
        except _HeadTooLarge:
            self._reply_error(ProxyError(431, f"request line and headers larger than {MAX_HEAD // 1024} KiB: "
                                              "send a shorter request"))

    def log_message(self, format: str, *args: object) -> None:  # request line and status only; never headers (tokens)
        log.debug("proxy %s: %s", self.client_address[0], format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unsupported method) in our JSON shape."""
        self._reply_error(ProxyError(code, message or HTTPStatus(code).phrase))

    def _forward(self) -> None:
        try:
            words = self.requestline.split()
            if len(words) != 3:  # HTTP/0.9, or what a CR/LF inside the target leaves of the line
                raise ProxyError(400, "no HTTP version in the request line: send `METHOD /api/... HTTP/1.1`")
            target = check_target(words[1])  # as sent: self.path has '//' folded
            if self.headers.defects:  # e.g. `Content-Length : 5`: the parser drops it and every line after it
                raise ProxyError(400, "malformed header line (no ':' or a space before it): send `Name: value`")
            length = body_length(self.headers)
            headers = self.server.proxy.refreshed(self.client_address[0], passed_headers(self.headers))
            self._reader.allow(length)
            body = self.rfile.read(length) if length else None
            if body is not None and len(body) < length:
                raise ProxyError(400, f"the body ended after {len(body)} of {length} bytes: send the whole body")
            resp = self.server.proxy.forward(self.command, target, body, headers)
        except ProxyError as exc:
            return self._reply_error(exc)
        self._reply(resp.status_code, resp.content, resp.headers.get("Content-Type"))

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

    def _reply_error(self, exc: ProxyError) -> None:
        self._reply(exc.status, json.dumps({"msg": exc.msg}).encode())

    def _reply(self, status: int, body: bytes, ctype: str | None = "application/json") -> None:
        self.close_connection = True
        self.connection.settimeout(self.server.proxy.client_timeout)  # a client that never reads is cut too
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype or "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("proxy: the algorithm hung up before the reply")  # e.g. it was stopped


def _raw_reply(status: HTTPStatus, msg: str) -> bytes:
    body = json.dumps({"msg": msg}).encode()
    return (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode() + body


class _PoolServer(socketserver.TCPServer):
    """Accepts on one thread and hands connections to a fixed set of workers through a
    bounded line. A connection beyond the line, or beyond one address's share, gets a
    canned 503/429 from the accept thread at once (ThreadingHTTPServer would spend a
    thread on each). One address is one run: its algorithm shares the holder's IP."""

    allow_reuse_address = True
    request_queue_size = 128  # kernel backlog: a burst is accepted and refused, not left in SYN retries

    def __init__(self, address: tuple[str, int], proxy: NodeProxy, workers: int, waiting: int,
                 per_client: int) -> None:
        self.proxy = proxy
        self._capacity, self._per_client = workers + waiting, per_client
        self._line: queue.SimpleQueue[tuple[socket.socket, tuple] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()  # connections waiting or served, per client address
        self._busy = _raw_reply(HTTPStatus.SERVICE_UNAVAILABLE,
                                f"the node proxy is serving {workers} requests and holding {waiting} more: retry")
        self._too_many = _raw_reply(HTTPStatus.TOO_MANY_REQUESTS,
                                    f"more than {per_client} connections from this address at once: "
                                    "wait for your earlier requests, then retry")
        self._workers = [threading.Thread(target=self._work, name=f"node-proxy-worker-{i}", daemon=True)
                         for i in range(workers)]
        super().__init__(address, _Handler)  # last: a failed bind calls server_close(), which needs the above

    def start_workers(self) -> None:
        for worker in self._workers:
            worker.start()

    def process_request(self, request: socket.socket, client_address: tuple) -> None:  # type: ignore[override]
        host = client_address[0]
        with self._lock:
            refusal = (self._too_many if self._held[host] >= self._per_client
                       else self._busy if self._held.total() >= self._capacity else None)
            if refusal is None:
                self._held[host] += 1
                self._line.put((request, client_address))
                return
        request.setblocking(False)  # the accept thread never waits on a client
        try:
            request.send(refusal)
        except OSError:
            pass
        self.shutdown_request(request)

    def _work(self) -> None:
        while (item := self._line.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - one connection's failure must not end the worker
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                with self._lock:
                    self._held[client_address[0]] -= 1
                    if not self._held[client_address[0]]:
                        del self._held[client_address[0]]

    def handle_error(self, request: object, client_address: tuple) -> None:  # type: ignore[override]
        if isinstance(sys.exc_info()[1], OSError):  # a client that reset or vanished
            log.debug("proxy: connection from %s failed", client_address[0], exc_info=True)
        else:
            log.exception("proxy: serving %s failed", client_address[0])

    def server_close(self) -> None:
        super().server_close()
        while True:  # connections still in line are closed, not served
            try:
                item = self._line.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        for _ in self._workers:
            self._line.put(None)
        deadline = time.monotonic() + 2.0  # a worker inside a request finishes on its own timeouts
        for worker in self._workers:
            if worker.ident is not None:
                worker.join(max(0.0, deadline - time.monotonic()))


# (run id, that run's current container token) for a client address, or None
FreshToken = Callable[[str, int], str | None]  # (client address, run named by its token) -> current token


class NodeProxy:
    def __init__(self, listen_host: str, listen_port: int, server_url: str,
                 session: requests.Session | None = None,
                 on_addresses: Callable[[list[dict]], None] | None = None, *,
                 workers: int = DEFAULT_WORKERS, waiting: int = DEFAULT_WAITING, per_client: int | None = None,
                 client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
                 upstream_timeout: float | tuple[float, float] = DEFAULT_UPSTREAM_TIMEOUT,
                 fresh_token: FreshToken | None = None,
                 outage_retry_s: float = DEFAULT_OUTAGE_RETRY_S) -> None:
        """`on_addresses` sees every address list an algorithm gets, before the algorithm
        does: the agent opens its sending-side rules for them first, so the algorithm's
        first connection is not dropped while the agent's periodic peer sync catches up.

        At most `workers` requests are served at once and `waiting` more wait for a worker;
        one client address holds at most `per_client` of those (default: half the workers,
        so one hostile run cannot take them all). A client has `client_timeout` s, counted
        from when a worker takes its connection, to send its whole request, and again to
        take the reply.

        `fresh_token(client_ip, run_id)` is the current token of run `run_id` when that
        run's holder container has `client_ip` on the isolated network, else None: see
        `refreshed`. Calls in
        RETRIED_METHODS are retried for up to `outage_retry_s` s (0: never) while the server
        cannot be reached or answers 502/503/504; keep it below the algorithm client's
        timeout (DEFAULT_OUTAGE_RETRY_S says why). A worker is held while it retries."""
        per_client = max(1, workers // 2) if per_client is None else per_client
        if workers < 1 or waiting < 0 or per_client < 1 or client_timeout <= 0 or outage_retry_s < 0:
            raise ValueError(f"node proxy limits out of range (workers={workers}, waiting={waiting}, "
                             f"per_client={per_client}, client_timeout={client_timeout}, "
                             f"outage_retry_s={outage_retry_s}): workers and per_client >= 1, waiting >= 0, "
                             "client_timeout > 0, outage_retry_s >= 0")
        self.server_url = server_url.rstrip("/")
        self.session = session or requests.Session()  # carries the node's TLS checks
        self.on_addresses = on_addresses
        self.fresh_token = fresh_token
        self.client_timeout = client_timeout
        self.upstream_timeout = upstream_timeout
        self.outage_retry_s = outage_retry_s
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None  # one warning when the server goes away, one when it is back
        self._upstream_prefix = urlsplit(self.server_url).path  # "/api" stands for this on the server
        self.httpd = _PoolServer((listen_host, listen_port), self, workers, waiting, per_client)
        # inherited by accepted sockets: headers and body go out at once, not after a delayed ACK
        self.httpd.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="node-proxy", daemon=True)  # stop() returns within 0.1 s

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/api"

    def refreshed(self, client_ip: str, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with the run's current token in place of the one sent, when `client_ip`
        is a run's holder (algorithms cannot forge their source address: no NET_RAW) and the
        token sent is a container token of that same run, expired or not. A run may last
        longer than its token; the container itself never gets a longer-lived one. Anything
        else passes as sent, for the server to judge."""
        run_id = token_run_id(headers.get("Authorization"))
        if self.fresh_token is None or run_id is None:
            return headers
        try:
            current = self.fresh_token(client_ip, run_id)
        except Exception:  # noqa: BLE001 - the call still goes out, with the token as sent
            log.exception("proxy: looking up the current token for %s failed; its own token is sent", client_ip)
            return headers
        if current is None:
            return headers
        if not _PRINTABLE.fullmatch(current):  # requests would refuse it as "unreachable"
            log.error("proxy: the current token of run %d is not printable ASCII; its own token is sent", run_id)
            return headers
        log.debug("proxy: %s sends run %d's current token", client_ip, run_id)  # never the token itself
        return {**headers, "Authorization": f"Bearer {current}"}

    def forward(self, method: str, target: Target, body: bytes | None, headers: dict[str, str]) -> requests.Response:
        """One checked request to the server, sent with exactly the checked path; redirects
        go back to the algorithm rather than being followed past the check. A short server
        outage (a restart, a deploy) costs a call in RETRIED_METHODS a delay, not a failure;
        other calls fail at once, as they would have to be repeated by someone who knows
        whether repeating them is safe: the algorithm."""
        path = self._upstream_prefix + target.path[len(API_PREFIX):]
        url = self.server_url + target.path[len(API_PREFIX):] + (f"?{target.query}" if target.query else "")
        prepared = self.session.prepare_request(requests.Request(method, url, data=body, headers=headers))
        if urlsplit(prepared.url).path != path:  # never expected: the check leaves nothing to rewrite
            raise ProxyError(400, f"path {target.path!r} would reach the server as {urlsplit(prepared.url).path!r}: "
                                  "refused")
        settings = self.session.merge_environment_settings(prepared.url, {}, None, None, None)
        idempotent = method in RETRIED_METHODS
        retry_s = self.outage_retry_s
        deadline, backoff, timeout = time.monotonic() + retry_s, _FIRST_BACKOFF_S, self.upstream_timeout
        while True:
            resp: requests.Response | None = None
            try:
                resp = self.session.send(prepared.copy(), timeout=timeout, allow_redirects=False, **settings)
            except requests.ConnectionError as exc:  # nothing answered; ConnectTimeout included
                if isinstance(exc, requests.exceptions.SSLError):  # not an outage: no retry fixes a certificate
                    log.warning("proxy: TLS to the server failed: %s", exc)
                    raise ProxyError(502, "node proxy cannot reach the server (TLS failed)") from None
                failure: requests.RequestException | None = exc
                if not idempotent and not never_sent(exc):  # it may have been carried out
                    log.warning("proxy: the connection to the server broke during %s %s", method, target.path)
                    raise ProxyError(502, "node proxy lost the connection to the server") from None
            except requests.Timeout:  # the request went out and no answer came in time: never repeated
                log.warning("proxy: the server did not answer %s %s in time", method, target.path)
                raise ProxyError(504, "the server did not answer the node proxy in time") from None
            except requests.RequestException as exc:  # a broken answer: the server is there
                log.warning("proxy: the server's answer to %s %s was unreadable: %s", method, target.path, exc)
                raise ProxyError(502, "node proxy cannot reach the server") from None
            else:
                failure = None
                if resp.status_code not in OUTAGE_STATUSES or not idempotent:
                    self._server_back()
                    break
            self._server_gone(failure or f"HTTP {resp.status_code}")
            left = deadline - time.monotonic()
            if left <= 0:
                if resp is not None:
                    break  # the algorithm gets the server's (or its gateway's) own 5xx
                if isinstance(failure, requests.Timeout):
                    raise ProxyError(504, "the server did not accept the node proxy's connection in time")
                raise ProxyError(502, "node proxy cannot reach the server")
            # jitter: the node's runs, retrying together, do not hit a restarting server in step
            time.sleep(min(left, random.uniform(backoff / 2, backoff)))
            backoff = min(2 * backoff, _MAX_BACKOFF_S)
            timeout = self._connect_within(deadline - time.monotonic())
        if self.on_addresses and resp.ok and target.path == ADDRESSES_PATH:
            try:
                self.on_addresses(resp.json().get("addresses", []))
            except Exception:  # noqa: BLE001 - the reply must go out; the periodic sync still runs
                log.exception("proxy: address hook failed")
        return resp

    def _connect_within(self, left: float) -> float | tuple[float, float]:
        """The upstream timeout with the connect part cut to what is left of the retry budget."""
        connect, read = (self.upstream_timeout if isinstance(self.upstream_timeout, tuple)
                         else (self.upstream_timeout, self.upstream_timeout))
        return max(_MIN_CONNECT_S, min(connect, left)), read

    def _server_gone(self, why: object) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                return
            self._outage_since = time.monotonic()
        retried = (f"algorithms' GET calls are retried for up to {self.outage_retry_s:g} s, others fail"
                   if self.outage_retry_s else "algorithms' calls fail")
        log.warning("proxy: the server is unavailable (%s); %s until it is back", why, retried)

    def _server_back(self) -> None:
        with self._outage_lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            log.warning("proxy: the server answers again, after %.1f s", time.monotonic() - since)

    def start(self) -> NodeProxy:
        self.httpd.start_workers()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
