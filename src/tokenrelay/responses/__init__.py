"""OpenAI Responses over the relay: the object and its events built from a stream's log, and
the service that stores, continues, cancels and finds responses."""

from __future__ import annotations

from tokenrelay.responses.output import ResponseBuilder, ResponseHead, build
from tokenrelay.responses.service import Responses

__all__ = ["ResponseBuilder", "ResponseHead", "Responses", "build"]
