"""tokenrelay: stream LLM completions token by token, done right once."""

from __future__ import annotations

__version__ = "0.1.0"
