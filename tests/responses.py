"""Helpers for the Responses tests: the official SDK's client on a gateway, and a script."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai


@contextlib.asynccontextmanager
async def sdk(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async OpenAI client on the gateway at ``url``; no retries, so a refusal shows."""
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
        yield client


def script(**directions: Any) -> dict[str, Any]:
    """An ``extra_body`` steering the scripted model."""
    return {"script": directions}
