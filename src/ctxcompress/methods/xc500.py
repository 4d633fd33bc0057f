"""500xCompressor (Li et al., ACL 2025).

As ICAE — learned memory tokens after each segment, a LoRA encoder — but the decoder receives
the memory tokens' per-layer keys and values (a KV cache) instead of their last-layer hidden
states, which carries far more information per compressed token. METHODS.md §3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .memory import MemoryConfig, MemoryTokenCompressor


@dataclass
class XC500Config(MemoryConfig):
    """500×: one row per segment, per-layer K/V output."""

    output: Literal["hidden", "kv"] = "kv"


class XC500Compressor(MemoryTokenCompressor):
    """500xCompressor: memory tokens' per-layer K/V as the compressed context."""

    method = "500x"
    config_class = XC500Config
