"""Reasoning controls across dialects: OpenAI's ``reasoning_effort`` ⇄ Anthropic's budget.

The budgets are the ones LiteLLM uses, so a client moving between gateways sees the same
thinking; 1024 is the smallest budget Anthropic accepts.
"""

from __future__ import annotations

from tokenrelay import errors

BUDGET_OF_EFFORT = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}


def budget_of_effort(effort: str) -> int | None:
    """The thinking budget for ``effort``; None for ``none`` (no thinking)."""
    if effort == "none":
        return None
    try:
        return BUDGET_OF_EFFORT[effort]
    except KeyError:
        known = ", ".join(["none", *BUDGET_OF_EFFORT])
        raise errors.InvalidRequest(
            f"reasoning_effort {effort!r} has no thinking budget (one of {known})"
        ) from None


def effort_of_budget(budget: int) -> str:
    """The effort nearest below ``budget``: never more thinking than the client paid for."""
    if budget < BUDGET_OF_EFFORT["medium"]:
        return "low"
    if budget < BUDGET_OF_EFFORT["high"]:
        return "medium"
    return "high"
