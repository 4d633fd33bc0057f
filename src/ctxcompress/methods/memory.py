"""Shared mechanics of the memory-token methods: ICAE, 500×, EPL and PIC.

Learned memory-token embeddings (one per slot within a chunk) are placed after each context
chunk; the LoRA encoder reads chunk and memory tokens, and the memory tokens' outputs become
the compressed context: either their last-layer hidden states (a soft prompt the decoder
reads as input embeddings: ICAE, PIC) or their per-layer keys/values (500×, EPL, PIC-kv).

Two row layouts:
* one row per chunk, ``[C_i, M_i]`` (ICAE, 500×, EPL): chunks are independent;
* one row per document, ``[C_1, M_1, C_2, M_2, ...]`` in a single forward pass (PIC), with
  the block-wise mask of :func:`ctxcompress.masks.memory_mask`.

The methods differ only in config defaults; each has its own small file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..context import CompressedContext
from ..masks import memory_mask
from ..models import BaseModel, cache_kwargs
from ..positions import chunk_spans, memory_offsets, memory_slots
from ..windows import attention_mask, new_cache
from .base import Compressor
from .config import CompressorConfig
from .encoding import encode_in_length_batches, gather_cache_entries


@dataclass
class MemoryConfig(CompressorConfig):
    """Options of the memory-token methods (defaults: ICAE)."""

    output: Literal["hidden", "kv"] = "hidden"
    """Memory tokens' last-layer hidden states as a soft prompt, or their per-layer K/V."""
    memory_positions: Literal["after_chunk", "epl"] = "after_chunk"
    """Memory position ids right after their chunk, or at segment centres (EPL)."""
    decoder_start: Literal["after_memory", "L"] = "after_memory"
    """The decoder continues after the last memory position, or from L (EPL, SAC)."""
    one_pass: bool = False
    """All chunks of a document interleaved with their memory in one forward pass (PIC)."""
    context_visibility: Literal["causal", "chunk"] = "causal"
    """One-pass only: context tokens see all earlier context, or only their own chunk."""
    memory_carry: Literal["own", "all"] = "own"
    """One-pass only: memory sees its own group, or also every earlier group."""
    soft_prompt_scale: Literal["none", "embedding_norm"] = "none"
    """[guess] Hidden output only: keep the final hidden states as they are (ICAE's code), or
    rescale each to the median norm of the input embeddings the decoder normally reads (on
    SmolLM2-135M the hidden states are ~14x larger: ~44 vs ~3.2)."""


@dataclass
class _Row:
    doc: int
    ids: list[int]  # context ids with placeholders at memory slots
    positions: list[int]
    chunk: list[int]
    memory_slot: list[int]  # -1 for context tokens, else the slot index within its group


class MemoryTokenCompressor(Compressor):
    """Base of ICAE, 500×, EPL and PIC: learned memory tokens after each chunk."""

    config_class = MemoryConfig
    config: MemoryConfig

    def __init__(self, base: BaseModel, config: MemoryConfig | None = None) -> None:
        super().__init__(base, config or self.config_class())
        slots = memory_slots(self.config.chunk_size, self.config.ratio)
        self.memory_embedding = nn.Parameter(
            self._learned_vectors(slots, self.lm.config.hidden_size)
        )
        self.embedding_norm: float | None = None  # median input-embedding norm, when used
        if self.config.soft_prompt_scale == "embedding_norm":
            table = self.lm.get_input_embeddings().weight.detach()
            self.embedding_norm = float(table.float().norm(dim=-1).median())

    @property
    def context_kind(self) -> str:  # type: ignore[override]
        return "kv" if self.config.output == "kv" else "embeds"

    def compressed_length(self, length: int) -> int:
        spans = chunk_spans(length, self.config.chunk_size)
        return sum(memory_slots(e - s, self.ratio) for s, e in spans)

    def first_decoder_position(self, ctx: CompressedContext) -> int:
        if self.config.decoder_start == "L":
            return ctx.original_length + self.config.decoder_position_offset
        return super().first_decoder_position(ctx)

    def _rows(self, contexts: Sequence[Sequence[int]]) -> list[_Row]:
        """Encoder rows; the first chunk gets ``sink_tokens`` fewer memory tokens (a chunk
        left with none is not encoded, except inside a one-pass row)."""
        cfg, rows = self.config, []
        for doc, ids in enumerate(contexts):
            doc_row = None
            for index, (start, end) in enumerate(chunk_spans(len(ids), cfg.chunk_size)):
                n = end - start
                sink = cfg.sink_tokens if start == 0 else 0
                offsets = memory_offsets(n, self.ratio, cfg.memory_positions, sink)
                if not offsets and not cfg.one_pass:
                    continue
                if doc_row is None or not cfg.one_pass:
                    doc_row = _Row(doc, [], [], [], [])
                    rows.append(doc_row)
                doc_row.ids += list(ids[start:end]) + [0] * len(offsets)
                doc_row.positions += [start + cfg.position_start + i for i in range(n)]
                doc_row.positions += [start + cfg.position_start + o for o in offsets]
                doc_row.chunk += [index] * (n + len(offsets))
                doc_row.memory_slot += [-1] * n + list(range(len(offsets)))
        return rows

    def encode_ids(self, contexts: Sequence[Sequence[int]]) -> list[CompressedContext]:
        rows = self._rows(contexts)
        want_kv = self.config.output == "kv"
        sink_lengths = self.sink_lengths(contexts)
        sink_kv = self.sink_kv(contexts) if want_kv else None
        with self.encoder_mode():
            per_row = encode_in_length_batches(
                rows, self.config.encoder_batch_size, lambda r: len(r.ids), self._encode_rows
            )
        out = []
        for doc, ids in enumerate(contexts):
            doc_rows = [i for i, r in enumerate(rows) if r.doc == doc]
            memory_positions = [
                p
                for i in doc_rows
                for p, s in zip(rows[i].positions, rows[i].memory_slot, strict=True)
                if s >= 0
            ]
            sink = sink_lengths[doc]
            positions = torch.cat(
                [self.sink_positions(sink), torch.tensor(memory_positions, dtype=torch.long)]
            )
            # The sink's entries first: its own KV, or its token embeddings (soft prompt).
            if want_kv:
                keys = [sink_kv[doc][0], *(per_row[i][0].permute(1, 2, 0, 3) for i in doc_rows)]
                values = [sink_kv[doc][1], *(per_row[i][1].permute(1, 2, 0, 3) for i in doc_rows)]
                tensors = {"keys": torch.cat(keys, 2), "values": torch.cat(values, 2)}
            else:
                head = torch.tensor(list(ids[:sink]), dtype=torch.long, device=self.device)
                embeds = [self.lm.get_input_embeddings()(head), *(per_row[i][0] for i in doc_rows)]
                tensors = {"embeds": torch.cat(embeds)}
            out.append(self._new_context(len(ids), positions=positions, **tensors))
        return out

    def _encode_rows(self, rows: list[_Row]) -> list[tuple[torch.Tensor, ...]]:
        """One encoder pass; returns each row's memory outputs (hidden, or K and V)."""
        device, width = self.device, max(len(r.ids) for r in rows)

        def pad(values, fill):
            return torch.tensor([v + [fill] * (width - len(v)) for v in values], device=device)

        ids = pad([r.ids for r in rows], 0)
        positions = pad([r.positions for r in rows], 0)
        chunk = pad([r.chunk for r in rows], -1)
        slot = pad([r.memory_slot for r in rows], -1)
        valid = pad([[True] * len(r.ids) for r in rows], False)
        is_memory = slot >= 0

        embeds = self.lm.get_input_embeddings()(ids)
        memory = self.memory_embedding[slot.clamp(min=0)].to(embeds.dtype)
        embeds = torch.where(is_memory[..., None], memory, embeds)
        mask = memory_mask(
            chunk,
            is_memory,
            valid,
            context_visibility=self.config.context_visibility,
            memory_carry=self.config.memory_carry,
        )
        mask = attention_mask(self.lm.config, mask, positions, positions, embeds.dtype)
        want_kv = self.config.output == "kv"
        cache = new_cache(self.lm.config) if want_kv else None
        out = self.backbone(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(cache),
            use_cache=want_kv,
        )
        rows_idx, cols_idx = is_memory.nonzero(as_tuple=True)  # row-major: document order
        if want_kv:
            outputs = gather_cache_entries(cache, rows_idx, cols_idx)
        else:
            hidden = out.last_hidden_state[rows_idx, cols_idx]
            if self.embedding_norm is not None:
                norm = hidden.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
                hidden = (hidden * (self.embedding_norm / norm)).to(hidden.dtype)
            outputs = (hidden,)
        counts = [sum(s >= 0 for s in r.memory_slot) for r in rows]
        return list(zip(*(t.split(counts) for t in outputs), strict=True))
