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
- **Dense pretraining on a text stream** (issue 38, lever 4; KV-Distill, ICAE's packed
  pretraining): a source's documents joined into one token stream
  (:func:`text_stream_windows`) and cut into consecutive windows, each a continuation example
  whose split point is ``context_fraction`` of the window and whose target has no EOS (the
  cut is not the text's end). With ``distill`` from the full context, every continuation
  token carries the teacher's distribution.
- **Autoencoding** (ICAE, 500×, EPL, PIC pretraining; the SAC ablation): after ``[AE]``, the
  target is the context's own text + EOS.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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


STREAM_SEPARATOR = "\n\n"
"""What joins two documents of a text stream."""


def text_stream_windows(comp: Compressor, texts: Iterable[str], size: int) -> Iterator[list[int]]:
    """The documents' token ids joined into one stream (``STREAM_SEPARATOR`` between two
    documents) and cut into consecutive windows of exactly ``size`` tokens; the last, shorter
    piece is left out. Every token of the stream is in at most one window: a run of
    ``len(windows)`` examples reads each once."""
    if size < 2:
        raise InvalidInputError(f"a text-stream window needs at least 2 tokens, got {size}")
    separator = _text_ids(comp, STREAM_SEPARATOR)
    buffer: list[int] = []
    for index, text in enumerate(texts):
        buffer += (separator if index else []) + _text_ids(comp, text)
        while len(buffer) >= size:
            yield buffer[:size]
            buffer = buffer[size:]


def continuation_example(
    comp: Compressor,
    text: str | Sequence[int],
    *,
    min_tokens: int = 510,
    max_tokens: int = 2040,
    context_fraction: float = 0.5,
    eos: bool = True,
) -> TrainExample | None:
    """The first ``context_fraction`` of the tokens compressed (half by default, the paper's),
    the rest (+ EOS, unless ``eos=False``: a window cut from a stream does not end there)
    predicted; None if outside the length filter. ``text`` is a string or its token ids (a
    window of a longer document). Both parts keep at least one token."""
    if not 0 < context_fraction < 1:
        raise InvalidInputError(f"context_fraction must be in (0, 1), got {context_fraction}")
    ids = _text_ids(comp, text) if isinstance(text, str) else list(text)
    if not min_tokens <= len(ids) <= max_tokens or len(ids) < 2:
        return None
    split = min(max(1, int(len(ids) * context_fraction)), len(ids) - 1)  # 0.5: len // 2
    return TrainExample(
        context_ids=tuple(comp.context_prefix_ids() + ids[:split]),
        prompt_ids=(),
        target_ids=(*ids[split:], _eos(comp)) if eos else tuple(ids[split:]),
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
