"""The one error type of the client."""
from __future__ import annotations


class AlgorithmClientError(RuntimeError):
    """A call to the server failed, or the container lacks what the client needs.

    `status` is the HTTP status (None: no answer at all, or nothing was sent) and `msg` the
    server's explanation. vantage6's client returns an error answer's JSON instead of
    raising; this client raises, so a failed call cannot be mistaken for data."""

    def __init__(self, message: str, status: int | None = None, msg: str | None = None,
                 method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.msg = msg if msg is not None else message
        self.method = method
        self.path = path
