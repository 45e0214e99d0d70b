"""A generation is not a connection: streams run on their own and clients subscribe to logs."""

from __future__ import annotations

from tokenrelay.relay.log import StreamLog
from tokenrelay.relay.relay import Relay
from tokenrelay.relay.stream import Stream

__all__ = ["Relay", "Stream", "StreamLog"]
