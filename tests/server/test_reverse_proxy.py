"""The node event stream through an ordinary HTTPS reverse proxy: Debian's nginx in front of
a real `serve`, with nginx's defaults (response buffering on) and a read timeout shorter
than a test can wait for the default 60 s. The node's own client code (vpnagent/push.py)
connects through it: events arrive at once (the stream's `X-Accel-Buffering: no` turns
nginx's buffering off for it), and the keepalives hold the stream open past the proxy's
read timeout. A control with keepalives slower than that timeout shows the proxy does cut
an idle stream, so the first check can fail."""
from __future__ import annotations

import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import pytest

from tests.nginx import running_nginx
from tests.server.test_events import served_world
from tests.server.test_serve import serve  # noqa: F401 - the fixture
from tests.waiting import wait_for
from vpnagent import push
from vpnagent.serverapi import ServerAPI
from vpnagent.tls import make_session

PROXY_READ_TIMEOUT_S = 30  # nginx's default is 60 s; the server's keepalive (25 s) must beat either


@pytest.fixture
def nginx(tmp_path) -> Iterator:
    with ExitStack() as stack:
        def start(upstream: str, cert: Path, key: Path, read_timeout: int) -> str:
            def server(port: int) -> str:
                return f"""listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /api/ {{
            proxy_pass {upstream}/api/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout {read_timeout}s;
        }}"""
            port = stack.enter_context(running_nginx(tmp_path / "nginx", server, "reverse-proxy test"))
            return f"https://127.0.0.1:{port}/api"

        yield start


def _through_proxy(served, nginx, read_timeout: int = PROXY_READ_TIMEOUT_S) -> tuple:
    cert = Path(re.search(r"API certificate (\S+)", served.output).group(1))
    url = nginx(served.url.rsplit("/api", 1)[0], cert, cert.with_suffix(".key"), read_timeout)
    store, collab, org, (node, node_token), _, user_token, verify = served_world(served)
    return store, collab, org, node, user_token, url, verify


def _node_key(store, node_id: int) -> str:
    _, key = store.rotate_node_key(node_id)
    return key


def test_the_event_stream_passes_an_ordinary_https_reverse_proxy(serve, nginx):
    served = serve()
    store, collab, org, node, user_token, url, verify = _through_proxy(served, nginx)
    try:
        session = make_session(verify)  # the agent's (REQUESTS_CA_BUNDLE would override a bare session.verify)
        got: list[tuple[str, float]] = []
        stream = push.EventStream(ServerAPI(url, _node_key(store, node), session=session),
                                  lambda kind, _data: got.append((kind, time.monotonic()))).start()
        try:
            wait_for(stream.summary, "the stream to open through nginx", 10, until=lambda s: s["state"] == push.CONNECTED)
            time.sleep(PROXY_READ_TIMEOUT_S + 5)  # past the proxy's read timeout: the keepalives hold it
            assert stream.connects == 1 and stream.state == push.CONNECTED, stream.summary()
            t0 = time.monotonic()
            r = session.post(f"{url}/task", headers={"Authorization": f"Bearer {user_token}"}, timeout=10,
                             json={"collaboration_id": collab, "organizations": [org], "image": "img:1"})
            assert r.status_code == 201, r.text
            arrived = wait_for(lambda: next((at for kind, at in got if kind == "run"), None),
                               "the run event through nginx", 5)
            print(f"run event through nginx {1000 * (arrived - t0):.0f} ms after the task")
            assert arrived - t0 < 1.0, "nginx held the event back (buffering)"
        finally:
            stream.stop()
    finally:
        store.close()


def test_control_a_proxy_timeout_shorter_than_the_keepalive_cuts_the_stream(serve, nginx):
    """The same proxy with a read timeout below the server's keepalive (25 s) cuts the stream
    and the node reconnects: the keepalive is what holds streams open, not a lenient proxy."""
    served = serve()
    store, collab, org, node, user_token, url, verify = _through_proxy(served, nginx, read_timeout=5)
    try:
        session = make_session(verify)  # the agent's (REQUESTS_CA_BUNDLE would override a bare session.verify)
        stream = push.EventStream(ServerAPI(url, _node_key(store, node), session=session), lambda *_: None,
                                  rng=lambda: 0.0).start()
        try:
            wait_for(lambda: stream.connects, "a second connection after the proxy's cut", 20, until=lambda n: n >= 2)
        finally:
            stream.stop()
    finally:
        store.close()
