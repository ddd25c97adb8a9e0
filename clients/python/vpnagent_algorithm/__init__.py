"""vpnagent's algorithm client: what an algorithm run uses to create subtasks, collect
results and find the other runs' addresses over the VPN.

Standard library only (Python >= 3.9), so it goes into any algorithm image: `pip install
./clients/python`, or copy this folder next to the algorithm. Its calls and return values
are vantage6 4.x's (`vantage6.algorithm.client.AlgorithmClient`), and it reads either
node's environment, so the same algorithm runs on a vpnagent node and a vantage6 node.

    from vpnagent_algorithm import AlgorithmClient
    client = AlgorithmClient()
    peers = client.vpn.get_child_addresses()

`MockAlgorithmClient` stands in for it in an algorithm's unit tests.
"""
from .client import AlgorithmClient
from .errors import AlgorithmClientError
from .mock import MockAlgorithmClient

__version__ = "0.1.0"
__all__ = ["AlgorithmClient", "AlgorithmClientError", "MockAlgorithmClient", "__version__"]
