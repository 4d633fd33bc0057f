"""Distillation from the uncompressed model (METHODS.md §7; KV-Distill, PISCO).

QA fine-tuning supervises ~5 answer tokens per example; a teacher that reads the *whole*
context gives the student a full next-token distribution at every supervised position. The
loss becomes ``CE + w * T^2 * KL(teacher_T || student_T)`` over the target tokens of the
``[LM]`` examples (answers, continuations; autoencoding rows have no teacher), with the
teacher's logits computed in the same step under ``no_grad``
(:meth:`~ctxcompress.methods.base.Compressor.forward` adds the term).

With ``distill.hidden_weight = v`` the loss also gets ``v * hidden_distance``
(:func:`~ctxcompress.methods.loss.hidden_distance`): the student decoder's states at every
layer, at every input it reads after the context (``prompt + target[:-1]``), against the
teacher's at the same tokens. The KL sees ~5 answer distributions per QA example; the states
are a signal at every layer of every question token too — what the compressed context must
make the decoder *read* (the query's attention output), not only what it finally says. The
teacher's states are computed in the step (never cached).

With ``distill.top_k = k`` only the teacher's k most likely tokens per position are kept
(renormalised; :func:`~ctxcompress.methods.loss.distillation_kl`), and with
``distill.cache_dir`` those are stored on disk per example (keyed by the teacher's identity,
k and the example's token ids), so an example's teacher pass runs once for every epoch and
every run that shares the cache: the teachers here are frozen, so their logits never change.

Teachers (``distill.teacher``):

* ``full_context`` — the frozen base model (the student's own weights, adapter off) reading
  ``context + prompt + target[:-1]`` as one ordinary prompt: the uncompressed model itself;
* a saved compressor folder — e.g. a trained full-context model (``prompt_tuned`` with
  ``context: full``), which already answers in the trained format. It must have been trained
  on the same base model and tokenizer, and open its decoder prompt with ``[LM]``. It reads
  exactly the student's token ids (context, prompt, target).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from ..errors import InvalidInputError
from ..methods import Compressor, load_compressor
from ..methods.encoding import right_padded
from ..methods.persistence import CONFIG_FILE, read_header
from .objectives import TrainExample

if TYPE_CHECKING:
    from .config import DistillConfig

FULL_CONTEXT = "full_context"


class Teacher:
    """Logits of a teacher at the target positions of ``[LM]`` examples (and, for
    hidden-state distillation, its decoder states at their ``prompt + target[:-1]``)."""

    identity: str = ""
    """What makes two teachers give the same logits (the cache key's first part)."""

    def outputs(
        self, examples: Sequence[TrainExample], with_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[sum of target lengths, vocab]`` float32, in example order, and with
        ``with_states`` every decoder layer's states ``[layers, sum of (prompt + target)
        lengths - 1 per example, hidden]`` (else None); no gradients."""
        raise NotImplementedError

    def logits(self, examples: Sequence[TrainExample]) -> torch.Tensor:
        """The logits of :meth:`outputs` alone."""
        return self.outputs(examples)[0]


@dataclass
class TeacherTargets:
    """What the loss receives from a teacher: full logits, or its top-k logits and their
    vocabulary ids (``top_k`` > 0), read from / written to ``cache_dir`` when given."""

    teacher: Teacher
    top_k: int = 0
    cache_dir: Path | None = None

    def __call__(
        self, examples: Sequence[TrainExample], with_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The teacher's logits (full, or top-k values), their vocabulary ids (top-k only) and
        with ``with_states`` its decoder states. States are never cached (they are large), so
        asking for them runs the teacher on every example."""
        if with_states:
            logits, states = self.teacher.outputs(examples, with_states=True)
            if not self.top_k:
                return logits, None, states
            return *self._top_k(logits), states
        if not self.top_k:
            return self.teacher.logits(examples), None, None
        found = [self._load(e) for e in examples]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            values, indices = self._top_k(self.teacher.logits([examples[i] for i in missing]))
            sizes = [len(examples[i].target_ids) for i in missing]
            for i, v, ix in zip(missing, values.split(sizes), indices.split(sizes), strict=True):
                found[i] = (v, ix)
                self._store(examples[i], v, ix)
        values = torch.cat([f[0] for f in found])  # type: ignore[index]
        return values, torch.cat([f[1] for f in found]), None  # type: ignore[index]

    def _top_k(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's ``top_k`` logits per position and their vocabulary ids (int32)."""
        values, indices = logits.topk(self.top_k, dim=-1)
        return values, indices.int()

    def _path(self, example: TrainExample) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps(
            [
                self.teacher.identity,
                self.top_k,
                example.context_ids,
                example.prompt_ids,
                example.target_ids,
            ]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.safetensors"

    def _load(self, example: TrainExample) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._path(example)
        if path is None or not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # a damaged entry is recomputed, never trusted
            return None
        return tensors["values"], tensors["indices"]

    def _store(self, example: TrainExample, values: torch.Tensor, indices: torch.Tensor) -> None:
        path = self._path(example)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(
            {"values": values.contiguous().cpu(), "indices": indices.contiguous().cpu()}, str(tmp)
        )
        os.replace(tmp, path)  # atomic: readers never see half an entry


class FrozenFullContextTeacher(Teacher):
    """The frozen base model reading the whole context as an ordinary prompt."""

    def __init__(self, student: Compressor) -> None:
        self.student = student
        self.identity = f"{FULL_CONTEXT}:{student.base_fingerprint}"

    @torch.no_grad()
    def outputs(
        self, examples: Sequence[TrainExample], with_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        comp = self.student
        # Position i of a row predicts its token i + 1.
        ids, valid = right_padded(
            [[*e.context_ids, *e.prompt_ids, *e.target_ids[:-1]] for e in examples]
        )
        width, device = ids.shape[1], comp.device
        with comp.frozen_mode():  # the frozen model: never the student's decoder adapter
            out = comp.backbone(
                input_ids=ids.to(device),
                attention_mask=valid.to(device),
                position_ids=torch.arange(width, device=device)[None].expand(len(examples), -1),
                use_cache=False,
                output_hidden_states=with_states,
            )
        picks = [
            (i, len(e.context_ids) + len(e.prompt_ids) - 1 + j)
            for i, e in enumerate(examples)
            for j in range(len(e.target_ids))
        ]
        r, c = (torch.tensor(x, device=device) for x in zip(*picks, strict=True))
        logits = comp.lm.get_output_embeddings()(out.last_hidden_state[r, c]).float()
        if not with_states:
            return logits, None
        # The inputs after the context: prompt + target[:-1] (as the student's decoder reads
        # them after its [LM] opener).
        after = [
            (i, len(e.context_ids) + j)
            for i, e in enumerate(examples)
            for j in range(len(e.prompt_ids) + len(e.target_ids) - 1)
        ]
        r = torch.tensor([i for i, _ in after], dtype=torch.long, device=device)
        c = torch.tensor([j for _, j in after], dtype=torch.long, device=device)
        return logits, torch.stack(out.hidden_states[1:])[:, r, c]


class CompressorTeacher(Teacher):
    """A saved (trained) compressor reading the student's token ids."""

    def __init__(self, teacher: Compressor) -> None:
        self.teacher = teacher.eval()
        self.identity = f"{teacher.method}:{teacher.fingerprint}"

    @torch.no_grad()
    def outputs(
        self, examples: Sequence[TrainExample], with_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.teacher.target_logits(
            [e.context_ids for e in examples],
            [e.prompt_ids for e in examples],
            [e.target_ids for e in examples],
            [e.task for e in examples],
            with_states=with_states,
        )
        return out.logits, out.states


def check_teacher_spec(teacher: str) -> None:
    """Fail fast (before any model is loaded) on a teacher that cannot exist."""
    if teacher == FULL_CONTEXT:
        return
    if not (Path(teacher) / CONFIG_FILE).is_file():
        raise InvalidInputError(
            f"distill.teacher={teacher!r} is neither {FULL_CONTEXT!r} (the frozen model reading "
            "the whole context) nor a saved compressor folder (one holding "
            f"{CONFIG_FILE}, e.g. <output_dir>/compressor of a trained full-context run)"
        )


def build_teacher_targets(config: DistillConfig, student: Compressor) -> TeacherTargets:
    """The teacher of ``config`` for ``student``, with its top-k and cache settings."""
    vocab = student.lm.get_output_embeddings().weight.shape[0]
    if config.top_k > vocab:
        raise InvalidInputError(f"distill.top_k={config.top_k} exceeds the vocabulary ({vocab})")
    cache = Path(config.cache_dir) if config.cache_dir else None
    return TeacherTargets(build_teacher(config.teacher, student), config.top_k, cache)


def build_teacher(teacher: str, student: Compressor) -> Teacher:
    """The teacher named by ``distill.teacher`` for ``student``; refuses one that does not
    share the student's base model and tokenizer (the KL compares the same vocabulary at the
    same tokens)."""
    check_teacher_spec(teacher)
    if teacher == FULL_CONTEXT:
        return FrozenFullContextTeacher(student)
    header = read_header(Path(teacher))
    expected = student.base_fingerprint
    if header["base_model"]["fingerprint"] != expected:
        raise InvalidInputError(
            f"distill.teacher={teacher} was trained on base model "
            f"{header['base_model']['fingerprint']} ({header['base_model']['source']}), the "
            f"student on {expected} ({student.base_source}): a teacher must share the "
            "student's base model"
        )
    loaded = load_compressor(teacher, device=student.device, dtype=student.dtype)
    mine, theirs = student.tokenizer, loaded.tokenizer
    if mine.get_vocab() != theirs.get_vocab() or mine.eos_token_id != theirs.eos_token_id:
        raise InvalidInputError(
            f"distill.teacher={teacher} uses another tokenizer than the student: the teacher "
            "must read the student's token ids"
        )
    if not loaded.uses_lm_token:
        raise InvalidInputError(
            f"distill.teacher={teacher} is a {loaded.method!r} model without an [LM] opener; "
            f"use distill.teacher={FULL_CONTEXT} for the frozen model on the whole context"
        )
    loaded.requires_grad_(False)
    return CompressorTeacher(loaded)


__all__ = [
    "FULL_CONTEXT",
    "CompressorTeacher",
    "FrozenFullContextTeacher",
    "Teacher",
    "TeacherTargets",
    "build_teacher",
    "build_teacher_targets",
    "check_teacher_spec",
]
