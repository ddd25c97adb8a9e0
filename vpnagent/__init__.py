"""vpnagent: the node side. Kept import-free so the algorithm client can be copied into images."""
__version__ = "0.1.0"
