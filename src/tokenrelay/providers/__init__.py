"""Providers turn a :class:`~tokenrelay.chat.ChatRequest` into typed events.

Built-ins register through the same table a plugin would use (:data:`PROVIDERS`).
"""

from __future__ import annotations

from tokenrelay.providers.base import Provider, ProviderContext, build_provider, register

__all__ = ["Provider", "ProviderContext", "build_provider", "register"]
