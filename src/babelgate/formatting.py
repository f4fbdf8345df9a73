"""One tokenization path for everything: chat template as text (with the generation prompt),
then tokenization with add_special_tokens=False and left padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Message = dict[str, str]

# Used only for tokenizers that ship no chat template (e.g. GPT-2-style test models).
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding, a pad token when missing, and a plain chat template when none exists."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_TEMPLATE
    return tokenizer


def to_messages(prompt: str | Sequence[Message], system_prompt: str | None = None) -> list[Message]:
    """A user text or a message list, with an optional system message in front.

    `system_prompt=None` keeps the template's own default behaviour (Qwen inserts its default
    system prompt); an explicit string replaces it.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt is not None and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def format_chat(
    tokenizer: Any, prompt: str | Sequence[Message], system_prompt: str | None = None
) -> str:
    """Chat-templated text of one conversation, ending with the assistant header."""
    text = tokenizer.apply_chat_template(
        to_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
    )
    return str(text)


def tokenize_formatted(
    tokenizer: Any, formatted: Sequence[str], device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids`/`attention_mask` [batch, seq] for already formatted texts."""
    batch = tokenizer(list(formatted), return_tensors="pt", padding=True, add_special_tokens=False)
    out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
