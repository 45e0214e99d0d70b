"""A lean, pooled HTTP/1.1 client for streaming from upstream LLM APIs (see :mod:`.pool`)."""

from tokenrelay.client.errors import ClientError, ConnectFailed, Disconnected, ProtocolError
from tokenrelay.client.pool import Client, Response

__all__ = ["Client", "ClientError", "ConnectFailed", "Disconnected", "ProtocolError", "Response"]
