"""ACLSum (Takeshita et al., NAACL 2024): 250 ACL papers, each with three human-written
summaries, one per aspect (challenge, approach, outcome). Read from the PyPI package ``aclsum``
(``pip install aclsum``), which ships the whole data set inside the wheel (split files plus an
S2ORC full-text parse of every paper), so it works offline once installed.

Splits: ``train`` (100 papers), ``validation`` (50; also ``val``/``dev``), ``test`` (100).

Document text (``source=``):

- ``"sections"``: the data set's own input — abstract, introduction and conclusion, from the
  package's sentence segmentation (the sentences the annotators highlighted). The package's
  sentences are space-tokenised (``"paper , we"``); a light detokeniser removes the spaces
  before ``, . ; : ? ! ) ] %`` and ``'s``/``n't`` and after ``( [``. Sections are separated by
  a blank line and start with their name. Median ~960 words.
- ``"abstract"``: the title and abstract only (the same sentences; ~150-250 words), a short
  context for quick CPU runs such as ``make demo``.
- ``"fulltext"``: the whole paper from the S2ORC parse (untokenised): abstract and every body
  paragraph, with a heading line (``"3 Method"``) whenever the section changes. Figure and table
  captions and the bibliography are left out. Median ~4,400 words, up to ~19,000.

Both start with the paper's title as the first line (``title=False`` drops it).
:func:`load_aclsum_summaries` (``load_summarization("aclsum:SPLIT")``) defaults to
``"sections"``; :func:`load_aclsum_texts` (``load_texts``) defaults to ``"fulltext"``. A
summarisation example per (paper, aspect), id ``"<paper id>:<aspect>"``, in paper order then
aspect order; ``aspects=`` selects some.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ._common import take
from .records import DataError, SummarizationExample, TextDocument

ASPECTS = ("challenge", "approach", "outcome")
SECTIONS = ("abstract", "introduction", "conclusion")
SOURCES = ("sections", "abstract", "fulltext")
_SPLITS = {"train": "train", "validation": "val", "val": "val", "dev": "val", "test": "test"}


def _papers(split: str) -> list[Any]:
    if split not in _SPLITS:
        raise DataError(f"aclsum:{split!r}: unknown split; use aclsum:train|validation|test")
    try:
        import aclsum
    except ImportError as e:
        raise DataError(
            "aclsum: the ACLSum data set comes from the PyPI package 'aclsum'; "
            "install it with `pip install aclsum`"
        ) from e
    try:
        return list(aclsum.ACLSum(_SPLITS[split]))
    except Exception as e:  # the package's own reader: missing or broken files
        raise DataError(f"aclsum:{split}: the installed package cannot read its data ({e})") from e


_SPACE_BEFORE = re.compile(r" +([,.;:?!%)\]}]|'s\b|n't\b|'re\b|'ve\b|'ll\b|'d\b|'m\b)")
_SPACE_AFTER = re.compile(r"([(\[{]) +")


def detokenize(text: str) -> str:
    """Undo the package's space tokenisation around punctuation (lightly; quotes stay)."""
    return _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))


def sections_text(paper: Any, title: bool = True, sections: Sequence[str] = SECTIONS) -> str:
    """Abstract, introduction and conclusion from the package's sentences (see the module doc)."""
    parts = [paper.title.strip()] if title and paper.title else []
    for section in sections:
        sentences = [s.strip() for s in paper.sentences.get(section, []) if s.strip()]
        if sentences:
            parts.append(section.capitalize() + "\n" + detokenize(" ".join(sentences)))
    return "\n\n".join(parts)


def fulltext(paper: Any, title: bool = True) -> str:
    """The paper's S2ORC full text: abstract, then body paragraphs under section headings."""
    try:
        parse = paper.get_fulltext_parse()
    except Exception as e:
        raise DataError(f"aclsum: no full-text parse for paper {paper.id} ({e})") from e
    pdf = parse.get("pdf_parse") or {}
    parts = [paper.title.strip()] if title and paper.title else []
    abstract = [p["text"].strip() for p in pdf.get("abstract", []) if p.get("text", "").strip()]
    if not abstract and isinstance(parse.get("abstract"), str) and parse["abstract"].strip():
        abstract = [parse["abstract"].strip()]
    if abstract:
        parts.append("Abstract\n" + "\n\n".join(abstract))
    section = None
    for para in pdf.get("body_text", []):
        text = (para.get("text") or "").strip()
        if not text:
            continue
        heading = " ".join(x for x in (para.get("sec_num") or "", para.get("section") or "") if x)
        if heading != section:
            section = heading
            if heading:
                text = heading + "\n" + text
        parts.append(text)
    if len(parts) <= int(bool(title and paper.title)):
        raise DataError(f"aclsum: the full-text parse of paper {paper.id} has no text")
    return "\n\n".join(parts)


def _document(paper: Any, source: str, title: bool) -> str:
    if source not in SOURCES:
        raise DataError(f"aclsum: source={source!r} is not one of {', '.join(SOURCES)}")
    if source == "fulltext":
        return fulltext(paper, title)
    return sections_text(paper, title, SECTIONS if source == "sections" else ("abstract",))


def load_aclsum_summaries(
    split: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    source: str = "sections",
    aspects: str | Sequence[str] = ASPECTS,
    title: bool = True,
) -> list[SummarizationExample]:
    """``aclsum:SPLIT`` as summarisation examples, one per (paper, aspect)."""
    wanted = (aspects,) if isinstance(aspects, str) else tuple(aspects)
    bad = [a for a in wanted if a not in ASPECTS]
    if bad or not wanted:
        raise DataError(f"aclsum: aspects={aspects!r}; choose from {', '.join(ASPECTS)}")
    out = []
    for paper in _papers(split):
        document = _document(paper, source, title)
        for aspect in wanted:
            summary = paper.summaries.get(aspect)
            if not isinstance(summary, str) or not summary.strip():
                raise DataError(f"aclsum:{split}: paper {paper.id} has no {aspect} summary")
            out.append(
                SummarizationExample(
                    document=document,
                    summary=summary.strip(),
                    aspect=aspect,
                    id=f"{paper.id}:{aspect}",
                    meta={
                        "source": "aclsum",
                        "split": split,
                        "paper_id": paper.id,
                        "title": paper.title,
                    },
                )
            )
    return take(out, limit, seed)


def load_aclsum_texts(
    split: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    source: str = "fulltext",
    title: bool = True,
) -> list[TextDocument]:
    """``aclsum:SPLIT`` as documents: each paper's full text (or its three sections)."""
    papers = take(_papers(split), limit, seed)
    return [
        TextDocument(
            text=_document(p, source, title),
            id=p.id,
            meta={"source": "aclsum", "split": split, "title": p.title},
        )
        for p in papers
    ]
