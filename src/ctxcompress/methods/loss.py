"""The training loss of every compressor: compress, teacher-force the target after
``[task] + prompt``, cross-entropy at the supervised positions, plus the distillation terms
(METHODS.md §7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..errors import InvalidInputError


class TargetOutputs(NamedTuple):
    """What :meth:`TrainingLossMixin.target_logits` gives back."""

    logits: torch.Tensor
    """``[N, vocab]`` float32: the logits that predict each of the N target tokens."""
    labels: torch.Tensor
    """``[N]``: the target tokens."""
    rows: torch.Tensor
    """``[N]``: the batch row each target token belongs to."""
    states: torch.Tensor | None = None
    """``[layers, M, hidden]``: every decoder layer's output at the M inputs that follow the
    context in every decoder, the tokens ``prompt + target[:-1]`` of each row (in row order;
    the ``[LM]``/``[AE]`` opener is not among them). Only when asked for."""
    state_rows: torch.Tensor | None = None
    """``[M]``: the batch row each of those inputs belongs to."""


class TrainingLossMixin:
    """:meth:`target_logits` and :meth:`forward` of a
    :class:`~ctxcompress.methods.base.Compressor`."""

    def target_logits(
        self,
        context_ids: Sequence[Sequence[int]],
        prompt_ids: Sequence[Sequence[int]],
        target_ids: Sequence[Sequence[int]],
        tasks: Sequence[str] | None = None,
        *,
        with_states: bool = False,
    ) -> TargetOutputs:
        """Compress, then teacher-force ``target`` after ``[task] + prompt``: the float32
        logits ``[N, vocab]`` that predict each of the N target tokens (all rows, in order),
        the N labels, and the row each belongs to; with ``with_states`` also every decoder
        layer's states at the ``prompt + target[:-1]`` inputs (:class:`TargetOutputs`). The LM
        head runs only at the N positions."""
        contexts = self.encode_ids(context_ids)
        inputs = [list(p) + list(t)[:-1] for p, t in zip(prompt_ids, target_ids, strict=True)]
        layers = self.decoder_hidden(contexts, inputs, tasks, all_layers=with_states)
        hidden = layers[-1] if with_states else layers
        width = hidden.shape[1]
        rows, cols, labels = [], [], []
        state_rows, state_cols = [], []
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
            inputs_after_opener = len(p) + len(t) - 1
            state_rows += [row] * inputs_after_opener
            state_cols += range(width - inputs_after_opener, width)
        if not labels:
            raise InvalidInputError("a training batch has no target tokens")
        device = hidden.device
        row_index = torch.tensor(rows, device=device)
        selected = hidden[row_index, torch.tensor(cols, device=device)]
        logits = self.lm.get_output_embeddings()(selected).float()
        labels_t = torch.tensor(labels, device=device)
        if not with_states:
            return TargetOutputs(logits, labels_t, row_index)
        state_index = torch.tensor(state_rows, dtype=torch.long, device=device)
        states = layers[:, state_index, torch.tensor(state_cols, dtype=torch.long, device=device)]
        return TargetOutputs(logits, labels_t, row_index, states, state_index)

    def pop_auxiliary_loss(self) -> torch.Tensor | None:
        """A method's own loss term from its last training encode, added per target token
        (none by default; SAC's learned anchor scorer has one)."""
        return None

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
        teacher_states: torch.Tensor | None = None,
        hidden_weight: float = 0.0,
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
        (see :func:`distillation_kl`).

        Hidden-state distillation: with ``teacher_states`` — the teacher's every-layer states
        at the ``prompt + target[:-1]`` inputs of the rows ``teacher_rows``, laid out as
        :attr:`TargetOutputs.states` — it adds ``hidden_weight * hidden_distance(student,
        teacher)``: a dense signal at every layer of every input the decoder reads after the
        context, where the KL sees only the target tokens' output distributions.
        A method's own term (:meth:`pop_auxiliary_loss`, e.g. SAC's learned anchor scorer)
        is added once per target token.
        ``last_loss_terms`` keeps the three sums (detached) for logging.
        """
        wants_states = teacher_states is not None and len(teacher_rows) > 0
        out = self.target_logits(
            context_ids, prompt_ids, target_ids, tasks, with_states=wants_states
        )
        ce = torch.nn.functional.cross_entropy(out.logits, out.labels, reduction="sum")
        loss = ce
        kl = torch.zeros((), device=ce.device)
        hidden = torch.zeros((), device=ce.device)
        distilled = torch.tensor(list(teacher_rows), dtype=torch.long, device=ce.device)
        if teacher_logits is not None and len(teacher_rows):
            student = out.logits[torch.isin(out.rows, distilled)]
            expected = student.shape if teacher_indices is None else teacher_indices.shape
            if teacher_logits.shape != expected or len(teacher_logits) != len(student):
                raise InvalidInputError(
                    f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                    f"{tuple(student.shape)} target positions: the teacher must read the same "
                    "tokens with the same vocabulary"
                )
            kl = distillation_kl(student, teacher_logits.float(), temperature, teacher_indices)
            loss = loss + distill_weight * temperature**2 * kl
        if wants_states:
            assert out.states is not None and out.state_rows is not None
            student_states = out.states[:, torch.isin(out.state_rows, distilled)]
            if teacher_states.shape != student_states.shape:
                raise InvalidInputError(
                    f"teacher states {tuple(teacher_states.shape)} do not match the student's "
                    f"{tuple(student_states.shape)}: the teacher must read the same tokens with "
                    "a decoder of the same depth and width"
                )
            hidden = hidden_distance(student_states, teacher_states)
            loss = loss + hidden_weight * hidden
        auxiliary = self.pop_auxiliary_loss()  # e.g. SAC's learned anchor scorer
        if auxiliary is not None:
            loss = loss + auxiliary * len(out.labels)
        self.last_loss_terms = {
            "ce": float(ce.detach()),
            "kl": float(kl.detach()),
            "hidden": float(hidden.detach()),
        }
        return loss, len(out.labels)


def hidden_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``sum over inputs of mean over layers of |s - t|^2 / |t|^2``: how far the student's
    decoder states (``[layers, M, hidden]``) sit from the teacher's, each relative to the
    teacher state's own size (so that no layer, and no position with a large residual
    stream, dominates). 0 exactly when the states agree; a student that predicts zeros
    scores 1 per input."""
    teacher = teacher.float()
    error = (student.float() - teacher).pow(2).sum(-1)
    return (error / teacher.pow(2).sum(-1).clamp_min(1e-12)).mean(0).sum()


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
