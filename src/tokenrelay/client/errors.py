"""The client's failures, one tree; providers map them to :mod:`tokenrelay.errors` once::

ClientError
├── ConnectFailed     no connection: DNS, refused, TLS handshake, connect timeout
├── Disconnected      the upstream closed the connection before or during the response
└── ProtocolError     the upstream's bytes are not HTTP/1.1 the client can read
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every failure raised by :mod:`tokenrelay.client`."""


class ConnectFailed(ClientError):
    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        """``"dns"``, ``"refused"``, ``"tls"`` or ``"timeout"``."""


class Disconnected(ClientError):
    pass


class ProtocolError(ClientError):
    pass
