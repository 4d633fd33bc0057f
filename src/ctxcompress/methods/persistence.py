"""Saving and loading compressors: ``save_pretrained`` / ``from_pretrained`` (the
transformers/peft convention) and the saved folder's header.

A saved compressor is a folder: ``ctxcompress.json`` (format version, method, config, base
model source and fingerprint), ``embeddings.safetensors`` (learned vectors), ``adapter/``
(the LoRA adapter in peft's format) and a model card.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CorruptFileError, ModelLoadError
from ..models import BaseModel, load_base_model, resolve_dtype
from ..version import __version__

if TYPE_CHECKING:
    from .base import Compressor

CONFIG_FILE = "ctxcompress.json"
IDENTITY_METHOD = "ctxcompress_method"
IDENTITY_BASE = "ctxcompress_base_model"
IDENTITY_COMPRESSOR = "ctxcompress_compressor"
"""Metadata keys of every saved weights file: the method and base-model fingerprint its
tensors were trained with, and the fingerprint of the compressor they were saved as (files
saved before they existed carry none and are trusted)."""
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
            identity = {**self._weights_identity(), IDENTITY_COMPRESSOR: header["fingerprint"]}
            save_file(tensors, str(tmp / EMBEDDINGS_FILE), metadata=identity)
            if isinstance(self.model, PeftModel):
                self.model.save_pretrained(str(tmp / ADAPTER_DIR))
                for path in (tmp / ADAPTER_DIR).rglob("*.safetensors"):
                    stamp_identity(path, identity)
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

    def _weights_identity(self, directory: Path | None = None) -> dict[str, str]:
        """What every saved weights file records of where its tensors belong — the method and
        the base model they were trained on, and the fingerprint of the compressor saved with
        them (the folder's header, read from ``directory``) — checked on load
        (:func:`check_identity`)."""
        identity = {IDENTITY_METHOD: self.method, IDENTITY_BASE: self.base_fingerprint}
        header = directory / CONFIG_FILE if directory is not None else None
        if header is not None and header.is_file():
            with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
                fingerprint = json.loads(header.read_text(encoding="utf-8")).get("fingerprint")
                if isinstance(fingerprint, str):
                    identity[IDENTITY_COMPRESSOR] = fingerprint
        return identity

    def load_weights(
        self, directory: str | os.PathLike, *, adapters: Sequence[str] | None = None
    ) -> None:
        """Copy the trained tensors (learned embeddings, LoRA adapters) of a saved compressor
        folder into this compressor, which must have the same options; the caller checks the
        method and base model (as :meth:`from_pretrained` does). ``adapters``: which of its
        adapters to load (default all; a stage-2 run that adds a decoder adapter to a stage-1
        compressor loads the encoder's alone, and its decoder adapter starts at zero)."""
        directory = Path(directory)
        path = directory / EMBEDDINGS_FILE
        identity = self._weights_identity(directory)  # the header is read once per load
        tensors = read_weights(path, identity, str(self.device))
        own = self.learned_embeddings()
        if set(tensors) != set(own):
            raise CorruptFileError(
                f"{path} holds the learned vectors {sorted(tensors)}, but this "
                f"{self.method} compressor (its ctxcompress.json options) has {sorted(own)}: "
                "the file belongs to a compressor with other options"
            )
        with torch.no_grad():
            for name, value in tensors.items():
                if value.shape != own[name].shape:
                    raise CorruptFileError(
                        f"{path}: {name} has shape {tuple(value.shape)}, but this compressor's "
                        f"options make it {tuple(own[name].shape)}"
                    )
                if not value.is_floating_point():
                    raise CorruptFileError(
                        f"{path}: {name} is {value.dtype}, not a floating-point tensor: "
                        "not a saved learned vector"
                    )
                own[name].copy_(value)
        if isinstance(self.model, PeftModel):
            names = list(self.model.peft_config) if adapters is None else list(adapters)
            for name in names:  # the encoder's, and the decoder's if any
                self._load_adapter(directory, name, identity)

    def _load_adapter(self, directory: Path, name: str, identity: dict[str, str]) -> None:
        """One adapter's weights from ``adapter/`` (the encoder's, peft's ``default``) or
        ``adapter/<name>/`` (peft's layout for a model's further adapters), after checking
        that its peft config and recorded identity are this compressor's."""
        folder = directory / ADAPTER_DIR
        folder = folder if name == "default" else folder / name
        adapter = folder / "adapter_model.safetensors"
        self._check_adapter_config(folder / "adapter_config.json", name)
        weights = read_weights(adapter, identity, str(self.device))
        try:
            result = set_peft_model_state_dict(self.model, weights, adapter_name=name)
        except RuntimeError as exc:  # torch's size mismatch, deep inside load_state_dict
            raise CorruptFileError(
                f"{adapter} holds LoRA weights of other shapes than this compressor's "
                f"(another rank or base model?): {str(exc).splitlines()[-1].strip()}"
            ) from exc
        if result.unexpected_keys:
            raise CorruptFileError(
                f"{adapter} has weights this compressor does not: {result.unexpected_keys[:3]}"
                " (an adapter on other layers or of another model)"
            )
        missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        if missing:
            raise CorruptFileError(f"{adapter} lacks weights: {missing[:3]}...")

    def _check_adapter_config(self, path: Path, name: str) -> None:
        """The saved adapter's rank, alpha and targets must be those this compressor built."""
        if not path.is_file():
            raise CorruptFileError(
                f"{path} is missing: the compressor's options ask for a LoRA adapter "
                f"({name!r}), and its folder has none. Copy the whole saved folder."
            )
        want = self.model.peft_config[name]
        expected = {"r": want.r, "lora_alpha": want.lora_alpha}
        expected["target_modules"] = set(want.target_modules or ())
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            found = {"r": saved["r"], "lora_alpha": saved["lora_alpha"]}
            found["target_modules"] = set(saved["target_modules"] or ())
        except (ValueError, UnicodeDecodeError, LookupError, TypeError) as exc:
            raise CorruptFileError(f"{path} is not a peft LoRA config: {exc!r}") from exc
        if found != expected:
            diff = ", ".join(
                f"{k} {found[k]!r} (expected {expected[k]!r})"
                for k in found
                if found[k] != expected[k]
            )
            raise CorruptFileError(
                f"{path} describes another adapter than ctxcompress.json's options build: "
                f"{diff}. The adapter was copied from another compressor."
            )

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


def stamp_identity(path: Path, identity: dict[str, str]) -> None:
    """Add ``identity`` to a safetensors file's metadata (rewritten atomically)."""
    with safe_open(str(path), "pt") as f:
        metadata = {**(f.metadata() or {}), **identity}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_weights(path: Path, identity: dict[str, str], device: str) -> dict[str, torch.Tensor]:
    """A saved weights file's tensors, refused with a clear error when missing, unreadable,
    or recorded as trained for another method or base model than ``identity``'s."""
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing: copy the whole saved compressor folder")
    try:
        with safe_open(str(path), "pt") as f:
            recorded = f.metadata() or {}
        tensors = load_file(str(path), device=device)
    except Exception as exc:
        raise CorruptFileError(f"{path} is unreadable: {exc}") from exc
    check_identity(path, recorded, identity)
    return tensors


def check_identity(path: Path, recorded: dict[str, str], identity: dict[str, str]) -> None:
    """Refuse weights recorded as trained for another method or on another base model: same
    shapes would load, and answer with garbage."""
    for key, what in ((IDENTITY_BASE, "base model"), (IDENTITY_METHOD, "method")):
        if key in recorded and recorded[key] != identity[key]:
            raise ModelLoadError(
                f"{path} holds weights trained for {what} {recorded[key]!r}, but this "
                f"compressor's {what} is {identity[key]!r}: the file was copied from another "
                "compressor. Use the folder it was saved in as a whole."
            )
    saved_as, header = recorded.get(IDENTITY_COMPRESSOR), identity.get(IDENTITY_COMPRESSOR)
    if saved_as is not None and header is not None and saved_as != header:
        raise ModelLoadError(
            f"{path} was saved with compressor {saved_as}, but its folder's {CONFIG_FILE} "
            f"is compressor {header}: the folder mixes files of two saved compressors. Use "
            "the folder each was saved in as a whole."
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
