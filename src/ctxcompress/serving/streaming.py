"""Streaming answers: token ids to text deltas that never need taking back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- streaming text


class TextStream:
    """Turns generated token ids into text deltas whose concatenation is the final answer.

    The final answer is the decoded text cut at the first stop string and stripped, so a
    delta is emitted only for text that can no longer change: leading and trailing whitespace,
    an incomplete UTF-8 character and a possible beginning of a stop string are held back.

    Decoding is incremental (the detokenizer of vLLM and text-generation-inference): each new
    token decodes only a short window of the last ids — from ``_prefix``, a point whose text
    is final, to the end — and the text gained over the window without its newest tokens is
    appended once it is no longer an incomplete character. A whole answer costs linear
    decoding work, not one full decode per token.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""  # the decoded text of ids[:_read]
        self._prefix = 0  # the window starts here: ids[_prefix:_read] decode to a text suffix
        self._read = 0
        self.sent = ""

    def _settled(self, text: str) -> str:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            return text[: min(hits)].strip()
        while text.endswith("\ufffd"):
            text = text[:-1]
        # Hold back a possible beginning of a stop string on the raw text: a stop may start
        # with whitespace that stripping would hide ("\r00" with the stop "\r00").
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return text[: len(text) - hold].strip()

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.decode(self.ids[self._prefix : self._read])
        after = self.decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._advance(self._settled(self.text))

    def finish(self, final: str) -> str:
        delta = self._advance(final)
        if self.sent != final:
            log.warning("streamed text diverged from the final answer: %r vs %r", self.sent, final)
        return delta

    def _advance(self, settled: str) -> str:
        if len(settled) > len(self.sent) and settled.startswith(self.sent):
            delta = settled[len(self.sent) :]
            self.sent = settled
            return delta
        return ""
