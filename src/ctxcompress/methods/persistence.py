"""Saving and loading compressors: ``save_pretrained`` / ``from_pretrained`` (the
transformers/peft convention) and the saved folder's header.

A saved compressor is a folder: ``ctxcompress.json`` (format version, method, config, base
model source and fingerprint), ``embeddings.safetensors`` (learned vectors), ``adapter/``
(the LoRA adapter in peft's format) and a model card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..errors import CorruptFileError, ModelLoadError
from ..models import BaseModel, load_base_model, resolve_dtype
from ..version import __version__

if TYPE_CHECKING:
    from .base import Compressor

CONFIG_FILE = "ctxcompress.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1


class PersistenceMixin:
    """``save_pretrained`` / ``from_pretrained`` of a
    :class:`~ctxcompress.methods.base.Compressor`."""

    def learned_embeddings(self) -> dict[str, torch.Tensor]:
        """Trainable tensors outside the LoRA adapter (saved in ``embeddings.safetensors``)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad and "lora_" not in n}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config, LoRA adapter (peft format), learned embeddings and a model card.

        Written to a temporary folder and swapped in at the end, so an interrupted save
        never leaves a half-written compressor behind.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            header = {
                "format_version": FORMAT_VERSION,
                "ctxcompress_version": __version__,
                "method": self.method,
                "config": self.config.to_dict(),
                "base_model": {"source": self.base_source, "fingerprint": self.base_fingerprint},
                "fingerprint": self.fingerprint,
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
            tensors = {
                n: p.detach().cpu().contiguous() for n, p in self.learned_embeddings().items()
            }
            save_file(tensors, str(tmp / EMBEDDINGS_FILE))
            if isinstance(self.model, PeftModel):
                self.model.save_pretrained(str(tmp / ADAPTER_DIR))
            (tmp / "README.md").write_text(self._model_card())
            old = directory.with_name(f".{directory.name}.old")
            if directory.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        base_model: Any = None,
        tokenizer: Any = None,
        **load_kwargs: Any,
    ) -> Compressor:
        """Rebuild a compressor saved with :meth:`save_pretrained`.

        The base model is reloaded from the recorded source unless ``base_model`` is given;
        either way its fingerprint must match the one the compressor was trained on.
        """
        directory = Path(directory)
        header = read_header(directory)
        if header["method"] != cls.method:
            raise ModelLoadError(
                f"{directory} holds a {header['method']!r} compressor, not {cls.method!r}; "
                "use ctxcompress.load_compressor()."
            )
        config = cls.config_class.from_dict(header["config"], saved=True)
        if isinstance(base_model, BaseModel):
            base = base_model
            device, dtype = load_kwargs.get("device"), load_kwargs.get("dtype")
            if device is not None or dtype is not None:  # they apply to a given model too
                base.model.to(device=device, dtype=resolve_dtype(dtype) if dtype else None)
        else:
            base = load_base_model(
                base_model or header["base_model"]["source"], tokenizer=tokenizer, **load_kwargs
            )
        expected = header["base_model"]["fingerprint"]
        if base.fingerprint != expected:
            raise ModelLoadError(
                f"{directory} was trained on base model {expected} "
                f"({header['base_model']['source']}); the model given is {base.fingerprint}. "
                "Pass the original base model."
            )
        comp = cls(base, config)
        comp.load_weights(directory)
        return comp

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Copy the trained tensors (learned embeddings, LoRA adapter) of a saved compressor
        folder into this compressor, which must have the same options; the caller checks the
        method and base model (as :meth:`from_pretrained` does)."""
        directory = Path(directory)
        try:
            tensors = load_file(str(directory / EMBEDDINGS_FILE), device=str(self.device))
        except Exception as exc:
            raise CorruptFileError(f"{directory / EMBEDDINGS_FILE} is unreadable: {exc}") from exc
        own = self.learned_embeddings()
        if set(tensors) != set(own):
            raise CorruptFileError(
                f"{directory / EMBEDDINGS_FILE} holds {sorted(tensors)}, expected {sorted(own)}"
            )
        with torch.no_grad():
            for name, value in tensors.items():
                if value.shape != own[name].shape:
                    raise CorruptFileError(
                        f"{name}: saved shape {tuple(value.shape)} != {tuple(own[name].shape)}"
                    )
                own[name].copy_(value)
        if isinstance(self.model, PeftModel):
            adapter = directory / ADAPTER_DIR / "adapter_model.safetensors"
            try:
                weights = load_file(str(adapter), device=str(self.device))
            except Exception as exc:
                raise CorruptFileError(f"{adapter} is unreadable: {exc}") from exc
            result = set_peft_model_state_dict(self.model, weights)
            if result.unexpected_keys:
                raise CorruptFileError(
                    f"{adapter} has unexpected weights: {result.unexpected_keys[:3]}..."
                )
            missing = [k for k in result.missing_keys if "lora_" in k]
            if missing:
                raise CorruptFileError(f"{adapter} lacks weights: {missing[:3]}...")

    def _model_card(self) -> str:
        return (
            f"# ctxcompress {self.method.upper()} compressor\n\n"
            f"- method: `{self.method}` (ratio {self.config.ratio}x)\n"
            f"- base model: `{self.base_source}` (fingerprint `{self.base_fingerprint}`)\n"
            f"- ctxcompress {__version__}\n\n"
            "```python\nimport ctxcompress as cc\n\n"
            'comp = cc.load_compressor("path/to/this/folder")\n'
            'ctx = comp.compress("a long document ...")\n'
            'comp.generate(ctx, ["a question?"], max_new_tokens=32)\n```\n'
        )


def read_header(directory: Path) -> dict[str, Any]:
    """Read and sanity-check ``ctxcompress.json`` of a saved compressor."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{directory} is not a saved compressor (no {CONFIG_FILE}); create one with "
            "comp.save_pretrained(...)."
        )
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is corrupt (not UTF-8 JSON): {exc}") from exc
    base = header.get("base_model") if isinstance(header, dict) else None
    problems = [
        not isinstance(header, dict) and "it is not a JSON object",
        isinstance(header, dict) and not isinstance(header.get("method"), str) and "no method",
        isinstance(header, dict) and not isinstance(header.get("config"), dict) and "no config",
        not (
            isinstance(base, dict)
            and isinstance(base.get("source"), str)
            and isinstance(base.get("fingerprint"), str)
        )
        and "no base_model source and fingerprint",
        isinstance(header, dict)
        and not isinstance(header.get("format_version", 1), int)
        and "a format_version that is not an integer",
    ]
    if any(problems):
        reasons = "; ".join(p for p in problems if p)
        raise CorruptFileError(f"{path} is corrupt: {reasons}. Save the compressor again.")
    if header.get("format_version", 1) > FORMAT_VERSION:
        raise ModelLoadError(f"{directory} was saved by a newer ctxcompress; upgrade to load it.")
    return header
