"""SAC — Semantic-Anchor Compression (Liu et al., arXiv 2510.08907, ICLR 2026).

Some of the context's own tokens become *anchors*: the centre token of every r-token segment.
Each anchor gets a learned *anchor embedding* added to its token embedding, the LoRA encoder
attends *bidirectionally* within each 510-token chunk (chunks encoded independently, as one
batch, with their global 1-based positions), and the anchors' per-layer keys (after RoPE) and
values are the compressed context. The frozen decoder (same weights, adapter off) reads them
as its KV cache, then a learned ``[LM]`` embedding at position L and the question.
No autoencoding, no appended memory tokens. See METHODS.md §1.

Every choice the paper ablates is a switch: ``encoder_attention`` ("bidirectional" | "causal"),
``anchor_embedding`` ("per_slot" as in the released code | "shared" as in the paper | "none"),
``anchor_selection`` ("uniform" | "random"), and beyond the paper (issue 38, lever 1) anchors
chosen by the frozen model's own scores ("surprisal" | "importance") or by a learned scorer
that imitates one of them ("learned"; :mod:`.anchor_scores`), or the chunk's first tokens
("head": the tokens head truncation keeps, each reading the whole chunk): the same count per
chunk (the budget), each at its original position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..context import CompressedContext
from ..errors import InvalidInputError
from ..masks import padded_chunk_mask
from ..models import BaseModel, cache_kwargs
from ..positions import chunk_spans, random_anchor_offsets, sac_anchor_offsets, sink_count
from ..windows import attention_mask, new_cache
from .anchor_scores import (
    RECONSTRUCTION_PROMPT,
    frozen_hidden,
    imitation_loss,
    reconstruction_importance,
    surprisal,
    top_scoring_offsets,
)
from .base import Compressor
from .config import CompressorConfig
from .encoding import (
    encode_in_length_batches,
    gather_cache_entries,
    packed_rows,
    right_padded,
)


@dataclass
class SACConfig(CompressorConfig):
    """SAC options (defaults: the authors' released code)."""

    anchor_embedding: Literal["per_slot", "shared", "none"] = "per_slot"
    """One learned vector per anchor slot of a chunk (code), one shared vector (paper), or none."""
    anchor_selection: Literal["uniform", "random", "head", "surprisal", "importance", "learned"] = (
        "uniform"
    )
    """Where a chunk's anchors sit (always as many as the segment centres, at their own
    positions): the segment centres (default, the paper), random tokens (ablation), the
    chunk's first tokens after the sink ("head": with ``encoder_attention="causal"`` and the
    adapter off, exactly the entries head truncation keeps; bidirectional, each can also carry
    what follows it), the tokens the frozen model finds most surprising, those KVzip's context
    reconstruction attends to most, or the top scores of a learned linear scorer on the frozen
    model's hidden states (:mod:`.anchor_scores`; one extra frozen pass over the text, twice
    it for "importance")."""
    anchor_scorer_target: Literal["importance", "surprisal"] = "importance"
    """``learned`` only: the signal the scorer learns to imitate. While training, anchors sit
    at this signal's top tokens (the compressor learns with good anchors from step 0) and the
    scorer is fitted to it; outside training the scorer alone chooses."""
    anchor_scorer_weight: float = 1.0
    """``learned`` only: weight of the scorer's imitation loss (per target token)."""
    encoder_attention: Literal["bidirectional", "causal"] = "bidirectional"
    """Attention inside an encoder chunk; "causal" is the paper's ablation."""
    encoder_attention_warmup_steps: int = 0
    """Training only: encode causally for the first N optimizer steps, then with
    ``encoder_attention`` (a warm start from the attention the base model was pretrained
    with; METHODS.md §7). Compression outside training always uses ``encoder_attention``."""

    def validate(self) -> None:
        super().validate()
        if not (
            isinstance(self.anchor_scorer_weight, int | float) and self.anchor_scorer_weight >= 0
        ):
            raise InvalidInputError(
                f"anchor_scorer_weight must be a number >= 0, got {self.anchor_scorer_weight!r}"
            )
        steps = self.encoder_attention_warmup_steps
        if not isinstance(steps, int) or steps < 0:
            raise InvalidInputError(
                f"encoder_attention_warmup_steps must be an integer >= 0, got {steps!r}"
            )


@dataclass
class _Chunk:
    doc: int
    start: int  # token index of the chunk's first token in its document
    ids: list[int]
    anchors: list[int]  # offsets within the chunk


class SACCompressor(Compressor):
    """Semantic-Anchor Compression: anchors' per-layer KV as the compressed context."""

    method = "sac"
    config_class = SACConfig
    context_kind = "kv"
    supports_extension = True
    config: SACConfig

    def __init__(self, base: BaseModel, config: SACConfig | None = None) -> None:
        super().__init__(base, config or SACConfig())
        hidden = self.lm.config.hidden_size
        slots = {"per_slot": self.anchors_per_chunk, "shared": 1, "none": 0}
        n = slots[self.config.anchor_embedding]
        self.anchor_embedding = nn.Parameter(self._normal(n, hidden)) if n else None
        self.anchor_scorer: nn.Linear | None = None
        if self.config.anchor_selection == "learned":
            self.anchor_scorer = nn.Linear(hidden, 1, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                self.anchor_scorer.weight.copy_(self._normal(1, hidden))
                self.anchor_scorer.bias.zero_()
        self._pending_auxiliary: torch.Tensor | None = None

    def first_decoder_position(self, ctx: CompressedContext) -> int:
        """``[LM]`` takes position L (+ ``decoder_position_offset``), whatever C is."""
        return ctx.original_length + self.config.decoder_position_offset

    @property
    def encoder_attention(self) -> str:
        """The encoder mask now: causal during the training warm-up, else the configured one."""
        if self.training and self.training_step < self.config.encoder_attention_warmup_steps:
            return "causal"
        return self.config.encoder_attention

    @property
    def lowest_training_ratio(self) -> int:
        """Per-slot anchor embeddings exist for the trained ratio's anchors only; a shared
        one (or none) fits any count, down to ratio 1 (every token an anchor)."""
        return self.config.ratio if self.config.anchor_embedding == "per_slot" else 1

    @property
    def anchors_per_chunk(self) -> int:
        """Anchors in a full chunk: the number of per-slot anchor embeddings."""
        return len(sac_anchor_offsets(self.config.chunk_size, self.config.ratio))

    def compressed_length(self, length: int) -> int:
        """Anchors kept for a context of ``length`` tokens (the compressed length)."""
        spans = chunk_spans(length, self.config.chunk_size)  # sink tokens count inside
        return sum(len(sac_anchor_offsets(e - s, self.ratio)) for s, e in spans)

    def anchor_offsets(
        self, chunk_start: int, chunk_len: int, scores: torch.Tensor | None = None
    ) -> list[int]:
        """Anchor offsets inside the chunk starting at token index ``chunk_start`` (the first
        chunk's sink tokens, if any, take the place of its first anchors). The scored
        selections take the chunk's token ``scores`` (:meth:`token_scores`)."""
        sink = self.config.sink_tokens if chunk_start == 0 else 0
        selection = self.config.anchor_selection
        if selection == "uniform":
            return sac_anchor_offsets(chunk_len, self.ratio, sink)
        if selection == "head":
            first = sink_count(chunk_len, self.ratio, sink) if sink else 0
            count = len(sac_anchor_offsets(chunk_len, self.ratio, sink))
            return list(range(first, first + count))
        if selection == "random":
            # Random anchors are seeded by the chunk's place, so a document gets the same
            # anchors whatever it is batched with.
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + chunk_start)
            return random_anchor_offsets(chunk_len, self.ratio, generator, sink)
        if scores is None or len(scores) != chunk_len:
            raise ValueError(f"anchor_selection={selection!r} needs the chunk's token scores")
        count = len(sac_anchor_offsets(chunk_len, self.ratio, sink))
        first = sink_count(chunk_len, self.ratio, sink) if sink else 0
        return top_scoring_offsets(scores, count, first)

    def token_scores(self, contexts: Sequence[Sequence[int]]) -> list[torch.Tensor] | None:
        """Each context token's score for the scored anchor selections (None for "uniform"
        and "random"): its surprisal or reconstruction importance under the frozen model
        (:mod:`.anchor_scores`), or the learned scorer's output — in training, the signal it
        imitates, its imitation loss kept for :meth:`pop_auxiliary_loss`."""
        selection = self.config.anchor_selection
        if selection in ("surprisal", "importance"):
            return self._frozen_signal(selection, contexts)
        if selection != "learned" or self.anchor_scorer is None:
            return None
        with torch.no_grad(), self.frozen_mode():
            features = frozen_hidden(self.lm, contexts, self.config.position_start)
        scorer = self.anchor_scorer
        predicted = [scorer(f.to(scorer.weight.dtype)).squeeze(-1) for f in features]
        if not (self.training and torch.is_grad_enabled()):
            return [p.detach().float().cpu() for p in predicted]
        target = self._frozen_signal(self.config.anchor_scorer_target, contexts, features)
        self._pending_auxiliary = self.config.anchor_scorer_weight * imitation_loss(
            predicted, target
        )
        return target

    def _frozen_signal(
        self,
        kind: str,
        contexts: Sequence[Sequence[int]],
        hidden_states: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """The frozen model's surprisal or importance per token (``hidden_states``: its last
        hidden states of ``contexts``, if already computed, spare surprisal a second pass)."""
        start = self.config.position_start
        with torch.no_grad(), self.frozen_mode():
            if kind == "surprisal":
                return surprisal(self.lm, contexts, start, hidden_states)
            prompt = self._encode(RECONSTRUCTION_PROMPT)
            return reconstruction_importance(
                self.lm, contexts, prompt, start, self.config.chunk_size
            )

    def pop_auxiliary_loss(self) -> torch.Tensor | None:
        """The learned scorer's imitation loss of the last training encode (once)."""
        pending, self._pending_auxiliary = self._pending_auxiliary, None
        return pending

    def _plan(self, contexts: Sequence[Sequence[int]], starts: Sequence[int]) -> list[_Chunk]:
        """The chunks to encode (document ``d``'s first token is token ``starts[d]`` of its
        text); a first chunk whose whole budget went to sink tokens has no anchors and is
        not encoded."""
        scores = self.token_scores(contexts)
        chunks = []
        for doc, (ids, first) in enumerate(zip(contexts, starts, strict=True)):
            for start, end in chunk_spans(len(ids), self.config.chunk_size):
                part = None if scores is None else scores[doc][start:end]
                offsets = self.anchor_offsets(first + start, end - start, part)
                if offsets:
                    chunks.append(_Chunk(doc, first + start, list(ids[start:end]), offsets))
        return chunks

    def encode_ids(
        self, contexts: Sequence[Sequence[int]], starts: Sequence[int] | None = None
    ) -> list[CompressedContext]:
        """Compress tokenized contexts (with gradients unless called under no_grad).

        ``starts[d]``: where in its text document ``d`` begins (default 0). A continuation
        (``starts[d] > 0``, :mod:`.extension`) is encoded with the global positions and chunk
        places it has in the whole text, and has no sink (that belongs to the text's start);
        its context stands for the whole text up to its end."""
        starts = list(starts) if starts is not None else [0] * len(contexts)
        chunks = self._plan(contexts, starts)
        sinks = self.sink_kv([[] if s else ids for ids, s in zip(contexts, starts, strict=True)])
        size = self.config.chunk_size
        rows = packed_rows([len(c.ids) for c in chunks], size + size // 4, size // 4)
        with self.encoder_mode():
            per_row = encode_in_length_batches(
                [[chunks[i] for i in row] for row in rows],
                self.config.encoder_batch_size,
                lambda row: sum(len(c.ids) for c in row),
                self._encode_rows,
            )
        per_chunk: list = [None] * len(chunks)
        for row, pairs in zip(rows, per_row, strict=True):
            for i, pair in zip(row, pairs, strict=True):
                per_chunk[i] = pair
        out = []
        for doc, (ids, first) in enumerate(zip(contexts, starts, strict=True)):
            doc_chunks = [i for i, c in enumerate(chunks) if c.doc == doc]
            sink_k, sink_v = sinks[doc]
            anchors = [
                chunks[i].start + a + self.config.position_start
                for i in doc_chunks
                for a in chunks[i].anchors
            ]
            positions = torch.cat(
                [self.sink_positions(sink_k.shape[2]), torch.tensor(anchors, dtype=torch.long)]
            )
            k = torch.cat([sink_k, *(per_chunk[i][0].permute(1, 2, 0, 3) for i in doc_chunks)], 2)
            v = torch.cat([sink_v, *(per_chunk[i][1].permute(1, 2, 0, 3) for i in doc_chunks)], 2)
            context = self._new_context(first + len(ids), keys=k, values=v, positions=positions)
            out.append(context)
        return out

    def _encode_rows(
        self, rows: list[list[_Chunk]]
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """One encoder pass over a batch of rows, each one chunk or several packed one after
        another (each attending only to itself: the ``segments`` of the mask); returns each
        chunk's anchor K and V, row by row."""
        device = self.device
        start = self.config.position_start
        row_ids = [[t for c in row for t in c.ids] for row in rows]
        ids, valid = right_padded(row_ids, self.tokenizer.pad_token_id or 0)
        width = ids.shape[1]
        positions = torch.empty(len(rows), width, dtype=torch.long)
        segments = torch.zeros(len(rows), width, dtype=torch.long)
        rows_at, cols, slots = [], [], []
        for r, row in enumerate(rows):
            at = 0
            for segment, chunk in enumerate(row):
                n = len(chunk.ids)
                positions[r, at : at + n] = torch.arange(chunk.start, chunk.start + n) + start
                segments[r, at : at + n] = segment
                rows_at += [r] * len(chunk.anchors)
                cols += [at + a for a in chunk.anchors]
                slots += list(range(len(chunk.anchors)))
                at += n
            # Padding continues the last chunk's positions (a windowed layer then still
            # finds real keys for it) and belongs to no chunk.
            last = int(positions[r, at - 1])
            positions[r, at:] = torch.arange(last + 1, last + 1 + width - at)
            segments[r, at:] = -1
        valid = valid.bool().to(device)
        positions, segments = positions.to(device), segments.to(device)
        rows_t = torch.tensor(rows_at, device=device)
        cols_t = torch.tensor(cols, device=device)
        slots_t = torch.tensor(slots, device=device)

        embeds = self.lm.get_input_embeddings()(ids.to(device))
        if self.anchor_embedding is not None:
            index = slots_t if len(self.anchor_embedding) > 1 else 0 * slots_t
            marks = self.anchor_embedding[index]
            embeds = embeds.index_put((rows_t, cols_t), marks.to(embeds.dtype), accumulate=True)
        packed = any(len(row) > 1 for row in rows)
        allowed = padded_chunk_mask(valid, self.encoder_attention, segments if packed else None)
        mask = attention_mask(self.lm.config, allowed, positions, positions, embeds.dtype)
        cache = new_cache(self.lm.config)
        self.backbone(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(cache),
            use_cache=True,
        )
        keys, values = gather_cache_entries(cache, rows_t, cols_t)  # [N, layers, heads, dim]
        counts = [len(c.anchors) for row in rows for c in row]
        pairs = list(zip(keys.split(counts), values.split(counts), strict=True))
        out, at = [], 0
        for row in rows:
            out.append(pairs[at : at + len(row)])
            at += len(row)
        return out
