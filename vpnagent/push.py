"""The node's end of the push: one long-lived GET /node/events (server_ext/eventstream.py),
read on a thread of its own, each event handed to a callback. The agent acts on events at
once and still resyncs everything every resync_interval, and after every (re)connect.

Reconnecting: after a planned end (the server's "bye": the token expires, the server stops)
at once; after a failure with exponential backoff and full jitter (a random wait between 0
and min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2^attempt)), so the nodes that lost a server
restart together come back spread out instead of at the same instant; a "busy" answer
(503) waits its Retry-After, jittered. A server without the stream (404: an older version,
or api_event_streams 0) makes the state "unsupported": the agent polls instead, and the
stream is tried again every UNSUPPORTED_RETRY_S (the server may be upgraded)."""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import requests

from .serverapi import ServerAPI, ServerError

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 65.0  # over two of the server's keepalive intervals (25 s) without a byte: the connection is dead
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
UNSUPPORTED_RETRY_S = 300.0
STABLE_S = 30.0  # a connection that lasted this long resets the backoff

# Fault injection for the tests: every event but hello and bye is dropped on arrival, as if
# lost on the way (tests/integration/test_push.py). Never set it outside that test.
FAULT_MUTE = os.environ.get("VPNAGENT_FAULT_MUTE_PUSH") == "1"

CONNECTING, CONNECTED, AWAY, UNSUPPORTED, REFUSED = "connecting", "connected", "away", "unsupported", "refused"


@dataclass(frozen=True)
class Message:
    kind: str
    data: dict[str, Any]


def parse(lines: Iterable[str]) -> Iterator[Message]:
    """Server-sent events from the stream's lines: `event:` and `data:` fields up to a blank
    line make one message; comments (`:`, the keepalives) and other fields are skipped."""
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    yield Message(kind, payload)
                else:
                    log.warning("push: skipped an event that is not a JSON object (%s)", kind)
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform between 0 and the exponential bound."""
    return rng() * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 16))


class EventStream:
    """Keeps the node's event stream open and hands each event to `on_event(kind, data)`.
    `on_event("hello", ...)` comes first on every connection: the moment to resync."""

    def __init__(self, api: ServerAPI, on_event: Callable[[str, dict[str, Any]], None],
                 read_timeout: float = READ_TIMEOUT_S, rng: Callable[[], float] = random.random) -> None:
        self.api = api
        self.on_event = on_event
        self.read_timeout = read_timeout
        self.rng = rng
        self.state = CONNECTING
        self.since: float | None = None  # of the current state
        self.connects = 0
        self.events = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> EventStream:
        self._thread = threading.Thread(target=self.run, name="vpnagent-push", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """No reconnect after this; a read in progress ends with the next keepalive (the
        thread is a daemon: it does not hold the process)."""
        self._stop.set()

    def summary(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "connects": self.connects, "events": self.events,
                "error": self.error}

    def _set(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.error = state, error

    def run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            opened = time.monotonic()
            wait, planned = None, False
            try:
                planned = self._read_one_connection()
            except ServerError as exc:
                if exc.status in (404, 405, 501):
                    if self.state != UNSUPPORTED:
                        log.warning("push: the server has no event stream (%s); polling instead", exc.msg)
                    self._set(UNSUPPORTED, exc.msg)
                    wait = UNSUPPORTED_RETRY_S
                elif exc.status == 503 and exc.retry_after:
                    self._set(AWAY, exc.msg)
                    wait = exc.retry_after * (0.5 + self.rng())
                else:
                    self._set(REFUSED if exc.status in (401, 403) else AWAY, str(exc))
            except (requests.RequestException, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                self._set(AWAY, f"the event stream broke: {exc}")
            if self._stop.is_set():
                break
            if time.monotonic() - opened > STABLE_S:
                attempt = 0
            if wait is None:
                wait = self.rng() * BACKOFF_BASE_S if planned else backoff(attempt, self.rng)
                attempt = 0 if planned else attempt + 1
            if self.state == CONNECTED:
                self._set(AWAY, "the server ended the event stream")
            log.debug("push: reconnecting in %.1f s", wait)
            self._stop.wait(wait)

    def _read_one_connection(self) -> bool:
        """Read one connection to its end; True when the server ended it as planned."""
        resp = self.api.open_events(self.read_timeout)
        try:
            lines = resp.iter_lines(chunk_size=None, decode_unicode=True)
            for msg in parse(lines):
                if msg.kind == "hello":
                    self.connects += 1
                    self._set(CONNECTED)
                    log.info("push: event stream open")
                elif msg.kind == "bye":
                    log.info("push: the server ended the event stream (%s)", msg.data.get("reason"))
                    return True
                else:
                    self.events += 1
                    if FAULT_MUTE:
                        continue
                self.on_event(msg.kind, msg.data)
            return False
        finally:
            resp.close()

