"""GET /node/events: a node's event stream (server-sent events, text/event-stream).

Why server-sent events: one long-lived HTTP response per node, which the one-port mode
(OpenVPN's port-share passes TCP through) and any HTTPS reverse proxy carry as they are,
with nothing to upgrade (a WebSocket needs both to know it) and no client library (the
format is lines of text). The node asks nothing while idle; the server writes a comment
every KEEPALIVE_S (25 s) so both ends, and proxies between them, see the connection is alive.

    event: hello      data: {"keepalive": 25}          first: the node resyncs once
    id: 42
    event: run        data: {"seq": 42, "run_id": 7}   events.py lists the kinds
    : keepalive
    event: bye        data: {"reason": "..."}          last: the node reconnects

A stream ends when its token expires (the node reconnects with a fresh one), when its node is
removed (after telling it), or when the worker stops. A process holds at most
`api_event_streams` streams (each holds a thread, idle); beyond that it answers 503 with a
Retry-After, and the node keeps working on its resync until a stream is free.
"""
from __future__ import annotations

import json
import random
import time
from typing import Any, Iterator

import jwt
from flask import Response, request
from sqlalchemy.orm import Session

from .api import ApiError, bp, ext, requires
from .events import Event, Hub
from .tokens import Identity

# Under the read timeouts of the usual proxies and load balancers (nginx 60 s, many at 30 s
# or more); each keepalive costs the server a wake-up and a TLS write per stream.
KEEPALIVE_S = 25.0
STREAM_MAX_S = 15 * 60  # a node token's lifetime: no stream outlives the token it was opened with
PATH = "/node/events"


def frame(kind: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _seconds_left(header: str) -> float:
    """How long the (already verified) bearer token has left."""
    claims = jwt.decode(header[7:].strip(), options={"verify_signature": False})
    return float(claims["exp"]) - time.time()


def stream(hub: Hub, node_id: int, seconds: float, keepalive: float = KEEPALIVE_S) -> Iterator[bytes]:
    """The stream's bytes until `seconds` have passed, its node is revoked or the hub closes.
    It subscribes when its first byte is asked for, so a response never sent holds nothing."""
    end = time.monotonic() + seconds
    reason = "token expires: reconnect with a new one"
    sub = hub.subscribe(node_id)
    try:
        yield frame("hello", {"keepalive": keepalive})
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            events: list[Event] = sub.get(min(keepalive, left))
            if sub.closed and not events:
                reason = "the server is stopping: reconnect"
                break
            if not events:
                yield b": keepalive\n\n"
                continue
            yield b"".join(frame(ev.kind, ev.data(), ev.seq) for ev in events)
            if any(ev.kind == "revoked" for ev in events):
                reason = "this node was removed or its API key replaced"
                break
        yield frame("bye", {"reason": reason})
    finally:
        hub.unsubscribe(sub)


@bp.get(PATH)
@requires("node")
def node_events(_s: Session, ident: Identity):
    state = ext()
    limit = state.event_streams
    if limit == 0:
        raise ApiError(404, "node event streams are off on this server (api_event_streams: 0): poll instead")
    hub = state.hub
    if hub.streams >= limit:
        retry = random.randint(10, 60)  # spread the retries of many nodes turned away at once
        body = {"msg": f"this API process holds its limit of {limit} event streams (api_event_streams); "
                       f"keep resyncing and try again in {retry} s"}
        return Response(json.dumps(body), status=503, mimetype="application/json",
                        headers={"Retry-After": str(retry)})
    seconds = min(STREAM_MAX_S, _seconds_left(request.headers["Authorization"]))
    # The generator runs after this view returns: the request's database session is closed
    # by then, so an open stream holds no database connection.
    return Response(stream(hub, int(ident["node_id"]), seconds), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
