"""One real vpnagent network (server + OpenVPN server + three node agents) shared by the
integration tests of a session, torn down afterwards, also when a test fails."""
import os
import uuid

import pytest

from test_algorithms.cluster import LocalCluster


@pytest.fixture(scope="session")
def images(docker_client):
    from vpnagent.images import build_images

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
