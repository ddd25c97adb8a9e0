"""tls-crypt-v2 keys in Python against keys made by OpenVPN itself: the wrapped key we
compute is byte for byte the one openvpn wrote (known answer, from the files in
data/tls-crypt-v2/), keys openvpn wraps with our server key parse, and anything altered
or wrapped with another server key is refused. The handshake with the real binary is in
tests/server/test_openvpn_handshake.py."""
from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from server_ext import tlscrypt as tc

DATA = Path(__file__).parent / "data" / "tls-crypt-v2"
OPENVPN = shutil.which("openvpn")
needs_openvpn = pytest.mark.skipif(OPENVPN is None, reason="needs the openvpn binary (apt-get install openvpn)")


def _read(name: str) -> str:
    return (DATA / name).read_text()


def _raw(pem: str) -> bytes:
    return base64.b64decode("".join(pem.strip().splitlines()[1:-1]))


def test_known_answer_our_wrap_equals_openvpns():
    server, client = _read("server.key"), _read("client-node-5.key")
    key = tc.unwrap_client_key(server, client)
    assert (key.metadata_type, key.metadata) == (tc.METADATA_USER, b"node-5")
    # same Kc and metadata through our wrapping: the identical file openvpn wrote
    assert tc.wrap_client_key(server, b"node-5", kc=key.kc) == client


def test_known_answer_timestamp_metadata():
    key = tc.unwrap_client_key(_read("server.key"), _read("client-timestamp.key"))
    assert key.metadata_type == tc.METADATA_TIMESTAMP and len(key.metadata) == 8
    assert 1_600_000_000 < struct.unpack("!q", key.metadata)[0] < 4_000_000_000
    assert tc.wrap_client_key(_read("server.key"), key.metadata, tc.METADATA_TIMESTAMP, kc=key.kc) == \
        _read("client-timestamp.key")


def test_server_key_format_matches_openvpns():
    ours, theirs = tc.make_server_key(), _read("server.key")
    assert ours.splitlines()[0] == theirs.splitlines()[0] and ours.splitlines()[-1] == theirs.splitlines()[-1]
    assert len(_raw(ours)) == len(_raw(theirs)) == tc.SERVER_KEY_LEN
    assert [len(line) for line in ours.splitlines()] == [len(line) for line in theirs.splitlines()]
    assert ours != tc.make_server_key()


def test_node_keys_carry_the_node_name_and_differ_each_time():
    server = tc.make_server_key()
    a, b = tc.client_key_for_node(server, "node-12"), tc.client_key_for_node(server, "node-12")
    assert a != b  # a fresh Kc for every config
    assert tc.unwrap_client_key(server, a).metadata == b"node-12"
    for bad in ("node-0", "node-", "node-1 x", "node-1\n", "Node-1", "node-01", "node-1234567890", "../x"):
        with pytest.raises(tc.TLSCryptError, match="not a node name"):
            tc.client_key_for_node(server, bad)


def test_another_server_key_or_any_altered_byte_is_refused():
    server, client = _read("server.key"), _read("client-node-5.key")
    with pytest.raises(tc.TLSCryptError, match="not wrapped with this server key"):
        tc.unwrap_client_key(tc.make_server_key(), client)
    raw = _raw(client)
    for pos in (0, tc.CLIENT_KEY_LEN, tc.CLIENT_KEY_LEN + tc.TAG_LEN + 3, len(raw) - 3, len(raw) - 1):
        changed = bytearray(raw)
        changed[pos] ^= 0x01
        with pytest.raises(tc.TLSCryptError):
            tc.unwrap_client_key(server, tc._pem(tc.CLIENT_PEM_NAME, bytes(changed)))
    not_base64 = f"-----BEGIN {tc.CLIENT_PEM_NAME}-----\n!!\n-----END {tc.CLIENT_PEM_NAME}-----"
    for bad in ("", not_base64, _read("server.key")):
        with pytest.raises(tc.TLSCryptError):
            tc.unwrap_client_key(server, bad)
    with pytest.raises(tc.TLSCryptError, match="limited to 733 bytes"):
        tc.wrap_client_key(server, b"x" * 734)


@needs_openvpn
def test_openvpn_wraps_with_our_server_key_and_we_read_it(tmp_path):
    server = tc.make_server_key()
    (tmp_path / "server.key").write_text(server)
    for name in ("node-9", "node-123456789"):
        subprocess.run([OPENVPN, "--tls-crypt-v2", str(tmp_path / "server.key"), "--genkey", "tls-crypt-v2-client",
                        str(tmp_path / f"{name}.key"), base64.b64encode(name.encode()).decode()],
                       check=True, capture_output=True, timeout=30)
        key = tc.unwrap_client_key(server, (tmp_path / f"{name}.key").read_text())
        assert (key.metadata_type, key.metadata) == (tc.METADATA_USER, name.encode())
