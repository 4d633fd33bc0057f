"""The SQuAD / MRQA answer normalisation: the one source for the metrics and for the data
loaders that check whether a passage contains an answer."""

from __future__ import annotations

import re
import string

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Normalise an answer exactly as the official SQuAD v1.1 / MRQA evaluation scripts do.

    The steps and their order are the official ones:
    ``white_space_fix(remove_articles(remove_punc(lower(s))))``, i.e.

    1. ``str.lower()``;
    2. delete every character in ``string.punctuation`` (ASCII only: ``"1,000"`` becomes
       ``"1000"``, ``"A-Team"`` becomes ``"ateam"``; typographic quotes/dashes such as
       ``"“"`` or ``"—"`` are *kept*, as in the official script);
    3. replace the articles ``a``, ``an``, ``the`` by a space where they are whole words
       (regex ``\\b(a|an|the)\\b``, so ``"theater"`` keeps its ``"the"``);
    4. collapse runs of whitespace to one space and strip the ends (``" ".join(s.split())``).

    Non-ASCII letters are untouched (``"Röntgen"`` -> ``"röntgen"``); no Unicode
    normalisation (NFC/NFKC) is applied, again as in the official script.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())
