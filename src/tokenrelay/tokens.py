"""Counting tokens without the model's tokenizer: a deliberate over-estimate.

Tokens are counted by the provider when it can (the local model's own tokenizer); otherwise
by :func:`estimate_tokens`. ``tiktoken`` is not used: it fetches its encodings from the
network on first use, which a self-hosted gateway cannot count on, and it only knows OpenAI's
tokenizers, not Anthropic's or a llama.cpp server's. Overestimating costs a few old turns;
underestimating costs a failed request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# Chat templates wrap each message in a few tokens of markup (role, separators); a tool call or
# a tool result is wrapped the same way (it travels as a block or a message of its own).
MESSAGE_OVERHEAD = 4

# An image, whatever its size: what the largest image costs where the cost is published.
# Anthropic's is width x height / 750, about 1,600 tokens at the ~1.15 megapixels it scales
# images down to; OpenAI's is at most 1,105 (high detail, tiles of 170) and 85 at low detail.
# The image is a reference (a URL or data URL) the gateway does not fetch or decode, so its
# size is unknown: one figure, the larger, for every image.
IMAGE_TOKENS = 1600

# A tool definition is counted as its JSON (name, description, parameters) plus this much of
# the framing the provider wraps the list of tools in.
TOOL_OVERHEAD = 8

# Async: the local model's tokenizer lives in its worker process.
TokenCounter = Callable[[str], Awaitable[int]]


def estimate_tokens(text: str) -> int:
    """About one token per 3 bytes of UTF-8, rounded up.

    English runs near 4 characters a token in BPE vocabularies, so this leaves about a third
    of headroom there; CJK text (3 bytes a character, often a token each) comes out near
    exact. Never zero for non-empty text.
    """
    return -(-len(text.encode()) // 3)


async def estimated_tokens(text: str) -> int:
    """:func:`estimate_tokens` as a :data:`TokenCounter`."""
    return estimate_tokens(text)
