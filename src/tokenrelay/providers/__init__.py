"""Providers turn a :class:`~tokenrelay.chat.ChatRequest` into typed events.

Providers are found through the ``tokenrelay.providers`` entry-point group, where the
built-ins register exactly as a plugin's package would (``pyproject.toml``); code may also
:func:`register` one at run time.
"""

from __future__ import annotations

from tokenrelay.providers.base import Provider, ProviderContext, build_provider, register

__all__ = ["Provider", "ProviderContext", "build_provider", "register"]
