"""EPL — Enhanced Position Layout (Zhao et al., EMNLP Findings 2025; SAC's authors).

ICAE/500× with the memory tokens' position ids placed at the centres of the segments they
summarise — exactly the positions SAC's anchors have — and the decoder continuing from the
original length L. SAC's strongest baseline. Output defaults to per-layer K/V (as 500×)
[guess]; ``output="hidden"`` gives the ICAE variant. METHODS.md §3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .memory import MemoryConfig, MemoryTokenCompressor


@dataclass
class EPLConfig(MemoryConfig):
    """EPL: segment-centre memory positions, decoder from L."""

    output: Literal["hidden", "kv"] = "kv"
    memory_positions: Literal["after_chunk", "epl"] = "epl"
    decoder_start: Literal["after_memory", "L"] = "L"


class EPLCompressor(MemoryTokenCompressor):
    """Memory tokens at segment centres (EPL position layout)."""

    method = "epl"
    config_class = EPLConfig
