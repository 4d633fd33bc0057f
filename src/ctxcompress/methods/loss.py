"""The training loss of every compressor: compress, teacher-force the target after
``[task] + prompt``, cross-entropy at the supervised positions, plus the distillation term
(METHODS.md §7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InvalidInputError


class TrainingLossMixin:
    """:meth:`target_logits` and :meth:`forward` of a
    :class:`~ctxcompress.methods.base.Compressor`."""

    def target_logits(
        self,
        context_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compress, then teacher-force ``target`` after ``[task] + prompt``: the float32
        logits ``[N, vocab]`` that predict each of the N target tokens (all rows, in order),
        the N labels, and the row each belongs to. The LM head runs only there."""
        contexts = self.encode_ids(context_ids)
        inputs = [list(p) + list(t)[:-1] for p, t in zip(prompt_ids, target_ids, strict=True)]
        hidden = self.decoder_hidden(contexts, inputs, tasks)
        width = hidden.shape[1]
        rows, cols, labels = [], [], []
        tasks = tasks or ["lm"] * len(target_ids)
        for row, (p, t, task) in enumerate(zip(prompt_ids, target_ids, tasks, strict=True)):
            vectors = self.decoder_opener(task)  # [LM]/[AE] (and prompt vectors), if any
            opener = 0 if vectors is None else int(vectors.shape[0])
            if opener + len(p) == 0:
                raise InvalidInputError("a method without [LM] needs a non-empty prompt")
            # The row is [opener vectors] + p + t[:-1], right-aligned; the input just before
            # t[i] (the last prompt token, or the last opener vector) predicts it.
            before_target = width - (opener + len(p) + len(t) - 1) + opener + len(p) - 1
            for i, token in enumerate(t):
                rows.append(row)
                cols.append(before_target + i)
                labels.append(token)
        if not labels:
            raise InvalidInputError("a training batch has no target tokens")
        device = hidden.device
        row_index = torch.tensor(rows, device=device)
        selected = hidden[row_index, torch.tensor(cols, device=device)]
        logits = self.lm.get_output_embeddings()(selected).float()
        return logits, torch.tensor(labels, device=device), row_index

    def forward(
        self,
        context_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
        *,
        teacher_logits: torch.Tensor | None = None,
        teacher_indices: torch.Tensor | None = None,
        teacher_rows: Sequence[int] = (),
        distill_weight: float = 0.0,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, int]:
        """Training loss: compress, then teacher-force ``target`` after ``[task] + prompt``.

        Returns the *sum* of token cross-entropies over all target tokens and their count
        (the trainer normalises by the global count, so that any split of a batch over
        processes and accumulation steps gives the same gradient). Logits are computed only
        at the supervised positions.

        Distillation (METHODS.md §7): with ``teacher_logits`` — a teacher's logits at the
        target positions of the rows ``teacher_rows`` (in row order, as
        :meth:`target_logits` gives them) — the sum becomes
        ``CE + distill_weight * T^2 * KL(teacher_T || student_T)`` summed over those
        positions, ``T = temperature``. With ``teacher_indices`` ``[N, k]`` the teacher is
        sparse: ``teacher_logits`` ``[N, k]`` are its top-k logits at those vocabulary ids
        (see :func:`distillation_kl`). ``last_loss_terms`` keeps the two sums (detached) for
        logging.
        """
        logits, labels, row_index = self.target_logits(context_ids, prompt_ids, target_ids, tasks)
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        loss = ce
        kl = torch.zeros((), device=ce.device)
        if teacher_logits is not None and len(teacher_rows):
            chosen = torch.isin(row_index, torch.tensor(list(teacher_rows), device=ce.device))
            student = logits[chosen]
            expected = student.shape if teacher_indices is None else teacher_indices.shape
            if teacher_logits.shape != expected or len(teacher_logits) != len(student):
                raise InvalidInputError(
                    f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                    f"{tuple(student.shape)} target positions: the teacher must read the same "
                    "tokens with the same vocabulary"
                )
            kl = distillation_kl(student, teacher_logits.float(), temperature, teacher_indices)
            loss = ce + distill_weight * temperature**2 * kl
        self.last_loss_terms = {"ce": float(ce.detach()), "kl": float(kl.detach())}
        return loss, len(labels)


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    teacher_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum over positions of KL(softmax(teacher/T) || softmax(student/T))`` (Hinton et
    al.'s distillation term; multiply by ``T^2`` to keep its gradient scale).

    Sparse teacher (``teacher_indices`` ``[N, k]``, ``teacher_logits`` ``[N, k]``: its top-k
    logits): the teacher is renormalised over its top k tokens and compared with the
    student's full-vocabulary probabilities there, ``sum_k p_k (log p_k - log q_k)``. That is
    >= 0 and 0 only when the student puts exactly the teacher's top-k probabilities there.
    """
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    if teacher_indices is not None:
        student = student.gather(-1, teacher_indices.to(student.device).long())
    return torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="sum")
