"""Prompts are text or a list of chat messages (``[{"role": ..., "content": ...}]``): checking a dataset
row's prompt, and rendering it to the text a model sees (chat messages through the tokenizer's chat
template, on the rollout side, where the tokenizer is)."""

from __future__ import annotations

from typing import Any


def prompt_problem(prompt: Any) -> str | None:
    """What is wrong with ``prompt`` as text or chat messages, or None when nothing is."""
    if isinstance(prompt, str):
        return None
    if not isinstance(prompt, (list, tuple)) or not prompt:
        return f"must be text or a non-empty list of chat messages, got {type(prompt).__name__}"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict):
            return f"message {i} must be a mapping {{role, content}}, got {type(message).__name__}"
        for field in ("role", "content"):
            if not isinstance(message.get(field), str):
                return f"message {i} needs a {field!r} string"
    return None


def render_prompt(prompt: str | list[dict], tokenizer: Any) -> str:
    """The text the model is prompted with: text as it is; chat messages rendered by the tokenizer's chat
    template with the assistant's turn opened (``add_generation_prompt``)."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data: the prompts are chat messages, but the tokenizer of actor.model.path has no "
                         "chat template to render them with; use text prompts or a model with one")
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
