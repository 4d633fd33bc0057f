"""Training objectives as token-level examples (METHODS.md §1-§3).

Every objective becomes a :class:`TrainExample`: the context to compress, the decoder prompt
that follows the ``[LM]``/``[AE]`` token, and the supervised target. The decoder row is
``[task] + prompt + target[:-1]`` and the loss covers exactly the target tokens (which end
with EOS), nothing else: see ``Compressor.forward``.

- **QA fine-tuning**: context = the passage, prompt = the question template, target = the
  first gold answer + EOS. **Summarisation** is the same with the document as context, the
  question ``SummarizationExample.question()`` ("Summarize the challenge of this paper in one
  sentence.") and the reference summary as the answer.
- **Continuation pretraining** (SAC, no autoencoding): a document of ``min_tokens`` to
  ``max_tokens`` tokens (510-2040 in the paper) is cut in half; the first half is compressed,
  the second half + EOS is the target right after ``[LM]`` (empty prompt).
- **Autoencoding** (ICAE, 500×, EPL, PIC pretraining; the SAC ablation): after ``[AE]``, the
  target is the context's own text + EOS.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import InvalidInputError
from ..methods.base import Compressor

OBJECTIVES = ("qa", "summarization", "continuation", "autoencoding")


@dataclass(frozen=True)
class TrainExample:
    """One supervised example in token ids."""

    context_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    task: str = "lm"

    def labels(self) -> list[int]:
        """Labels aligned with the decoder row ``[task] + prompt + target[:-1]``: -100 where
        nothing is predicted, else the token that position must predict."""
        return [-100] * len(self.prompt_ids) + list(self.target_ids)

    def decoder_row(self) -> list[int | str]:
        """The decoder inputs, with the task token written as ``"[LM]"``/``"[AE]"``."""
        return [f"[{self.task.upper()}]", *self.prompt_ids, *self.target_ids[:-1]]


def _eos(comp: Compressor) -> int:
    return comp.tokenizer.eos_token_id  # every loaded tokenizer has one (prepare_tokenizer)


def _text_ids(comp: Compressor, text: str) -> list[int]:
    return list(comp.tokenizer(text, add_special_tokens=False).input_ids)


def qa_example(comp: Compressor, context: str, question: str, answer: str) -> TrainExample:
    """Loss on the answer tokens + EOS only."""
    if not answer.strip():
        raise InvalidInputError("a QA training example has an empty answer")
    return TrainExample(
        context_ids=tuple(comp.context_ids(context)),
        prompt_ids=tuple(comp.question_ids(question)),
        target_ids=(*_text_ids(comp, answer), _eos(comp)),
    )


def document_windows(comp: Compressor, text: str, size: int) -> Iterator[list[int]]:
    """A document's token ids cut into consecutive windows of ``size`` tokens (the last may
    be shorter), so that long documents (whole papers) feed the length-filtered objectives
    instead of being dropped."""
    ids = _text_ids(comp, text)
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def continuation_example(
    comp: Compressor,
    text: str | Sequence[int],
    *,
    min_tokens: int = 510,
    max_tokens: int = 2040,
) -> TrainExample | None:
    """First half compressed, second half + EOS predicted; None if outside the length filter.
    ``text`` is a string or its token ids (a window of a longer document)."""
    ids = _text_ids(comp, text) if isinstance(text, str) else list(text)
    if not min_tokens <= len(ids) <= max_tokens or len(ids) < 2:
        return None
    half = len(ids) // 2
    return TrainExample(
        context_ids=tuple(comp.context_prefix_ids() + ids[:half]),
        prompt_ids=(),
        target_ids=(*ids[half:], _eos(comp)),
    )


def autoencoding_example(comp: Compressor, text: str | Sequence[int]) -> TrainExample:
    """After ``[AE]``, reconstruct the context text + EOS (``text``: a string or token ids)."""
    if isinstance(text, str):
        context, ids = comp.context_ids(text), _text_ids(comp, text)
    else:
        context, ids = comp.context_prefix_ids() + list(text), list(text)
    return TrainExample(
        context_ids=tuple(context),
        prompt_ids=(),
        target_ids=(*ids, _eos(comp)),
        task="ae",
    )
