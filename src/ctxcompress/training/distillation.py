"""Distillation from the uncompressed model (METHODS.md §7; KV-Distill, PISCO).

QA fine-tuning supervises ~5 answer tokens per example; a teacher that reads the *whole*
context gives the student a full next-token distribution at every supervised position. The
loss becomes ``CE + w * T^2 * KL(teacher_T || student_T)`` over the target tokens of the
``[LM]`` examples (answers, continuations; autoencoding rows have no teacher), with the
teacher's logits computed in the same step under ``no_grad``
(:meth:`~ctxcompress.methods.base.Compressor.forward` adds the term).

Teachers (``distill.teacher``):

* ``full_context`` — the frozen base model (the student's own weights, adapter off) reading
  ``context + prompt + target[:-1]`` as one ordinary prompt: the uncompressed model itself;
* a saved compressor folder — e.g. a trained full-context model (``prompt_tuned`` with
  ``context: full``), which already answers in the trained format. It must have been trained
  on the same base model and tokenizer, and open its decoder prompt with ``[LM]``. It reads
  exactly the student's token ids (context, prompt, target).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..methods import Compressor, load_compressor
from ..methods.base import CONFIG_FILE, read_header
from .objectives import TrainExample

FULL_CONTEXT = "full_context"


class Teacher:
    """Logits of a teacher at the target positions of ``[LM]`` examples."""

    def logits(self, examples: Sequence[TrainExample]) -> torch.Tensor:
        """``[sum of target lengths, vocab]`` float32, in example order, no gradients."""
        raise NotImplementedError


class FrozenFullContextTeacher(Teacher):
    """The frozen base model reading the whole context as an ordinary prompt."""

    def __init__(self, student: Compressor) -> None:
        self.student = student

    @torch.no_grad()
    def logits(self, examples: Sequence[TrainExample]) -> torch.Tensor:
        comp = self.student
        rows = [
            [*e.context_ids, *e.prompt_ids, *e.target_ids[:-1]] for e in examples
        ]  # position i predicts token i + 1
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            valid[i, : len(r)] = 1
        device = comp.device
        with comp.decoder_mode():
            hidden = comp.backbone(
                input_ids=ids.to(device),
                attention_mask=valid.to(device),
                position_ids=torch.arange(width, device=device)[None].expand(len(rows), -1),
                use_cache=False,
            ).last_hidden_state
        picks = [
            (i, len(e.context_ids) + len(e.prompt_ids) - 1 + j)
            for i, e in enumerate(examples)
            for j in range(len(e.target_ids))
        ]
        r, c = (torch.tensor(x, device=device) for x in zip(*picks, strict=True))
        return comp.lm.get_output_embeddings()(hidden[r, c]).float()


class CompressorTeacher(Teacher):
    """A saved (trained) compressor reading the student's token ids."""

    def __init__(self, teacher: Compressor) -> None:
        self.teacher = teacher.eval()

    @torch.no_grad()
    def logits(self, examples: Sequence[TrainExample]) -> torch.Tensor:
        logits, _, _ = self.teacher.target_logits(
            [e.context_ids for e in examples],
            [e.prompt_ids for e in examples],
            [e.target_ids for e in examples],
            [e.task for e in examples],
        )
        return logits


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
    "build_teacher",
    "check_teacher_spec",
]
