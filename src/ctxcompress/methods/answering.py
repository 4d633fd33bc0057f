"""Answering questions against compressed contexts: :meth:`~AnsweringMixin.plan` tokenizes
and checks every limit once, :meth:`~AnsweringMixin.answer` runs a plan through greedy
decoding and returns :class:`~ctxcompress.generation.Generation` objects (text, token ids,
finish reason), and :meth:`~AnsweringMixin.generate` is the two together, returning text.

The service (:mod:`ctxcompress.serving`) plans on its request threads — so a request that
cannot be answered is refused before it queues — and answers on its model thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..context import CompressedContext
from ..errors import ContextTooLongError, InvalidInputError, PromptTooLongError
from ..generation import Generation, greedy_generate


@dataclass(frozen=True)
class AnswerPlan:
    """Questions ready to decode: one context and one tokenized question prompt per row,
    all checked against the model's positions for ``max_new_tokens`` new tokens."""

    contexts: tuple[CompressedContext, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    max_new_tokens: int

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def rows(self, indices: Sequence[int]) -> AnswerPlan:
        """The plan of a subset of the rows (in the order given)."""
        return AnswerPlan(
            tuple(self.contexts[i] for i in indices),
            tuple(self.prompt_ids[i] for i in indices),
            self.max_new_tokens,
        )

    @staticmethod
    def join(plans: Sequence[AnswerPlan]) -> AnswerPlan:
        """Several plans with the same ``max_new_tokens`` as one (rows in order)."""
        if len({p.max_new_tokens for p in plans}) != 1:
            raise InvalidInputError("plans joined into one batch must share max_new_tokens")
        return AnswerPlan(
            tuple(c for p in plans for c in p.contexts),
            tuple(ids for p in plans for ids in p.prompt_ids),
            plans[0].max_new_tokens,
        )


class AnsweringMixin:
    """``plan`` / ``answer`` / ``generate`` of a :class:`~ctxcompress.methods.base.Compressor`."""

    def plan(
        self: Any,
        context: CompressedContext | Sequence[CompressedContext],
        questions: str | Sequence[str],
        max_new_tokens: int = 32,
        *,
        max_question_tokens: int | None = None,
    ) -> AnswerPlan:
        """Check and tokenize questions against compressed context(s), refusing — before any
        decoding — what cannot be answered: a context another compressor made, an empty
        question, one over ``max_question_tokens`` prompt tokens (:class:`PromptTooLongError`),
        or a context + question + ``max_new_tokens`` beyond the model's positions
        (:class:`ContextTooLongError`). Errors name the question by its index.

        ``context`` is one context (every question is asked against it) or a list of contexts
        paired one-to-one with ``questions``.
        """
        qs = [questions] if isinstance(questions, str) else list(questions)
        if not qs:
            raise InvalidInputError("at least one question is needed")
        if isinstance(context, CompressedContext):
            contexts = [context] * len(qs)
        else:
            contexts = list(context)
            if len(contexts) != len(qs):
                raise InvalidInputError(
                    f"{len(contexts)} contexts but {len(qs)} questions: pass one context, or "
                    "one context per question"
                )
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1
        ):
            raise InvalidInputError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        for c in {id(c): c for c in contexts}.values():
            if not isinstance(c, CompressedContext):
                raise InvalidInputError(f"expected a CompressedContext, got {type(c).__name__}")
            self.check_context(c)
        limit = self.max_positions
        prompt_ids = []
        for i, (c, q) in enumerate(zip(contexts, qs, strict=True)):
            try:
                ids = self.question_ids(q)
            except InvalidInputError as exc:
                raise InvalidInputError(f"question {i}: {exc}") from None
            if max_question_tokens is not None and len(ids) > max_question_tokens:
                raise PromptTooLongError(
                    f"question {i} has {len(ids)} tokens; the limit is {max_question_tokens}"
                )
            if self.positions_needed(c, len(ids), max_new_tokens) > limit:
                raise ContextTooLongError(
                    f"context ({c.original_length} tokens) + question {i} ({len(ids)} tokens) "
                    f"+ max_new_tokens ({max_new_tokens}) exceed the model's {limit} positions"
                )
            prompt_ids.append(tuple(ids))
        return AnswerPlan(tuple(contexts), tuple(prompt_ids), max_new_tokens)

    def answer(
        self: Any,
        plan: AnswerPlan,
        *,
        stop: Sequence[str] | str | None = None,
        batch_size: int = 32,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        """Decode a :meth:`plan` greedily, ``batch_size`` rows at a time.

        ``on_token(i, token_id)``, if given, is called for each token generated for row
        ``i`` as it is produced, for streaming (see
        :func:`~ctxcompress.generation.greedy_generate`); the results are the same with or
        without it. Answering never modifies a context.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        eos = self._eos_ids()
        results: list[Generation] = []
        # Move each distinct context once: rows that share a context object then share one
        # expanded KV prefix instead of a stacked copy per row.
        moved = {id(c): c.to(self.device, self.dtype) for c in plan.contexts}
        with torch.inference_mode(), self.decoder_mode():
            for start in range(0, len(plan), batch_size):
                rows = [
                    self.decoder_prompt(moved[id(c)], ids)
                    for c, ids in zip(
                        plan.contexts[start : start + batch_size],
                        plan.prompt_ids[start : start + batch_size],
                        strict=True,
                    )
                ]
                results += greedy_generate(
                    self.lm,
                    self.tokenizer,
                    rows,
                    max_new_tokens=plan.max_new_tokens,
                    eos_token_ids=eos,
                    stop_strings=stops,
                    on_token=_offset_rows(on_token, start),
                )
        return results

    def generate(
        self: Any,
        context: CompressedContext | Sequence[CompressedContext],
        questions: str | Sequence[str],
        *,
        max_new_tokens: int = 32,
        stop: Sequence[str] | str | None = None,
        batch_size: int = 32,
        on_token: Callable[[int, int], None] | None = None,
    ) -> str | list[str]:
        """Answer questions greedily against compressed context(s): :meth:`plan`, then
        :meth:`answer`, returning the answer texts (one string for a single question string).

        ``context`` is one context (every question is asked against it, in batches of
        ``batch_size``) or a list of contexts paired one-to-one with ``questions``;
        ``on_token(i, token_id)`` streams the tokens of question ``i``.
        """
        plan = self.plan(context, questions, max_new_tokens)
        texts = [
            g.text for g in self.answer(plan, stop=stop, batch_size=batch_size, on_token=on_token)
        ]
        return texts[0] if isinstance(questions, str) else texts

    def _eos_ids(self: Any) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.lm.generation_config.eos_token_id
        ids |= set(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)


def _offset_rows(
    on_token: Callable[[int, int], None] | None, start: int
) -> Callable[[int, int], None] | None:
    """``on_token`` with a batch's row indices shifted to plan rows."""
    if on_token is None:
        return None
    return lambda row, token: on_token(start + row, token)
