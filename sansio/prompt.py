"""The chat-completions ``messages`` list sent to the AI for one answer.

Order: the bot's system prompt (left out when blank: some providers refuse an empty system message),
then the last ``ai_config.history`` messages of the conversation, oldest first, as ``user`` (the
customer, direction ``in``) or ``assistant`` (the bot or a human agent, direction ``out``), then the
customer's new messages joined into one ``user`` message, since the debounce gathers a burst of short
messages ("hi" / "do you deliver?" / "to Porto") that are one question.

``history`` must not contain the new messages themselves. Empty texts (media without a caption) are
skipped: they tell the model nothing and some providers reject empty content.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sansio.rules import AiConfig

_ROLES = {"in": "user", "out": "assistant"}


def build_messages(
    ai_config: AiConfig, history: Sequence[tuple[str, str]], incoming: Iterable[str]
) -> list[dict[str, str]]:
    """``history`` is the conversation before the new messages, oldest first, as (direction, text)."""
    messages: list[dict[str, str]] = []
    if ai_config.system_prompt.strip():
        messages.append({"role": "system", "content": ai_config.system_prompt})
    past = [(direction, text) for direction, text in history if text and text.strip()]
    for direction, text in past[-ai_config.history :] if ai_config.history else ():
        try:
            role = _ROLES[direction]
        except KeyError:
            raise ValueError(f"unknown message direction {direction!r}; expected 'in' or 'out'") from None
        messages.append({"role": role, "content": text})
    new = "\n".join(text for text in incoming if text and text.strip())
    if new:
        messages.append({"role": "user", "content": new})
    return messages
