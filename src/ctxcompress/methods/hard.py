"""Hard baselines, no training: full context (upper bound), no context (lower bound) and
truncation to the same token budget as the compressors (METHODS.md §3).

Each "compresses" into the frozen model's own KV cache of the tokens it keeps, read as an
ordinary prompt: contiguous positions from ``position_start`` (default 0), no ``[LM]`` token.
Truncation keeps exactly as many document tokens as the learned methods keep entries at the
same ratio (``positions.memory_slots`` per chunk), from the head, from the tail
(``truncation="tail"``: the most recent tokens, what a continuation reads on from) or half
from the head and half from the tail (``truncation="head_tail"``); the prompt prefix is kept
whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..context import CompressedContext
from ..errors import InvalidInputError
from ..positions import chunk_spans, memory_slots
from .base import Compressor
from .config import CompressorConfig
from .encoding import prefill_kv


@dataclass
class HardConfig(CompressorConfig):
    """Options of the hard baselines (no adapter, plain prompt positions)."""

    lora_rank: int = 0
    position_start: int = 0
    adapter_allowed: ClassVar[bool] = False
    """Whether ``lora_rank > 0`` is allowed (the prompt-tuned bounds' trained truncation)."""

    def validate(self) -> None:
        if (self.lora_rank or self.decoder_lora_rank) and not self.adapter_allowed:
            raise InvalidInputError(
                "hard baselines have no adapter: lora_rank and decoder_lora_rank must be 0 "
                "(a trained baseline with adapters is method prompt_tuned)"
            )
        super().validate()
        if self.sink_tokens:
            raise InvalidInputError(
                "sink_tokens is for the learned compressors: the hard baselines and the "
                "prompt-tuned bounds already read the head of the context as it is"
            )


@dataclass
class TruncationConfig(HardConfig):
    truncation: Literal["head", "tail", "head_tail"] = "head"
    """Keep the head of the context, its tail, or half the budget from the head and half from
    the tail."""
    prefix_in_budget: bool = False
    """False: the prompt prefix is kept on top of the document budget. True: it counts against
    the budget, so exactly as many entries are kept as a compressor keeps for the whole
    tokenized context (equal C, for trained comparisons)."""


class HardBaseline(Compressor):
    """Shared mechanics: the frozen model's KV cache of the kept tokens."""

    config_class = HardConfig
    uses_lm_token = False
    min_ratio = 1  # nothing learned per slot: a budget may keep more than config.ratio does

    def keep(self, ids: Sequence[int]) -> list[int]:
        """The token ids this baseline keeps, in order."""
        raise NotImplementedError

    def compressed_length(self, length: int) -> int:
        return len(self.keep(range(length)))

    def encode_ids(self, contexts: Sequence[Sequence[int]]) -> list[CompressedContext]:
        kept = [self.keep(ids) for ids in contexts]
        with self.encoder_mode():
            kv = prefill_kv(
                self.lm, kept, self.config.position_start, self.config.encoder_batch_size
            )
        out = []
        for ids, kept_ids, (k, v) in zip(contexts, kept, kv, strict=True):
            positions = torch.arange(len(kept_ids)) + self.config.position_start
            out.append(self._new_context(len(ids), keys=k, values=v, positions=positions))
        return out


class FullContext(HardBaseline):
    """Upper bound: the frozen model reads the whole context."""

    method = "full_context"

    def keep(self, ids: Sequence[int]) -> list[int]:
        return list(ids)


class NoContext(HardBaseline):
    """Lower bound: the frozen model answers from the question alone."""

    method = "no_context"

    def keep(self, ids: Sequence[int]) -> list[int]:
        return []


class Truncation(HardBaseline):
    """The context cut to the learned methods' budget at the same ratio.

    The prompt prefix (BOS and ``context_prefix``, e.g. a chat template's system turn) is
    layout, not context: it is kept whole, and the budget is computed on, and spent on, the
    document's own tokens.
    """

    method = "truncation"
    config_class = TruncationConfig
    config: TruncationConfig

    def budget(self, length: int) -> int:
        """Tokens kept of a document of ``length`` tokens (= the learned methods' entries)."""
        if length == 0:
            return 0
        spans = chunk_spans(length, self.config.chunk_size)
        return sum(memory_slots(e - s, self.ratio) for s, e in spans)

    def _prefix_length(self, ids: Sequence[int]) -> int:
        prefix = self.context_prefix_ids()
        return len(prefix) if list(ids[: len(prefix)]) == prefix else 0

    def _body_budget(self, length: int, prefix: int) -> int:
        if self.config.prefix_in_budget:
            return max(0, self.budget(length) - prefix)
        return self.budget(length - prefix)

    def compressed_length(self, length: int) -> int:
        """Entries kept of a tokenized context of ``length`` tokens (prefix included)."""
        n = min(len(self.context_prefix_ids()), length)
        return n + self._body_budget(length, n)

    def keep(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        n = self._prefix_length(ids)
        prefix, body = ids[:n], ids[n:]
        budget = self._body_budget(len(ids), n)
        if self.config.truncation == "head":
            return prefix + body[:budget]
        if self.config.truncation == "tail":
            return prefix + body[len(body) - budget :]
        head = (budget + 1) // 2
        return prefix + body[:head] + body[len(body) - (budget - head) :]
