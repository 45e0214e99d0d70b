"""What one request may ask for: messages and tokens, against the configured limits."""

from __future__ import annotations

from tokenrelay import errors
from tokenrelay.chat import Message
from tokenrelay.config import Limits


def check_messages(messages: list[Message], limits: Limits) -> None:
    if not messages:
        raise errors.InvalidRequest("messages must hold at least one message")
    if len(messages) > limits.max_messages:
        raise errors.InvalidRequest(
            f"too many messages: {len(messages)} (the limit is {limits.max_messages})"
        )
    for index, message in enumerate(messages):
        size = message.size()
        if size > limits.max_message_chars:
            raise errors.PayloadTooLarge(
                f"messages.{index}.content is {size} characters "
                f"(the limit is {limits.max_message_chars})"
            )


def check_max_tokens(max_tokens: int | None, limits: Limits) -> None:
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise errors.InvalidRequest(
            f"max_tokens is {max_tokens} (the limit is {limits.max_tokens})"
        )
