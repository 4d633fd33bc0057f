"""Data sources -> token-level training examples of their objectives (with the length
filters and document windows of the loop settings)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import data as data_lib
from ..errors import InvalidInputError
from ..methods import Compressor
from .config import EXAMPLES_WEIGHT, DataSource, TrainConfig
from .objectives import (
    TrainExample,
    autoencoding_example,
    continuation_example,
    document_windows,
    qa_example,
    text_stream_windows,
)


@dataclass
class SourceExamples:
    """Tokenized examples of one data source, with what the filters dropped."""

    source: DataSource
    examples: list[TrainExample]
    dropped: int

    @property
    def weight(self) -> float:
        """The source's sampling weight (``"examples"``: its number of examples)."""
        if self.source.weight == EXAMPLES_WEIGHT:
            return float(len(self.examples))
        return float(self.source.weight)


def build_examples(comp: Compressor, source: DataSource, config: TrainConfig) -> SourceExamples:
    """Load one data source and turn it into token-level examples of its objective."""
    loop = config.train
    options = dict(source.options)
    limit, seed = source.limit, loop.seed
    examples: list[TrainExample] = []
    dropped = 0
    if source.objective == "qa":
        for rec in data_lib.load_qa(source.source, limit=limit, seed=seed, **options):
            examples.append(qa_example(comp, rec.context, rec.question, rec.answers[0]))
    elif source.objective == "summarization":
        for doc in data_lib.load_summarization(source.source, limit=limit, seed=seed, **options):
            examples.append(qa_example(comp, doc.document, doc.question(), doc.summary))
    elif loop.text_stream:
        texts = _texts(source, limit, seed, options)
        for window in text_stream_windows(comp, texts, loop.continuation_max_tokens):
            ex = _text_example(comp, window, source.objective, loop, eos=False)
            if ex is None:
                dropped += 1
            else:
                examples.append(ex)
    else:
        for text in _texts(source, limit, seed, options):
            pieces = (
                document_windows(comp, text, loop.continuation_max_tokens)
                if loop.document_windows
                else [text]
            )
            for piece in pieces:
                ex = _text_example(comp, piece, source.objective, loop)
                if ex is None:
                    dropped += 1
                else:
                    examples.append(ex)
    limit_tokens = loop.max_context_tokens
    if limit_tokens is not None:
        kept = [e for e in examples if len(e.context_ids) <= limit_tokens]
        dropped += len(examples) - len(kept)
        examples = kept
    if not examples:
        raise InvalidInputError(
            f"data source {source.source!r} ({source.objective}) gives no training examples "
            f"({dropped} dropped by the length filters)"
        )
    return SourceExamples(source, examples, dropped)


def _text_example(
    comp: Compressor, text, objective: str, loop, *, eos: bool = True
) -> TrainExample | None:
    """A continuation or autoencoding example of a text (or a window of its token ids);
    ``eos=False``: a continuation target without EOS (a window cut from a text stream)."""
    if objective == "continuation":
        return continuation_example(
            comp,
            text,
            min_tokens=loop.continuation_min_tokens,
            max_tokens=loop.continuation_max_tokens,
            context_fraction=loop.continuation_context_fraction,
            eos=eos,
        )
    return autoencoding_example(comp, text)


def _texts(source: DataSource, limit, seed, options) -> list[str]:
    """Plain texts for continuation/autoencoding (see ``ctxcompress.data.load_texts``)."""
    return [d.text for d in data_lib.load_texts(source.source, limit=limit, seed=seed, **options)]
