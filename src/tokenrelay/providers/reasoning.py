"""Reasoning controls across dialects: OpenAI's ``reasoning_effort`` ⇄ Anthropic's budget.

The budgets are the ones LiteLLM uses, so a client moving between gateways sees the same
thinking; 1024 is the smallest budget Anthropic accepts, and a budget must stay below the
request's ``max_tokens`` (thinking is part of the output).
"""

from __future__ import annotations

from tokenrelay import errors

BUDGET_OF_EFFORT = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
SMALLEST_BUDGET = BUDGET_OF_EFFORT["minimal"]


def budget_of_effort(effort: str, max_tokens: int | None = None) -> int | None:
    """The thinking budget for ``effort``, kept below ``max_tokens``; None for ``none``."""
    if effort == "none":
        return None
    try:
        budget = BUDGET_OF_EFFORT[effort]
    except KeyError:
        known = ", ".join(["none", *BUDGET_OF_EFFORT])
        raise errors.InvalidRequest(
            f"reasoning_effort {effort!r} has no thinking budget (one of {known})"
        ) from None
    if max_tokens is None or budget < max_tokens:
        return budget
    if max_tokens <= SMALLEST_BUDGET:
        raise errors.InvalidRequest(
            f"reasoning_effort {effort!r} needs max_tokens above {SMALLEST_BUDGET} on this model:"
            f" its thinking takes at least {SMALLEST_BUDGET} tokens of the output"
        )
    # An effort says how hard to think, max_tokens how much the client will pay for: the cap
    # wins, leaving the reply at least one token.
    return max_tokens - 1


def effort_of_budget(budget: int) -> str:
    """The effort nearest below ``budget``: never more thinking than the client paid for."""
    if budget < BUDGET_OF_EFFORT["medium"]:
        return "low"
    if budget < BUDGET_OF_EFFORT["high"]:
        return "medium"
    return "high"
