"""The paper's prompt: a system message plus the question as the user message, rendered with the chat template.

``system_prompt=None`` means the paper's ``SYSTEM_PROMPT``; pass another string to override it per model
(an empty string ``""`` drops the system message, for templates that reject a system role).

Fallback for a tokenizer without a chat template (e.g. a base model's tokenizer with ``chat_template`` unset),
a plain-text format::

    System: <system prompt>

    User: <question>

    Assistant:

(no trailing space or newline after ``Assistant:``; the ``System:`` block is omitted when the system prompt is
empty). Nothing model-specific is added (no BOS); the tokenizer adds its own special tokens when encoding.
"""

from __future__ import annotations

from typing import Any

SYSTEM_PROMPT = (
    "You are a careful math solver. Think through the solution and show the steps. Use English only. "
    "End the response with the final answer only in the format: '#### <final numeric answer only>'"
)

FALLBACK_FORMAT = "System: {system}\n\nUser: {question}\n\nAssistant:"
FALLBACK_FORMAT_NO_SYSTEM = "User: {question}\n\nAssistant:"


def _system(system_prompt: str | None) -> str:
    return SYSTEM_PROMPT if system_prompt is None else system_prompt


def build_messages(question: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """[system, user] chat messages (no system message if ``system_prompt == ""``)."""
    system = _system(system_prompt)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return messages


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """The prompt string: the tokenizer's chat template with ``add_generation_prompt=True``, else the fallback."""
    if tokenizer is not None and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            build_messages(question, system_prompt), tokenize=False, add_generation_prompt=True
        )
    system = _system(system_prompt)
    if system:
        return FALLBACK_FORMAT.format(system=system, question=question)
    return FALLBACK_FORMAT_NO_SYSTEM.format(question=question)


__all__ = ["SYSTEM_PROMPT", "build_messages", "render_prompt", "has_chat_template", "FALLBACK_FORMAT"]
