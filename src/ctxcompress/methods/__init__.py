"""Compression methods, one small file each, registered by name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, ModelLoadError
from ..models import BaseModel, load_base_model
from ..shipped import is_shipped_name
from ..shipped import resolve as resolve_shipped
from ..shipped import versions as shipped_versions
from .answering import AnswerPlan
from .base import Compressor
from .config import CompressorConfig
from .epl import EPLCompressor, EPLConfig
from .hard import FullContext, NoContext, Truncation
from .icae import ICAECompressor, ICAEConfig
from .persistence import read_header
from .pic import PICCompressor, PICConfig
from .prompt_tuned import PromptTuned, PromptTunedConfig
from .sac import SACCompressor, SACConfig
from .xc500 import XC500Compressor, XC500Config

METHODS: dict[str, type[Compressor]] = {
    cls.method: cls
    for cls in (
        SACCompressor,
        PICCompressor,
        ICAECompressor,
        XC500Compressor,
        EPLCompressor,
        FullContext,
        NoContext,
        Truncation,
        PromptTuned,
    )
}
TRAINABLE_METHODS = ("sac", "pic", "icae", "500x", "epl", "prompt_tuned")
_ALIASES = {
    "xc500": "500x",
    "500xcompressor": "500x",
    "full": "full_context",
    "none": "no_context",
    "truncate": "truncation",
}


def canonical_method(method: str) -> str:
    """The registry name of ``method`` (case, ``-``/``_`` and aliases such as ``xc500`` for
    ``500x`` accepted); a clear error for an unknown one."""
    key = str(method).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    return key


def build_compressor(
    method: str,
    base_model: Any = None,
    tokenizer: Any = None,
    *,
    config: CompressorConfig | dict[str, Any] | None = None,
    dtype: Any = None,
    attn_implementation: str = "sdpa",
    device: Any = None,
    **options: Any,
) -> Compressor:
    """Build a fresh (untrained) compressor of ``method`` on a base model.

    Args:
        method: a name from :data:`METHODS` (``"sac"``, ...).
        base_model: a ``PreTrainedModel``, a ``BaseModel``, a local folder, a hub id, or
            ``None`` for the embedded SmolLM2-135M-Instruct.
        tokenizer: the tokenizer (or where to load it), if not the model's own.
        config: a config object or dict; ``**options`` override single fields
            (e.g. ``ratio=4``).
    """
    cls = METHODS[canonical_method(method)]
    data = config.to_dict() if isinstance(config, CompressorConfig) else dict(config or {})
    data.update(options)
    cfg = cls.config_class.from_dict(data)
    base = (
        base_model
        if isinstance(base_model, BaseModel)
        else load_base_model(
            base_model,
            tokenizer=tokenizer,
            dtype=dtype,
            attn_implementation=attn_implementation,
            device=device,
        )
    )
    return cls(base, cfg)


def load_compressor(path: str | os.PathLike, base_model: Any = None, **kwargs: Any) -> Compressor:
    """Load any compressor saved with ``save_pretrained`` (the method is read from the folder),
    or a shipped one by name (``"embedded:sac-4x"``; its files' checksums checked first)."""
    name = str(path) if is_shipped_name(path) else None
    if name is not None:
        path = resolve_shipped(name)
    header = read_header(Path(path))
    if header["method"] not in METHODS:
        raise ModelLoadError(
            f"{path} holds a {header['method']!r} compressor, unknown to this version of "
            f"ctxcompress (known: {', '.join(METHODS)})."
        )
    comp = METHODS[header["method"]].from_pretrained(path, base_model=base_model, **kwargs)
    if name is not None:
        comp.versions = shipped_versions(name, Path(path))
    return comp


__all__ = [
    "METHODS",
    "TRAINABLE_METHODS",
    "AnswerPlan",
    "Compressor",
    "CompressorConfig",
    "EPLCompressor",
    "EPLConfig",
    "FullContext",
    "ICAECompressor",
    "ICAEConfig",
    "NoContext",
    "PICCompressor",
    "PICConfig",
    "PromptTuned",
    "PromptTunedConfig",
    "SACCompressor",
    "SACConfig",
    "Truncation",
    "XC500Compressor",
    "XC500Config",
    "build_compressor",
    "canonical_method",
    "load_compressor",
]
