"""Ids that must be unique, not secret: one random draw per process, then a counter.

Each request used to draw four ids from ``os.urandom`` (its stream, its completion, its
request id and its limiter lease). Only the stream's id is a secret: it is what a client
presents to resume or cancel a stream. Request ids and leases only have to differ from every
other one, on every instance: a random prefix per process (drawn again in a forked worker)
and a counter give that for one getrandom call at startup.
"""

from __future__ import annotations

import itertools
import os

_prefix = ""
_counter = itertools.count()


def _draw() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex()
    _counter = itertools.count()


_draw()
os.register_at_fork(after_in_child=_draw)


def unique(kind: str) -> str:
    """``kind`` and 24 hex digits no other call in any process returns."""
    return f"{kind}_{_prefix}{next(_counter):012x}"
