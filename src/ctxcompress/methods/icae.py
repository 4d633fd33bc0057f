"""ICAE — In-context Autoencoder (Ge et al., ICLR 2024).

k learned memory tokens are appended after each segment of the context (segment length k·r);
a LoRA encoder reads ``[segment, memory]`` causally, and the memory tokens' last-layer hidden
states become the frozen decoder's input embeddings (a soft prompt), followed by ``[LM]`` and
the question. Pretrained with autoencoding + continuation, then fine-tuned. METHODS.md §3.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory import MemoryConfig, MemoryTokenCompressor


@dataclass
class ICAEConfig(MemoryConfig):
    """ICAE: one row per segment, hidden-state output, positions right after the segment."""


class ICAECompressor(MemoryTokenCompressor):
    """In-context Autoencoder: memory tokens' last-layer hidden states as a soft prompt."""

    method = "icae"
    config_class = ICAEConfig
