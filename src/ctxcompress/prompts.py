"""Prompt layouts for zero-shot baselines on chat (instruct) models.

Trained compressors use their own plain template (``### Context:`` ... ``### Answer:``). A
frozen instruct model answering zero-shot does much better inside its chat template, so the
hard baselines can be given the chat layout through their ordinary options: the part of the
rendered chat before the context becomes ``context_prefix``, the part after it (with the
question) becomes ``question_template``.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from .errors import InvalidInputError

_CONTEXT, _QUESTION = "\x00CONTEXT\x00", "\x00QUESTION\x00"


def chat_prompt_options(
    tokenizer: PreTrainedTokenizerBase,
    instruction: str = "",
    system: str | None = None,
) -> dict[str, Any]:
    """Compressor options that lay context and question out as one chat user turn.

    The user message is ``instruction + context + "\\n\\n" + question``; the assistant turn is
    opened (``add_generation_prompt``). Returns ``context_prefix``, ``question_template`` and
    ``add_bos=False`` (the chat template writes its own start tokens).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInputError("this tokenizer has no chat template; use the plain template")
    messages = [{"role": "user", "content": f"{instruction}{_CONTEXT}\n\n{_QUESTION}"}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, rest = rendered.split(_CONTEXT)
    middle, after = rest.split(_QUESTION)
    bos = tokenizer.bos_token or ""
    if bos and before.startswith(bos):
        before = before[len(bos) :]  # added back as a token by add_bos if wanted
    return {
        "context_prefix": before,
        "question_template": middle.replace("{", "{{").replace("}", "}}")
        + "{question}"
        + after.replace("{", "{{").replace("}", "}}"),
        "add_bos": bool(bos and rendered.startswith(bos)),
    }
