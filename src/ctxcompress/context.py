"""`CompressedContext`: the one object every method produces and every consumer reads.

A compressed context is either per-layer keys/values (``kind="kv"``: SAC, 500×, PIC-kv) that
the frozen decoder uses as its KV cache, or a short sequence of input embeddings
(``kind="embeds"``: ICAE, PIC-hidden) that it reads as a soft prompt. It records which method
and compressor made it, which base model it belongs to, the original length L (the decoder
continues from position L) and the compressed length.

On disk it is a single safetensors file whose header metadata holds a JSON description;
``save(path, quantize="int8")`` stores the tensors as int8 with float32 scales
(:mod:`ctxcompress.quantization`, format 2) and ``load`` dequantizes them to their dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as tensors_to_bytes
from transformers import DynamicCache, PretrainedConfig

from . import quantization
from .atomic import write_bytes_atomic
from .errors import ContextMismatchError, ContextNotFoundError, CorruptFileError

FORMAT_VERSION = 2
"""The newest context format this version reads. Plain contexts are written as format 1
(readable by every version); quantized ones as format 2, so that a reader from before
quantization refuses them instead of reading int8 values as keys."""
_PLAIN_FORMAT, _QUANTIZED_FORMAT = 1, 2
_STORED = ("keys", "values", "embeds")
_META_KEY = "ctxcompress"


@dataclass
class CompressedContext:
    """A compressed context.

    Attributes:
        kind: ``"kv"`` or ``"embeds"``.
        method: the method name (``"sac"``, ...).
        base_model: fingerprint of the base model (see ``models.model_fingerprint``).
        compressor: fingerprint of the trained compressor parameters that made it.
        original_length: L, the number of context tokens compressed; the decoder's first
            position id.
        keys, values: for ``kind="kv"``: ``[num_layers, num_kv_heads, C, head_dim]`` each,
            keys after RoPE.
        embeds: for ``kind="embeds"``: ``[C, hidden_size]``.
        positions: optional ``[C]`` position ids the compressed entries stand for.
        meta: free-form JSON-serialisable extras (ratio, source text hash, ...).
    """

    kind: Literal["kv", "embeds"]
    method: str
    base_model: str
    compressor: str
    original_length: int
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    embeds: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ shape facts
    @property
    def compressed_length(self) -> int:
        return int(self.keys.shape[2] if self.kind == "kv" else self.embeds.shape[0])

    @property
    def ratio(self) -> float:
        """Achieved compression ratio L / C."""
        return self.original_length / max(1, self.compressed_length)

    @property
    def num_bytes(self) -> int:
        tensors = (self.keys, self.values) if self.kind == "kv" else (self.embeds,)
        return sum(t.numel() * t.element_size() for t in tensors)

    def validate(self) -> None:
        """Check internal consistency; raises ``CorruptFileError`` when it does not hold."""
        if self.kind == "kv":
            k, v = self.keys, self.values
            if k is None or v is None or self.embeds is not None:
                raise CorruptFileError("A kind='kv' context needs keys and values (no embeds).")
            if k.dim() != 4 or k.shape != v.shape:
                raise CorruptFileError(
                    f"keys/values must both be [layers, kv_heads, C, head_dim]; got "
                    f"{tuple(k.shape)} and {tuple(v.shape)}."
                )
        elif self.kind == "embeds":
            if self.embeds is None or self.keys is not None or self.values is not None:
                raise CorruptFileError("A kind='embeds' context needs embeds (no keys/values).")
            if self.embeds.dim() != 2:
                raise CorruptFileError(
                    f"embeds must be [C, hidden]; got {tuple(self.embeds.shape)}"
                )
        else:
            raise CorruptFileError(
                f"Unknown context kind {self.kind!r}; expected 'kv' or 'embeds'."
            )
        for name in ("keys", "values", "embeds"):
            tensor = getattr(self, name)
            if tensor is not None and not tensor.is_floating_point():
                raise CorruptFileError(f"{name} must be floating point, got {tensor.dtype}.")
        if self.positions is not None and (
            self.positions.is_floating_point() or self.positions.dtype == torch.bool
        ):
            raise CorruptFileError(f"positions must be integers, got {self.positions.dtype}.")
        if self.positions is not None and self.positions.shape != (self.compressed_length,):
            raise CorruptFileError("positions must have one entry per compressed entry.")
        if self.original_length < 1:
            raise CorruptFileError(f"original_length must be >= 1, got {self.original_length}.")

    def check_compatible(
        self,
        *,
        method: str,
        base_model: str,
        compressor: str | None = None,
        versions: Mapping[str, str] | None = None,
    ):
        """Refuse a context made by another method, base model or trained compressor.
        ``versions``: the fingerprints of a shipped compressor's versions by what to call
        them (``"embedded:sac-4x version 1"``), current one included, so that a context made
        by an earlier version says so."""
        if self.method != method:
            raise ContextMismatchError(
                f"This context was made by method {self.method!r}; it cannot be read by a "
                f"{method!r} compressor. Compress the text again with this compressor."
            )
        if self.base_model != base_model:
            raise ContextMismatchError(
                f"This context was made for base model {self.base_model}, not {base_model}. "
                "Load the compressor it was made with, or compress the text again."
            )
        if compressor is not None and self.compressor != compressor:
            versions = versions or {}
            if self.compressor in versions and compressor in versions:
                raise ContextMismatchError(
                    f"This context was made by {versions[self.compressor]}; the installed one "
                    f"is {versions[compressor]} (other trained weights: its MODEL_CARD.md says "
                    "what changed). Compress the text again."
                )
            raise ContextMismatchError(
                f"This context was made by compressor {self.compressor}; the loaded one is "
                f"{compressor} (other trained weights). Compress the text again."
            )

    # ------------------------------------------------------------------ conversions
    def _map(self, fn) -> CompressedContext:
        """A copy with ``fn`` applied to every float tensor (positions stay as they are)."""

        def apply(t):
            return None if t is None else fn(t)

        return CompressedContext(
            kind=self.kind,
            method=self.method,
            base_model=self.base_model,
            compressor=self.compressor,
            original_length=self.original_length,
            keys=apply(self.keys),
            values=apply(self.values),
            embeds=apply(self.embeds),
            positions=self.positions,
            meta=dict(self.meta),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy with tensors moved/cast (positions stay integer, on the CPU)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> CompressedContext:
        return self._map(torch.Tensor.detach)

    def to_dynamic_cache(
        self, batch_size: int = 1, config: PretrainedConfig | None = None
    ) -> DynamicCache:
        """The keys/values as a transformers ``DynamicCache`` of ``batch_size`` rows.

        Rows are expanded views of this context's tensors: decoding appends to the cache by
        concatenation, which allocates new tensors, so the context itself is never mutated.
        """
        if self.kind != "kv":
            raise ContextMismatchError("Only kind='kv' contexts convert to a KV cache.")
        layers = [
            (
                self.keys[i].unsqueeze(0).expand(batch_size, -1, -1, -1),
                self.values[i].unsqueeze(0).expand(batch_size, -1, -1, -1),
            )
            for i in range(self.keys.shape[0])
        ]
        return DynamicCache(ddp_cache_data=layers, config=config)

    # ------------------------------------------------------------------ persistence
    def header(self) -> dict[str, Any]:
        return {
            "format_version": _PLAIN_FORMAT,
            "kind": self.kind,
            "method": self.method,
            "base_model": self.base_model,
            "compressor": self.compressor,
            "original_length": self.original_length,
            "compressed_length": self.compressed_length,
            "meta": self.meta,
        }

    def as_stored(self, quantize: str | None = None) -> CompressedContext:
        """The context exactly as :meth:`load` returns it after ``save(..., quantize=...)``:
        itself without quantization, else a copy rounded through the stored form (same dtype
        and device), so that a cache holds what a reload would give."""
        if quantization.check_scheme(quantize) is None:
            return self
        rounded = {
            n: quantization.dequantize(n, *quantization.quantize(n, t), t.dtype).to(t.device)
            for n in _STORED
            if (t := getattr(self, n)) is not None
        }
        return dataclasses.replace(self, **rounded, meta=dict(self.meta))

    def stored_bytes(self, quantize: str | None = None) -> int:
        """Bytes of the tensors as :meth:`save` would store them (without the header)."""
        if quantization.check_scheme(quantize) is None:
            return self.num_bytes
        return sum(
            quantization.quantized_bytes(n, t)
            for n in _STORED
            if (t := getattr(self, n)) is not None
        )

    def save(self, path: str | os.PathLike, *, quantize: str | None = None) -> Path:
        """Write the context as one safetensors file (atomically: no half-written files;
        an ``OSError`` such as ENOSPC leaves the previous file, if any, untouched).

        ``quantize="int8"`` stores keys, values or embeddings as int8 with float32 scales
        (about 4x smaller than float32; :mod:`ctxcompress.quantization`); :meth:`load`
        restores them, in their dtype, to within half a quantization step."""
        path = Path(path)
        header = self.header()
        tensors = {n: getattr(self, n) for n in (*_STORED, "positions")}
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items() if v is not None}
        if quantization.check_scheme(quantize):
            header["format_version"] = _QUANTIZED_FORMAT
            header["quantization"] = {
                "scheme": quantize,
                "dtype": str(tensors["keys" if self.kind == "kv" else "embeds"].dtype),
            }
            for name in _STORED:
                if name in tensors:
                    tensors[name], tensors[f"{name}.scale"] = quantization.quantize(
                        name, tensors[name]
                    )
        data = tensors_to_bytes(tensors, metadata={_META_KEY: json.dumps(header)})
        return write_bytes_atomic(path, data)  # a full disk raises OSError(ENOSPC), not half a file

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        expect_method: str | None = None,
        expect_base_model: str | None = None,
    ) -> CompressedContext:
        """Read a context written by :meth:`save`.

        ``expect_method`` / ``expect_base_model`` refuse a context made for something else
        (``Compressor.load_context`` passes its own). A truncated or foreign file raises
        ``CorruptFileError`` naming the file.
        """
        path = Path(path)
        if not path.is_file():
            raise ContextNotFoundError(f"No compressed context at {path}.")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path), device=str(device) if device else "cpu")
            header = json.loads(metadata[_META_KEY])
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError, ValueError) as exc:
            raise CorruptFileError(
                f"{path} is not a readable ctxcompress context (truncated, corrupted or not "
                f"written by CompressedContext.save): {exc}"
            ) from exc
        expected = {
            "format_version": int,
            "kind": str,
            "method": str,
            "base_model": str,
            "compressor": str,
            "original_length": int,
            "compressed_length": int,
        }
        wrong = [] if isinstance(header, dict) else ["the header is not a JSON object"]
        for key, kind in expected.items():
            value = header.get(key) if isinstance(header, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool):
                wrong.append(f"{key} is not {'an integer' if kind is int else 'a string'}")
        if isinstance(header, dict) and not isinstance(header.get("meta", {}), dict):
            wrong.append("meta is not an object")
        if wrong:
            raise CorruptFileError(f"{path} has a damaged header: {'; '.join(wrong)}.")
        if header["format_version"] > FORMAT_VERSION:
            raise CorruptFileError(
                f"{path} uses context format {header['format_version']}; this ctxcompress "
                f"reads up to {FORMAT_VERSION}. Upgrade ctxcompress."
            )
        if "quantization" in header:
            tensors = _dequantized(path, header["quantization"], tensors)
        try:
            ctx = cls(
                kind=header["kind"],
                method=header["method"],
                base_model=header["base_model"],
                compressor=header["compressor"],
                original_length=int(header["original_length"]),
                keys=tensors.get("keys"),
                values=tensors.get("values"),
                embeds=tensors.get("embeds"),
                positions=tensors.get("positions"),
                meta=header.get("meta", {}),
            )
        except (KeyError, TypeError) as exc:
            raise CorruptFileError(f"{path} has an incomplete header: missing {exc}") from exc
        if ctx.compressed_length != header.get("compressed_length"):
            raise CorruptFileError(f"{path}: header and tensors disagree on the compressed length.")
        if expect_method is not None or expect_base_model is not None:
            ctx.check_compatible(
                method=expect_method or ctx.method, base_model=expect_base_model or ctx.base_model
            )
        return ctx

    def __repr__(self) -> str:
        return (
            f"CompressedContext(kind={self.kind!r}, method={self.method!r}, "
            f"L={self.original_length}, C={self.compressed_length}, ratio={self.ratio:.2f}, "
            f"base_model={self.base_model!r})"
        )


def _dequantized(
    path: Path, spec: Any, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The float tensors of a quantized file (``CorruptFileError`` on a damaged one)."""
    spec = spec if isinstance(spec, dict) else {}
    dtype = getattr(torch, str(spec.get("dtype")).removeprefix("torch."), None)
    if spec.get("scheme") not in quantization.SCHEMES or not isinstance(dtype, torch.dtype):
        raise CorruptFileError(f"{path} has a damaged quantization header: {spec!r}.")
    out = {k: v for k, v in tensors.items() if not k.endswith(".scale")}
    for name in _STORED:
        if name in tensors:
            try:
                scale = tensors[f"{name}.scale"]
                out[name] = quantization.dequantize(name, tensors[name], scale, dtype)
            except (KeyError, ValueError) as exc:
                raise CorruptFileError(f"{path}: quantized {name!r} is damaged: {exc}") from exc
    return out
