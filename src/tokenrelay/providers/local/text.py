"""Token bytes to whole characters: what the worker sends is always valid text."""

from __future__ import annotations

import codecs


class TextAssembler:
    """Token bytes in, whole characters out, never showing any part of a stop string.

    A token may end inside a multi-byte UTF-8 sequence, so bytes go through an incremental
    decoder; text that could still grow into a stop string is held back until it cannot.
    """

    def __init__(self, stop: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stop or [] if s]
        self._held = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        """Text safe to send now, and whether a stop string was reached (text before it only)."""
        return self._scan(self._held + self._decoder.decode(data))

    def finish(self) -> str:
        """Whatever is left once the model has stopped for another reason."""
        text, stopped = self._scan(self._held + self._decoder.decode(b"", final=True))
        if stopped:
            return text
        text, self._held = text + self._held, ""
        return text

    def _scan(self, text: str) -> tuple[str, bool]:
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        hold = max((self._partial(text, s) for s in self._stops), default=0)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        """The length of the longest end of ``text`` that begins ``stop``."""
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return size
        return 0
