"""The records every loader returns, and the one error type of the data layer.

All records are frozen dataclasses. ``meta`` holds provenance and loader-specific facts (split,
line number, gold position, ...); it takes no part in equality or hashing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import CtxCompressError


class DataError(CtxCompressError):
    """A data set, file or record that cannot be loaded as asked.

    The message names the spec, file and (for line-based files) the 1-based line number,
    and says what to do about it.
    """


@dataclass(frozen=True)
class QAExample:
    """One question about one context, with every gold answer (the first is the training target)."""

    context: str
    question: str
    answers: tuple[str, ...]
    id: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TextDocument:
    """One plain-text document (pretraining text, a paper, a passage)."""

    text: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SummarizationExample:
    """A document and one reference summary of it; ``aspect`` says which kind ("" if none)."""

    document: str
    summary: str
    aspect: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def question(self, template: str | None = None) -> str:
        """The question that asks for this summary (training and evaluation use the same)."""
        if template is None:
            template = SUMMARY_QUESTION if self.aspect else SUMMARY_QUESTION_NO_ASPECT
        return template.format(aspect=self.aspect)


SUMMARY_QUESTION = "Summarize the {aspect} of this paper in one sentence."
SUMMARY_QUESTION_NO_ASPECT = "Summarize this document in one sentence."
