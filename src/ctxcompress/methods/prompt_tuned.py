"""Prompt-tuned bounds: the hard baselines, trained with the compressors' budget.

A zero-shot hard baseline is no fair bound for a trained compressor: the trained methods
also learn an ``[LM]`` embedding that teaches the frozen decoder the answer format, which
the zero-shot model never gets (it answers NQ questions in whole sentences). Here the
frozen model reads the kept context tokens as an ordinary prompt (contiguous positions, its
own KV cache), and only a soft prompt is trained — ``prompt_vectors`` learned vectors and
the ``[LM]`` embedding between the context and the question (prompt tuning: Lester et al.,
"The Power of Scale for Parameter-Efficient Prompt Tuning", arXiv 2104.08691):

* ``context="full"``: the whole context — the upper bound of the fair comparison;
* ``context="truncation"``: its head (or head and tail) cut to the compressors' budget at
  the same ratio, exactly as :class:`~ctxcompress.methods.hard.Truncation`;
* ``context="none"``: the question alone — the lower bound.

With ``lora_rank > 0`` the kept tokens are encoded by a LoRA encoder of their own (causal,
as an ordinary prompt) and the frozen decoder reads that KV: *trained truncation*, the
strong baseline of the fair-comparison issue (the head of the context, encoded by the same
kind of LoRA encoder as SAC and trained the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..errors import InvalidInputError
from ..models import BaseModel
from .hard import Truncation, TruncationConfig


@dataclass
class PromptTunedConfig(TruncationConfig):
    """A hard baseline plus a learned soft prompt (and optionally a LoRA encoder).

    ``truncation`` and ``prefix_in_budget`` (from :class:`TruncationConfig`) apply with
    ``context="truncation"``."""

    context: Literal["full", "truncation", "none"] = "full"
    """What the frozen model reads: the whole context, its truncation, or nothing."""
    prompt_vectors: int = 8
    """Learned prompt vectors placed before ``[LM]`` (0: ``[LM]`` alone)."""
    prompt_init: Literal["vocab", "random"] = "vocab"
    """Start prompt vectors from the embeddings of random vocabulary tokens (Lester et
    al.'s better initialisation) or from N(0, init_std)."""
    lora_rank: int = 0
    """0: the frozen model reads the kept tokens. > 0: a LoRA encoder encodes them."""
    adapter_allowed: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        if self.prompt_vectors < 0:
            raise InvalidInputError(f"prompt_vectors must be >= 0, got {self.prompt_vectors}")


class PromptTuned(Truncation):
    """Full context / truncation / no context with a learned soft prompt before the question."""

    method = "prompt_tuned"
    config_class = PromptTunedConfig
    config: PromptTunedConfig
    uses_lm_token = True

    def __init__(self, base: BaseModel, config: PromptTunedConfig | None = None) -> None:
        super().__init__(base, config or PromptTunedConfig())
        n = self.config.prompt_vectors
        self.prompt_embedding = nn.Parameter(self._initial_prompt(n)) if n else None

    def _initial_prompt(self, n: int) -> torch.Tensor:
        if self.config.prompt_init == "random":
            return self._normal(n, self.lm.config.hidden_size)
        table = self.lm.get_input_embeddings().weight
        tokens = torch.randint(0, table.shape[0], (n,), generator=self.generator)
        return table.detach()[tokens.to(table.device)].clone()

    def decoder_opener(self, task: str) -> torch.Tensor | None:
        opener = super().decoder_opener(task)
        if task != "lm" or self.prompt_embedding is None or opener is None:
            return opener
        return torch.cat([self.prompt_embedding, opener])

    def keep(self, ids: Sequence[int]) -> list[int]:
        if self.config.context == "full":
            return list(ids)
        if self.config.context == "none":
            return []
        return super().keep(ids)

    def compressed_length(self, length: int) -> int:
        if self.config.context == "full":
            return length
        if self.config.context == "none":
            return 0
        return super().compressed_length(length)
