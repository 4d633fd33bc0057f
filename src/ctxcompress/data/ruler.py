"""RULER-style synthetic long-context QA, generated locally at a target token length.

RULER (Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language
Models?", 2024) ships its generators as scripts (in the ``nvidia-long-context-eval`` wheel)
that need ``wonderwords`` and ``nltk`` data, which cannot be installed here. This module is the
small equivalent, with the same needle, chain and document formats; what differs is said
below. Haystack and QA paragraphs come from the wheel's data files (:mod:`.standard`).

Spec ``ruler:<task>:<length>``, ``length`` = ``1k``, ``2k``, ``4k``, ``8k`` (or a token count):
the context text is filled to at most ``length - 64`` tokens of the given tokenizer (the 64
leave room for BOS, the context prefix, the question and the answer), and a length beyond the
model's positions is refused. Tasks:

- ``niah_single``: one needle ``"One of the special magic numbers for {key} is: {value}."``
  (a 7-digit value) in Paul Graham essays; asks for that key's number.
- ``niah_multikey``: four needles with different keys; asks for one (RULER's
  ``niah_multikey_1``).
- ``niah_multivalue``: four needles with the same key; asks for all four numbers.
- ``vt``: variable tracking — one chain ``VAR A = 12345``, ``VAR B = VAR A``, ... (4 hops) in
  repeated noise sentences; asks for every variable assigned the value: all five.
- ``qa_squad`` / ``qa_hotpotqa``: the gold paragraph(s) of a ``squad:test`` /
  ``hotpotqa:test`` item among distractor paragraphs of other test items (``Document i:``
  blocks, as RULER's qa task), filled to the length. ``split="train"`` (or ``"dev"``) draws
  question and distractors from that split instead: training data in the same format that
  shares no paragraph with the test items (there, an item whose gold paragraph alone exceeds
  the length is skipped; a test item never is).

Differences from RULER's scripts: keys are pairs of words drawn from the essays' vocabulary
(``"window-between"``) instead of wonderwords' adjective-noun pairs; essays are cut into
sentences with a regular expression instead of nltk's ``sent_tokenize``; every item starts the
haystack at its own random offset in the essays (RULER reuses the same start).

Options: ``num_samples`` (items generated, default 100; ``limit`` keeps the first N),
``tokenizer`` (a base-model spec, default the embedded model; ``"tiny"`` in tests),
``depth`` (0..1: every needle / gold document at that depth; default one of RULER's 40 evenly
spaced depths per item), ``split`` (qa tasks: ``test``, the default, ``dev`` or ``train``).
Items are a pure function of (task, length, index, ``seed``, which defaults to 0, and
``split``). ``meta``: ``task``, ``length``, ``tokens`` (the context's token count), ``split``,
``depth`` (the needle's / gold document's depth, 0..1), ``references`` (what the answer must
contain) and ``match`` (``"all"``: every reference, RULER's ``string_match_all``; ``"part"``:
any, its ``string_match_part``), scored by :func:`ctxcompress.evaluation.metrics.string_match`.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Callable
from typing import Any

from .records import DataError, QAExample
from .standard import _read, load_hotpotqa, load_squad

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "qa_squad", "qa_hotpotqa")
LENGTHS = {"1k": 1024, "2k": 2048, "4k": 4096, "8k": 8192}
RESERVE = 64
DEPTHS = [round(i / 39, 4) for i in range(40)]  # RULER: np.linspace(0, 100, 40)
NEEDLE = "One of the special magic numbers for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def parse_length(text: str) -> int:
    if text in LENGTHS:
        return LENGTHS[text]
    if text.isdigit() and int(text) > RESERVE:
        return int(text)
    raise DataError(
        f"ruler: unknown length {text!r}; use {', '.join(LENGTHS)} or a token count > {RESERVE}"
    )


@functools.lru_cache(maxsize=1)
def _essay_words() -> tuple[str, ...]:
    return tuple(re.sub(r"\s+", " ", _read("PaulGrahamEssays.json")["text"]).split(" "))


@functools.lru_cache(maxsize=1)
def _key_words() -> tuple[str, ...]:
    words = {w.lower() for w in _essay_words() if w.isalpha() and 4 <= len(w) <= 10}
    return tuple(sorted(words))


def _sentences(words: list[str]) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(words).strip()) if s]


def _key(rng: random.Random) -> str:
    words = _key_words()
    return f"{rng.choice(words)}-{rng.choice(words)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(10**6, 10**7 - 1))


# ----------------------------------------------------------------------------- items
# Each builder takes (rng, size, depth) and returns (context, question, references, match,
# depth); ``size`` is how much haystack to use (words, sentences or documents).
def _niah(keys: int, values: int):
    def build(rng: random.Random, size: int, depth: float | None):
        names = [_key(rng) for _ in range(keys)]
        needles = [(k, _number(rng)) for k in names for _ in range(values)]
        words = list(_essay_words())
        start = rng.randrange(max(1, len(words) - size))
        sentences = _sentences(words[start : start + size])
        depths = sorted(depth if depth is not None else rng.choice(DEPTHS) for _ in needles)
        order = list(range(len(needles)))
        rng.shuffle(order)
        for offset, (d, i) in enumerate(zip(depths, order, strict=True)):
            at = int(len(sentences) * d) if sentences else 0
            key, value = needles[i]
            sentences.insert(min(at + offset, len(sentences)), NEEDLE.format(key=key, value=value))
        asked = names[0]
        refs = [v for k, v in needles if k == asked]
        noun = "numbers" if len(refs) > 1 else "number"
        verb = "are all the" if len(refs) > 1 else "is the"
        question = f"What {verb} special magic {noun} for {asked} mentioned in the provided text?"
        return " ".join(sentences), question, refs, "all", depths[0]

    return build


def _variable_tracking(rng: random.Random, size: int, depth: float | None):
    hops = 4
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}."] + [
        f"VAR {names[j + 1]} = VAR {names[j]}." for j in range(hops)
    ]
    sentences = [s for s in re.split(r"(?<=\.)\s+", " ".join([NOISE] * size)) if s]
    if depth is not None:
        first = int(len(sentences) * depth)
        spots = sorted(min(first + j, len(sentences)) for j in range(len(chain)))
    else:
        spots = sorted(rng.sample(range(len(sentences) + 1), len(chain)))
    for j, (spot, assignment) in enumerate(zip(spots, chain, strict=True)):
        sentences.insert(spot + j, assignment)
    question = f"Find all variables that are assigned the value {value} in the text above."
    return " ".join(sentences), question, names, "all", spots[0] / max(1, len(sentences))


def _qa(source: str):
    def build(rng: random.Random, size: int, depth: float | None, split: str = "test"):
        items = _qa_items(source, split)
        item = items[rng.randrange(len(items))]
        gold = _paragraphs(item, source)
        pool = [p for other in items if other.id != item.id for p in _paragraphs(other, source)]
        docs = rng.sample(pool, min(size, len(pool)))
        at = int(len(docs) * (depth if depth is not None else rng.choice(DEPTHS)))
        docs[at:at] = gold
        context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
        return context, item.question, list(item.answers), "part", at / max(1, len(docs))

    return build


@functools.lru_cache(maxsize=4)
def _qa_items(source: str, split: str) -> tuple[QAExample, ...]:
    if source == "squad":
        return tuple(load_squad(split))
    return tuple(load_hotpotqa(split, num_distractors=0))  # gold paragraphs only


def _paragraphs(item: QAExample, source: str) -> list[str]:
    return [item.context] if source == "squad" else item.context.split("\n\n")


BUILDERS: dict[str, tuple[Callable[..., Any], int]] = {
    # task: (builder, haystack units per 1k tokens: a starting guess for the search)
    "niah_single": (_niah(1, 1), 700),
    "niah_multikey": (_niah(4, 1), 700),
    "niah_multivalue": (_niah(1, 4), 700),
    "vt": (_variable_tracking, 40),
    "qa_squad": (_qa("squad"), 6),
    "qa_hotpotqa": (_qa("hotpotqa"), 9),
}


def load_ruler(
    spec: str,
    *,
    limit: int | None = None,
    seed: int | None = None,
    num_samples: int = 100,
    tokenizer: str | None = None,
    depth: float | None = None,
    split: str = "test",
) -> list[QAExample]:
    """``ruler:TASK:LENGTH`` (see the module docstring)."""
    from ..models import load_tokenizer

    task, _, length_text = spec.partition(":")
    if task not in BUILDERS:
        raise DataError(f"ruler: unknown task {task!r}; use one of {', '.join(TASKS)}")
    length = parse_length(length_text)
    if depth is not None and not 0 <= depth <= 1:
        raise DataError(f"ruler: depth must lie in [0, 1], got {depth}")
    if split not in ("train", "dev", "test"):
        raise DataError(f"ruler: split must be train, dev or test, got {split!r}")
    if split != "test" and not task.startswith("qa_"):
        raise DataError(
            f"ruler:{task}: split applies to the qa tasks only (their paragraphs come from a "
            "split); for other needle items use another seed"
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise DataError(f"ruler: num_samples must be an int >= 1, got {num_samples!r}")
    tok, positions = load_tokenizer(tokenizer)
    if length > positions:
        raise DataError(
            f"ruler:{spec}: {length} tokens is beyond the model's {positions} positions; "
            "use a shorter length or a model with a longer context"
        )
    build, per_1k = BUILDERS[task]
    if split != "test":
        build = functools.partial(build, split=split)
    budget = length - RESERVE
    # Test items keep the seeds they had before splits existed; other splits get their own.
    tag = f"{seed or 0}" if split == "test" else f"{seed or 0}:{split}"

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False).input_ids)

    def fill(rng_seed: str, size: int) -> tuple[tuple, int, int]:
        """The item with the most haystack (at most ``size``) that fits the budget."""
        while True:
            made = build(random.Random(rng_seed), size, depth)
            tokens = count(made[0])
            if tokens <= budget:  # fits: take more haystack while it still does
                step = max(1, size // 50)
                while True:
                    more = build(random.Random(rng_seed), size + step, depth)
                    more_tokens = count(more[0])
                    if more_tokens > budget:
                        return made, tokens, size
                    made, tokens, size = more, more_tokens, size + step
            if size == 0:
                raise DataError(
                    f"ruler:{spec}: item {rng_seed.rsplit(':', 1)[-1]} does not fit in {budget} "
                    "tokens even without any haystack; use a longer length"
                )
            size = max(0, min(size - 1, int(size * budget / tokens * 0.99)))

    # Calibrate the haystack size once, then fit each item from there.
    _, _, size = fill(f"ruler:{task}:{length}:{tag}:calibration", per_1k * budget // 1000)
    n = min(num_samples, limit) if limit is not None else num_samples
    out = []
    index = -1
    while len(out) < n:
        index += 1
        try:
            made, tokens, _ = fill(f"ruler:{task}:{length}:{tag}:{index}", size)
        except DataError:
            if split == "test" or index > 10 * n:
                raise
            continue  # training data: an item whose gold alone is too long is skipped
        context, question, refs, match, where = made
        meta = {
            "source": "ruler",
            "task": task,
            "length": length,
            "tokens": tokens,
            "depth": where,
            "references": refs,
            "match": match,
            "split": split,
        }
        name = f"{spec}:{index}" if split == "test" else f"{spec}:{split}:{index}"
        out.append(QAExample(context, question, tuple(refs), name, meta))
    return out


__all__ = ["LENGTHS", "TASKS", "load_ruler", "parse_length"]
