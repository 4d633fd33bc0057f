"""Training configuration: dataclasses that load from YAML and take ``a.b=value`` overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidInputError
from .distillation import check_teacher_spec
from .objectives import OBJECTIVES

EXAMPLES_WEIGHT = "examples"
"""A data source's ``weight`` that stands for its number of examples."""


@dataclass
class DataSource:
    """One training data source (a spec understood by ``ctxcompress.data``)."""

    source: str
    objective: str = "qa"
    """``qa`` (loss on answer + EOS), ``summarization`` (the same with the summary),
    ``continuation`` or ``autoencoding``."""
    weight: float | str = 1.0
    """Relative sampling weight in the mixture, or ``"examples"``: the source's number of
    examples (sources mixed in proportion to their size, so that each is read once per epoch
    at the same pace — a text stream split over several sources)."""
    limit: int | None = None
    """Use only the first N records (after the data loader's own ordering)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Passed to the data loader (e.g. ``num_distractors`` for nq-oracle)."""

    def __post_init__(self) -> None:
        if isinstance(self.weight, str) and self.weight != EXAMPLES_WEIGHT:
            # YAML 1.1 reads 5e-1 (no dot) as a string: take it as the number it spells.
            with contextlib.suppress(ValueError):
                self.weight = float(self.weight)


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping (defaults: the SAC paper, METHODS.md §1)."""

    steps: int = 1000
    batch_size: int = 16
    """Global examples per optimizer step (= micro_batch_size x processes x accumulation)."""
    micro_batch_size: int = 4
    """Examples per process per forward pass."""
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 300
    schedule: str = "constant"
    """``constant`` after warm-up (paper) or ``cosine``."""
    grad_clip: float = 2.0
    mixed_precision: str = "auto"
    """``auto`` (bf16 on a GPU that has it, else no), ``no``, ``bf16`` or ``fp16``. On a CPU,
    bf16 pays only with native bfloat16 (AVX512-BF16 / AMX; a warning says when not)."""
    bf16_frozen_weights: bool = True
    """With ``mixed_precision: bf16``: hold the frozen base's linear weights in bfloat16
    during each step (``training/precision.py``; adapters, learned vectors and optimizer
    state stay float32). False: autocast alone, which re-casts them in every pass."""
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    continuation_min_tokens: int = 510
    continuation_max_tokens: int = 2040
    max_context_tokens: int | None = None
    """Drop (and report) examples whose context is longer; None keeps all that fit."""
    document_windows: bool = False
    """Continuation/autoencoding: cut documents longer than ``continuation_max_tokens`` into
    consecutive windows of that many tokens (each one example) instead of dropping them."""
    text_stream: bool = False
    """Continuation/autoencoding (issue 38, lever 4: dense pretraining): join each source's
    documents into one token stream and cut it into consecutive windows of exactly
    ``continuation_max_tokens`` (``objectives.text_stream_windows``), so short paragraphs
    and long papers alike feed full-length examples and no token repeats within an epoch;
    continuation targets then carry no EOS (the cut is not the text's end). Not with
    ``document_windows``, which cuts each document on its own."""
    continuation_context_fraction: float = 0.5
    """The share of a continuation example that is compressed (the paper: half); the rest is
    the target. A larger share keeps the compressed context near the QA contexts' length
    while every step still has continuation tokens to distil."""
    ratios: list[int] | None = None
    """Train each micro-batch at a ratio drawn from these (seeded by the step: an exact
    resume draws the same), so that one compressor serves any of them (Activation Beacon's
    recipe; issue 20). The method's own ``ratio`` must be the smallest: learned vectors exist
    for that many slots per chunk, and larger ratios use the first of them."""
    ratio_ramp_steps: int = 0
    """Ratio ramp (issue 38, lever 2): over the first N optimizer steps the ratio rises
    linearly from ``ratio_ramp_start`` towards the method's ``ratio``, rounded half up to a
    whole ratio (1 -> 4 over 100 steps: 1 until step 16, 2 until 49, 3 until 83, then 4),
    so the compressor starts from what the nearly uncompressed context learns fast (DMS,
    Activation Beacon's low ratios); from step N on, the plain ratio. 0: off. Needs a method
    that compresses below its ratio (SAC with ``anchor_embedding: shared`` or ``none``, the
    prompt-tuned truncation); not with ``ratios``."""
    ratio_ramp_start: int = 1
    """The ratio the ramp starts at (>= 1, <= the method's ratio)."""
    embedding_lr_scale: float = 1.0
    """The learned vectors (``[LM]``, ``[AE]``, anchor/memory/prompt embeddings) train at
    ``lr * embedding_lr_scale``; the LoRA weights at ``lr``. With AdamW a parameter moves
    about ``lr`` per step, so at 2e-4 a vector needs thousands of steps to travel a token
    embedding's scale (std 0.136 on SmolLM2-135M): a scale of 10-50 lets it in a few hundred."""

    def __post_init__(self) -> None:
        # YAML 1.1 reads "1e-4" as a string: coerce numbers, with a clear error otherwise.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = {"float": float, "int": int}.get(str(f.type))
            if kind is None or isinstance(value, bool):
                continue
            try:
                setattr(self, f.name, kind(float(value)) if kind is int else kind(value))
            except (TypeError, ValueError):
                raise InvalidInputError(f"train.{f.name} must be a number, got {value!r}") from None


@dataclass
class DistillConfig:
    """Distillation from the uncompressed model (see ``training/distillation.py``)."""

    weight: float = 0.0
    """``w`` in ``CE + w * T^2 * KL(teacher || student)``; 0 turns distillation off."""
    temperature: float = 1.0
    """``T``: both distributions are softened by it."""
    hidden_weight: float = 0.0
    """``v`` in ``+ v * hidden_distance(student states, teacher states)``: the decoder's
    every-layer states at every input after the context against the teacher's (a dense
    signal; ``training/distillation.py``); 0 turns it off."""
    teacher: str = "full_context"
    """``full_context`` (the frozen base model reading the whole context) or a saved
    compressor folder on the same base model (e.g. a trained full-context model)."""
    top_k: int = 0
    """Keep only the teacher's k most likely tokens per position (0: the full distribution)."""
    cache_dir: str | None = None
    """Store the teacher's top-k logits per example here (needs ``top_k``), so that every
    epoch and every run sharing the folder computes each example's teacher pass once."""

    @property
    def enabled(self) -> bool:
        """Whether there is a teacher to run (either term has a weight)."""
        return self.weight > 0 or self.hidden_weight > 0

    def __post_init__(self) -> None:
        try:
            self.top_k = int(self.top_k)
        except (TypeError, ValueError):
            raise InvalidInputError(f"distill.top_k must be an int, got {self.top_k!r}") from None
        for name in ("weight", "temperature", "hidden_weight"):
            value = getattr(self, name)
            try:
                setattr(self, name, float(value))
            except (TypeError, ValueError):
                raise InvalidInputError(f"distill.{name} must be a number, got {value!r}") from None


@dataclass
class TrainConfig:
    """A whole training run: what to train, on what, how, and where to write it."""

    method: str
    base_model: str | None = None
    """Local folder, hub id, ``embedded`` (default) or ``tiny`` (tests)."""
    method_options: dict[str, Any] = field(default_factory=dict)
    data: list[DataSource] = field(default_factory=list)
    train: LoopConfig = field(default_factory=LoopConfig)
    output_dir: str = "runs/default"
    init_from: str | None = None
    """Stage 2: a stage-1 compressor folder (or checkpoint) to start from."""
    resume: str = "auto"
    """``auto`` (continue from the latest checkpoint in output_dir), ``never``, or a path."""
    dtype: str | None = None
    """Base model weights dtype (default float32)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Distillation from a teacher that reads the whole context (off unless weight > 0)."""

    def validate(self) -> None:
        loop = self.train
        if not self.data:
            raise InvalidInputError("the config has no data sources (data: [...])")
        for d in self.data:
            if d.objective not in OBJECTIVES:
                raise InvalidInputError(
                    f"data source {d.source!r}: objective {d.objective!r} is not one of "
                    f"{', '.join(OBJECTIVES)}"
                )
            if d.weight == EXAMPLES_WEIGHT:
                continue
            if isinstance(d.weight, bool) or not isinstance(d.weight, int | float):
                raise InvalidInputError(
                    f"data source {d.source!r}: weight must be a number > 0 or "
                    f"{EXAMPLES_WEIGHT!r} (its number of examples), got {d.weight!r}"
                )
            if d.weight <= 0:
                raise InvalidInputError(f"data source {d.source!r}: weight must be > 0")
        for name in ("steps", "batch_size", "micro_batch_size", "log_every", "save_every"):
            if getattr(loop, name) < 1:
                raise InvalidInputError(f"train.{name} must be >= 1")
        if loop.schedule not in ("constant", "cosine"):
            raise InvalidInputError("train.schedule must be 'constant' or 'cosine'")
        if loop.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise InvalidInputError("train.mixed_precision must be auto, no, bf16 or fp16")
        if loop.embedding_lr_scale <= 0:
            raise InvalidInputError("train.embedding_lr_scale must be > 0")
        if loop.ratios is not None:
            bad = [r for r in loop.ratios if not isinstance(r, int) or isinstance(r, bool) or r < 1]
            if not loop.ratios or bad:
                raise InvalidInputError(
                    f"train.ratios must be a non-empty list of integers >= 1, got {loop.ratios!r}"
                )
            ratio = self.method_options.get("ratio")
            if ratio is not None and ratio != min(loop.ratios):
                raise InvalidInputError(
                    f"train.ratios {loop.ratios}: method_options.ratio ({ratio}) must be the "
                    f"smallest of them ({min(loop.ratios)}); the learned vectors are sized by it"
                )
        if not 0 < loop.continuation_context_fraction < 1:
            raise InvalidInputError(
                "train.continuation_context_fraction must be in (0, 1) (the compressed share "
                f"of a continuation example), got {loop.continuation_context_fraction}"
            )
        if loop.text_stream and loop.document_windows:
            raise InvalidInputError(
                "train.text_stream and train.document_windows both cut texts into windows: "
                "text_stream joins the documents first, document_windows cuts each alone; use one"
            )
        self._validate_ramp()
        distill = self.distill
        if distill.weight < 0:
            raise InvalidInputError(f"distill.weight must be >= 0, got {distill.weight}")
        if distill.temperature <= 0:
            raise InvalidInputError(f"distill.temperature must be > 0, got {distill.temperature}")
        if distill.top_k < 0:
            raise InvalidInputError(f"distill.top_k must be >= 0, got {distill.top_k}")
        if distill.cache_dir and not distill.top_k:
            raise InvalidInputError(
                "distill.cache_dir stores the teacher's top-k logits: set distill.top_k too "
                "(e.g. 64)"
            )
        if distill.hidden_weight < 0:
            raise InvalidInputError(
                f"distill.hidden_weight must be >= 0, got {distill.hidden_weight}"
            )
        if distill.cache_dir and distill.hidden_weight > 0:
            raise InvalidInputError(
                "distill.cache_dir stores only the teacher's logits; with distill.hidden_weight "
                "> 0 the teacher runs in every step for its states anyway: drop cache_dir"
            )
        if distill.enabled:
            check_teacher_spec(distill.teacher)
        if self.resume not in ("auto", "never") and not Path(self.resume).exists():
            raise InvalidInputError(f"resume={self.resume!r}: no such checkpoint")

    def _validate_ramp(self) -> None:
        loop = self.train
        if not loop.ratio_ramp_steps:
            return
        ratio = self.method_options.get("ratio")
        if loop.ratio_ramp_steps < 0:
            raise InvalidInputError(
                f"train.ratio_ramp_steps must be >= 0, got {loop.ratio_ramp_steps}"
            )
        if loop.ratio_ramp_start < 1:
            raise InvalidInputError(
                f"train.ratio_ramp_start={loop.ratio_ramp_start}: a ramp starts at ratio 1 (the "
                "whole context) or above; ratios below 1 do not exist"
            )
        if ratio is not None and loop.ratio_ramp_start > ratio:
            raise InvalidInputError(
                f"train.ratio_ramp_start={loop.ratio_ramp_start} is beyond the target ratio "
                f"(method_options.ratio={ratio}): the ramp rises to the method's ratio"
            )
        if loop.ratio_ramp_steps > loop.steps:
            raise InvalidInputError(
                f"train.ratio_ramp_steps={loop.ratio_ramp_steps} ends beyond train.steps="
                f"{loop.steps}: the compressor would never train at its own ratio"
            )
        if loop.ratios:
            raise InvalidInputError(
                "train.ratio_ramp_steps and train.ratios both choose the training ratio: use one"
            )

    def ramp_ratio(self, step: int, target: int) -> int | None:
        """The ratio at optimizer step ``step`` (0-based) while the ramp lasts, else None."""
        loop = self.train
        if step >= loop.ratio_ramp_steps:
            return None
        start = loop.ratio_ramp_start
        # Half-up rounding (Python's round() would send 2.5 to 2).
        return int(start + (target - start) * step / loop.ratio_ramp_steps + 0.5)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = dict(data)
    if cls is LoopConfig and kwargs.get("mixed_precision") is False:
        kwargs["mixed_precision"] = "no"  # YAML 1.1 reads a bare `no` as false
    if cls is TrainConfig:
        if "train" in kwargs:
            kwargs["train"] = _build(LoopConfig, kwargs["train"] or {}, "train")
        if "distill" in kwargs:
            kwargs["distill"] = _build(DistillConfig, kwargs["distill"] or {}, "distill")
        if "data" in kwargs:
            sources = kwargs["data"] or []
            if not isinstance(sources, list):
                raise InvalidInputError(
                    f"{where}.data: expected a list of data sources, got {sources!r:.60}"
                )
            kwargs["data"] = [_build(DataSource, d, f"data[{i}]") for i, d in enumerate(sources)]
    hints = typing.get_type_hints(cls)
    for name, value in list(kwargs.items()):
        if isinstance(value, str) and _matches(0.0, hints[name]) and not _matches("", hints[name]):
            # YAML 1.1 reads 5e-5 (no dot) as a string: take it as the number it spells.
            with contextlib.suppress(ValueError):
                kwargs[name] = value = float(value)
        if not _matches(value, hints[name]):
            raise InvalidInputError(
                f"{where}.{name}: expected {_type_name(hints[name])}, got {value!r:.60}"
            )
    if cls is LoopConfig and "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InvalidInputError(f"{where}: {exc}") from exc


def _matches(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML fits a config field's type (ints count as floats;
    nested configs are checked when they are built)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if (
        hint is Any
        or dataclasses.is_dataclass(hint)
        or (origin is list and args and dataclasses.is_dataclass(args[0]))
    ):
        return True
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return (
            isinstance(value, list | tuple)
            and len(value) == len(args)
            and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        )
    if origin is dict:
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_config(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """A validated :class:`TrainConfig` from a mapping plus ``key.sub=value`` overrides."""
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"a training config is a mapping (method:, data:, train:, ...), got "
            f"{type(data).__name__}; see configs/ for examples"
        )
    data = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise InvalidInputError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, last = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidInputError(f"override {item!r}: {part} is not a mapping")
        node[last] = yaml.safe_load(raw)
    config = _build(TrainConfig, data, "config")
    config.validate()
    return config


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config (see ``configs/``) and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no config file at {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(data, overrides)


# Settings that may change between a run and its resumption: the length of the run and its
# bookkeeping. Anything else (method, data, optimiser, ...) would silently mix two runs.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "resume",
        "train.steps",
        "train.save_every",
        "train.log_every",
        "train.keep_checkpoints",
    }
)


def changed_settings(saved: dict[str, Any], config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every setting of ``config`` that differs
    from ``saved`` (a run's ``config.yaml``) and may not change on resume
    (:data:`RESUMABLE_CHANGES` may). An option added after ``saved`` was written counts as
    having had its default value then."""
    saved = _flatten(saved)
    current = _flatten(_as_yaml(config))  # as config.yaml would hold it
    defaults = {f"train.{k}": v for k, v in _flatten(_as_yaml(LoopConfig())).items()}
    defaults |= {f"distill.{k}": v for k, v in _flatten(_as_yaml(DistillConfig())).items()}
    for key in current.keys() - saved.keys():
        if key in defaults:
            saved[key] = defaults[key]
    return [
        (key, saved.get(key), current.get(key))
        for key in sorted(saved.keys() | current.keys())
        if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
    ]


def _as_yaml(obj: Any) -> Any:
    """A dataclass as the plain data YAML would give back (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(obj)))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``; lists stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
