"""PIC — Parallelized Iterative Compression ("Cognitive Chunking for Soft Prompts: Accelerating
Compressor Learning via Block-wise Causal Masking", arXiv 2602.13980).

ICAE-style memory tokens, but each group may only see its own local chunk of the context:
``[C1, M1, C2, M2, ...]`` in one forward pass with a block-wise mask (see ``masks.py``). Only
the mask changes, for all chunks at once, which makes the compressor much faster to train.

Reconstructed details ([guess], METHODS.md §2), each a config switch: chunk length (default
128 tokens, ``chunk_size``), context visibility (``"causal"`` over the whole context, or
``"chunk"``), memory carry-over (``"own"`` group or ``"all"`` earlier groups), output
(``"hidden"`` soft prompt or per-layer ``"kv"``), memory positions (``"after_chunk"`` or
``"epl"`` centres).

Note on locality: with ``context_visibility="causal"`` a memory group never attends to other
chunks' tokens directly, but its own chunk's context tokens have read the earlier context, so
earlier chunks reach it through them (later chunks never do). ``"chunk"`` makes each memory
group a function of its own chunk alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory import MemoryConfig, MemoryTokenCompressor


@dataclass
class PICConfig(MemoryConfig):
    """PIC: one pass over the interleaved layout with the block-wise mask."""

    chunk_size: int = 128
    one_pass: bool = True


class PICCompressor(MemoryTokenCompressor):
    """Parallelized Iterative Compression: chunk-local memory tokens, one forward pass."""

    method = "pic"
    config_class = PICConfig
