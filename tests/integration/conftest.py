"""One real vpnagent network (server + OpenVPN server + three node agents) shared by the
integration tests of a session, torn down afterwards, also when a test fails."""
import os
import socket
import threading
import uuid

import pytest

from test_algorithms.cluster import LocalCluster


@pytest.fixture(scope="session")
def images(docker_client):
    from vpnagent.runtime.docker_images import build_images

    build_images(docker_client, progress=lambda m: print(f"[images] {m}"))


@pytest.fixture(scope="session")
def cluster(docker_client, images, tmp_path_factory):
    prefix = f"vat{uuid.uuid4().hex[:4]}"
    c = LocalCluster(workdir=tmp_path_factory.mktemp("cluster"), prefix=prefix, n_nodes=3,
                     vpn_subnet="10.77.0.0/16", progress=lambda m: print(f"[cluster] {m}"))
    try:
        c.up()
        yield c
    finally:
        if os.environ.get("VPNAGENT_KEEP_CLUSTER") != "1":
            c.down()


@pytest.fixture
def host_listener():
    """A TCP service on all of the host's addresses, as a node host's own services are: what
    an algorithm must not reach."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(64)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()
