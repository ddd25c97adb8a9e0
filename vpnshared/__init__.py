"""What the node agent (vpnagent) and the server (server_ext) both need, and nothing else:
the config key description and its reference renderer (schema.py), and the shape of the
OpenVPN settings the server writes and the node allows (openvpn.py), and the options both
command lines share (cli.py: --version, --log-level, --config with its default location).

Standard library only, and it imports neither side: a server install must not pull in the
node agent (and its Docker SDK), nor a node the server's Flask and SQLAlchemy."""
