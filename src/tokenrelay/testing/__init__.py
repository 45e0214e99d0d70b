"""Test doubles shipped with the package: real servers to point tokenrelay at.

Like httpx's ``MockTransport``, these are part of the public package so tests, benchmarks and
demos all exercise the same code paths a production upstream would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenrelay.testing._fake import RecordedRequest, fake_prompt
    from tokenrelay.testing.fake_anthropic import FakeAnthropic
    from tokenrelay.testing.fake_openai import FakeOpenAI

__all__ = ["FakeAnthropic", "FakeOpenAI", "RecordedRequest", "fake_prompt"]


def __getattr__(name: str) -> Any:
    # Imported lazily so ``python -m tokenrelay.testing.fake_openai`` (or ``fake_anthropic``)
    # does not find the module already imported by its package (runpy warns about that).
    if name == "FakeAnthropic":
        from tokenrelay.testing import fake_anthropic

        return fake_anthropic.FakeAnthropic
    if name in __all__:
        from tokenrelay.testing import _fake, fake_openai

        return getattr(fake_openai if name == "FakeOpenAI" else _fake, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
