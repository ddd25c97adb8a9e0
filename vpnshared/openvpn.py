"""The OpenVPN vocabulary both sides agree on: the server renders client configs with these
(server_ext/ovpn.py) and the node's allowlist accepts exactly these (vpnagent/ovpncheck.py)."""
from __future__ import annotations

HOST = r"[A-Za-z0-9:][A-Za-z0-9._:-]{0,252}"  # a DNS name or an IP address; never a leading "-"
AEAD_CIPHERS = ("AES-128-GCM", "AES-192-GCM", "AES-256-GCM", "CHACHA20-POLY1305")
CIPHERS = "(?:{0})(?::(?:{0}))*".format("|".join(AEAD_CIPHERS))
