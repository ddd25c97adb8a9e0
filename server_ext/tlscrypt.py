"""tls-crypt-v2 keys made in Python, byte-compatible with OpenVPN (doc/tls-crypt-v2.txt):
one server key, and per node a client key whose wrapped copy carries the node's name as
metadata. The OpenVPN server unwraps it before TLS and asks its verify hook
(`VERIFY_HOOK`) whether that node still exists, so a removed node's key stops working
before any certificate is looked at. No openvpn binary is needed where the API runs.

Layout, as OpenVPN reads it:
  server key  Ke || Ka: 128 bytes (OpenVPN's `struct key`: a 64-byte cipher key and a
              64-byte HMAC key; AES-256-CTR and HMAC-SHA256 use the first 32 bytes of each)
  client key  Kc || WKc, where Kc is 256 random bytes (two such keys, `struct key2`) and
              WKc = T || AES-256-CTR(Ke, IV = T[:16], Kc || metadata) || len
              T   = HMAC-SHA256(Ka, len || Kc || metadata), len = len(WKc) as 16 bits
              metadata = one type byte (0 user, 1 timestamp) and its data
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SERVER_PEM_NAME = "OpenVPN tls-crypt-v2 server key"
CLIENT_PEM_NAME = "OpenVPN tls-crypt-v2 client key"
SERVER_KEY_LEN = 128
CLIENT_KEY_LEN = 256
TAG_LEN = 32
MAX_WKC_LEN = 1024  # OpenVPN refuses a bigger wrapped key
MAX_METADATA_LEN = MAX_WKC_LEN - CLIENT_KEY_LEN - TAG_LEN - 2  # 734, type byte included
METADATA_USER = 0
METADATA_TIMESTAMP = 1

# The node names a client key may carry: the certificate CN of a node (`node-<id>`). The
# verify hook below accepts exactly this shape; anything else is refused there too.
NODE_NAME = re.compile(r"node-[1-9][0-9]{0,8}")


class TLSCryptError(ValueError):
    """A tls-crypt-v2 key is malformed, or was not wrapped with this server key."""


@dataclass(frozen=True)
class ClientKey:
    kc: bytes
    metadata_type: int
    metadata: bytes  # without the type byte


def _pem(name: str, data: bytes) -> str:
    b64 = base64.b64encode(data).decode()
    body = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {name}-----\n{body}\n-----END {name}-----\n"


def _unpem(name: str, text: str) -> bytes:
    match = re.fullmatch(rf"\s*-----BEGIN {name}-----\n([A-Za-z0-9+/=\n]+)-----END {name}-----\s*", text)
    if not match:
        raise TLSCryptError(f"not an '{name}' PEM block")
    try:
        return base64.b64decode(match.group(1).replace("\n", ""), validate=True)
    except ValueError as exc:
        raise TLSCryptError(f"'{name}' holds invalid base64: {exc}") from None


def _server_keys(server_key_pem: str) -> tuple[bytes, bytes]:
    """(Ke, Ka): the AES-256-CTR key and the HMAC-SHA256 key of a server key."""
    raw = _unpem(SERVER_PEM_NAME, server_key_pem)
    if len(raw) != SERVER_KEY_LEN:
        raise TLSCryptError(f"a tls-crypt-v2 server key has {SERVER_KEY_LEN} bytes, this one {len(raw)}")
    return raw[:32], raw[64:96]


def _ctr(ke: bytes, tag: bytes, data: bytes) -> bytes:
    # CTR is its own inverse: the same call wraps and unwraps
    crypt = Cipher(algorithms.AES(ke), modes.CTR(tag[:16])).encryptor()
    return crypt.update(data) + crypt.finalize()


def make_server_key() -> str:
    return _pem(SERVER_PEM_NAME, os.urandom(SERVER_KEY_LEN))


def wrap_client_key(server_key_pem: str, metadata: bytes, metadata_type: int = METADATA_USER,
                    kc: bytes | None = None) -> str:
    """A new client key (Kc random unless given) whose wrapped copy carries `metadata`."""
    ke, ka = _server_keys(server_key_pem)
    kc = os.urandom(CLIENT_KEY_LEN) if kc is None else kc
    if len(kc) != CLIENT_KEY_LEN:
        raise TLSCryptError(f"Kc has {CLIENT_KEY_LEN} bytes, not {len(kc)}")
    plain = kc + bytes([metadata_type]) + metadata
    if len(plain) - CLIENT_KEY_LEN > MAX_METADATA_LEN:
        raise TLSCryptError(f"tls-crypt-v2 metadata is limited to {MAX_METADATA_LEN - 1} bytes")
    net_len = struct.pack("!H", TAG_LEN + len(plain) + 2)
    tag = hmac.new(ka, net_len + plain, hashlib.sha256).digest()
    return _pem(CLIENT_PEM_NAME, kc + tag + _ctr(ke, tag, plain) + net_len)


def unwrap_client_key(server_key_pem: str, client_key_pem: str) -> ClientKey:
    """What the OpenVPN server reads from a client key: Kc and the metadata, once the tag
    proves that `server_key_pem` wrapped it."""
    ke, ka = _server_keys(server_key_pem)
    raw = _unpem(CLIENT_PEM_NAME, client_key_pem)
    kc, wkc = raw[:CLIENT_KEY_LEN], raw[CLIENT_KEY_LEN:]
    if not TAG_LEN + CLIENT_KEY_LEN + 1 + 2 <= len(wkc) <= MAX_WKC_LEN:
        raise TLSCryptError(f"wrapped client key of {len(wkc)} bytes is out of bounds")
    net_len = wkc[-2:]
    if struct.unpack("!H", net_len)[0] != len(wkc):
        raise TLSCryptError("wrapped client key: its length field does not match its length")
    tag, sealed = wkc[:TAG_LEN], wkc[TAG_LEN:-2]
    plain = _ctr(ke, tag, sealed)
    if not hmac.compare_digest(tag, hmac.new(ka, net_len + plain, hashlib.sha256).digest()):
        raise TLSCryptError("client key was not wrapped with this server key (or was altered)")
    if plain[:CLIENT_KEY_LEN] != kc:
        raise TLSCryptError("the client key's Kc differs from the one inside its wrapped copy")
    return ClientKey(kc, plain[CLIENT_KEY_LEN], plain[CLIENT_KEY_LEN + 1:])


def node_metadata(common_name: str) -> bytes:
    if not NODE_NAME.fullmatch(common_name):
        raise TLSCryptError(f"{common_name!r} is not a node name (node-<id>); only nodes get client keys")
    return common_name.encode()


def client_key_for_node(server_key_pem: str, common_name: str) -> str:
    """A fresh client key for one config of the node `common_name` (its certificate CN)."""
    return wrap_client_key(server_key_pem, node_metadata(common_name))


VERIFY_HOOK_NAME = "tls-crypt-v2-verify.sh"
# The OpenVPN server runs this (--tls-crypt-v2-verify, via /bin/sh, so a noexec data dir
# does not matter) for every new client key before TLS starts: $1 is the process's
# client-config-dir; OpenVPN sets metadata_type and metadata_file. It accepts a key only
# when its metadata is a node name whose ccd entry is still there. The metadata is
# authenticated by the server key, yet it is handled as data: its size and bytes are checked
# against a fixed pattern before it is used as a file name, and never run or expanded.
VERIFY_HOOK = r"""#!/bin/sh
# Written by server_ext (vpnagent); rewritten at every server start. Do not edit.
LC_ALL=C
export LC_ALL
refuse() { echo "vpnagent tls-crypt-v2-verify: refused: $1" >&2; exit 1; }
[ "$#" -eq 1 ] && [ -d "$1" ] || refuse "usage: $0 CLIENT_CONFIG_DIR"
[ "${metadata_type:-}" = 0 ] || refuse "client key without node metadata (type ${metadata_type:-none})"
[ -f "${metadata_file:-}" ] || refuse "no metadata file"
size=$(wc -c < "$metadata_file") || refuse "metadata unreadable"
[ "$size" -ge 6 ] && [ "$size" -le 14 ] || refuse "metadata of $size bytes is not a node name"
name=$(cat -- "$metadata_file") || refuse "metadata unreadable"
# equal sizes: no NUL byte or trailing newline was dropped on the way into $name
[ "${#name}" -eq "$size" ] || refuse "metadata is not a node name"
case "$name" in
  node-[1-9]*) ;;
  *) refuse "metadata is not a node name" ;;
esac
case "${name#node-}" in
  *[!0-9]*) refuse "metadata is not a node name" ;;
esac
[ -f "$1/$name" ] || refuse "$name has no client-config-dir entry (removed)"
exit 0
"""
