"""One structured line per stream at its end, as text or JSON (``observability.log_format``).

The line goes to the ``tokenrelay.streams`` logger at INFO, so ``log_level = "warning"``
turns it off with the access log. In JSON every ``tokenrelay`` log is one JSON object a line.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from tokenrelay.config import Settings

logger = logging.getLogger("tokenrelay.streams")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object; a stream's line carries its fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class _Ours(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so that a second app replaces it."""


def configure(settings: Settings) -> None:
    json = settings.observability.log_format == "json"
    root = logging.getLogger("tokenrelay")
    for each in (root, logger):
        for handler in [h for h in each.handlers if isinstance(h, _Ours)]:
            each.removeHandler(handler)
    logger.setLevel(settings.log_level.upper())
    handler = _Ours()
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
    (root if json else logger).addHandler(handler)


def stream_ended(fields: dict[str, Any]) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    logger.info("stream ended %s", text, extra={"fields": fields})
