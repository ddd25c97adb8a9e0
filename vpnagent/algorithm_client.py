"""The algorithm client's old import path, kept so `from vpnagent.algorithm_client import
AlgorithmClient` still works. The client itself is the package `vpnagent_algorithm` in
clients/python/ (`pip install ./clients/python`; the vpnagent distribution ships it too, as
a top-level package); new code imports that.

When the package is not installed, it is taken from clients/python/ beside this package:
in a checkout, and in the algorithm images built from this repository's file lists, which
copy repository paths under /app unchanged (so the package lands in /app/clients/python
while their PYTHONPATH is /app).
"""
from __future__ import annotations

import sys
from pathlib import Path

try:
    import vpnagent_algorithm  # noqa: F401 - installed, or already on the path
except ImportError:
    _HERE = Path(__file__).resolve().parent.parent / "clients" / "python"
    if not (_HERE / "vpnagent_algorithm" / "__init__.py").is_file():
        raise ImportError("the algorithm client package vpnagent_algorithm is missing; fix: pip install "
                          "./clients/python from the vpnagent repository, or copy clients/python/"
                          "vpnagent_algorithm into the image next to the algorithm") from None
    sys.path.append(str(_HERE))

from vpnagent_algorithm import AlgorithmClient, AlgorithmClientError, MockAlgorithmClient  # noqa: E402

__all__ = ["AlgorithmClient", "AlgorithmClientError", "MockAlgorithmClient"]
