"""How much each context token is worth keeping, scored by the frozen base model: where SAC's
anchors go when ``anchor_selection`` is not the uniform stride (issue 38, lever 1).

- :func:`surprisal`: ``-log p(t_i | t_<i)`` under the frozen model — the tokens the model
  could not have guessed. Before any training, BOS plus the most surprising quarter of an
  NQ passage gave answer NLL 4.28 against 4.65 for SAC's uniform layout and 3.81 for the full
  context (80 NQ-open oracle items, issue 38).
- :func:`reconstruction_importance`: KVzip's query-agnostic importance (Kim et al., "KVzip:
  Query-Agnostic KV Cache Compression with Context Reconstruction", arXiv 2505.23416): the
  frozen model reads ``context + "repeat the context" + context``, and a context token scores
  the most attention any head of any layer pays it while the second copy is reproduced.
  Tokens the reconstruction needs come in whole spans, where surprisal picks single tokens.

- a learned scorer (SAC's ``anchor_selection: learned``): a linear head on the frozen
  model's last hidden states (:func:`frozen_hidden`) trained to imitate one of the two
  (:func:`imitation_loss`), as KVzap learns to predict KVzip's scores from hidden states
  (Jegou et al., NVIDIA kvpress, 2025): one frozen pass at compression time and no eager
  attention, where "importance" needs a pass twice the text's length.

The scoring passes run the frozen model without gradients: the caller switches adapters off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

RECONSTRUCTION_PROMPT = "\n\nRepeat the previous context exactly.\n"
"""What the model reads between the two copies of the context (KVzip's repeat prompt)."""

_LOGIT_ROWS = 256  # LM-head rows per slice: a 2k-token document never holds all its logits


@torch.no_grad()
def surprisal(
    lm: nn.Module,
    rows: Sequence[Sequence[int]],
    position_start: int,
    hidden_states: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Per token of each row, ``-log p(token | the row before it)`` in nats (float32, on the
    CPU); the first token, which nothing predicts, scores ``+inf`` (it is always kept first).
    ``hidden_states``: the rows' :func:`frozen_hidden`, when the caller has them already."""
    device = lm.get_input_embeddings().weight.device
    head = lm.get_output_embeddings()
    if hidden_states is None:
        hidden_states = frozen_hidden(lm, rows, position_start)
    out = []
    for row, hidden in zip(rows, hidden_states, strict=True):
        ids = torch.tensor([list(row)], dtype=torch.long, device=device)
        scores = torch.full((len(row),), float("inf"))
        for start in range(0, len(row) - 1, _LOGIT_ROWS):
            end = min(start + _LOGIT_ROWS, len(row) - 1)
            logits = head(hidden[start:end]).float()
            nll = -torch.log_softmax(logits, -1).gather(1, ids[0, start + 1 : end + 1, None])
            scores[start + 1 : end + 1] = nll[:, 0].cpu()
        out.append(scores)
    return out


@torch.no_grad()
def frozen_hidden(
    lm: nn.Module, rows: Sequence[Sequence[int]], position_start: int
) -> list[torch.Tensor]:
    """The model's last (final-normed) hidden states ``[len(row), hidden]`` of each row read
    causally: what surprisal's LM head and the learned scorer read."""
    device = lm.get_input_embeddings().weight.device
    out = []
    for row in rows:
        ids = torch.tensor([list(row)], dtype=torch.long, device=device)
        positions = torch.arange(len(row), device=device)[None] + position_start
        out.append(lm.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False)[0][0])
    return out


def imitation_loss(
    predicted: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
) -> torch.Tensor:
    """How far a learned scorer's scores are from a signal it imitates (KVzap regresses
    KVzip's scores): per row, the mean squared error against the signal standardised to mean
    0 and std 1 (only the order matters to a top-k choice), the first token left out (it
    always leads: BOS, the sink); the mean over rows."""
    losses = []
    for score, target in zip(predicted, targets, strict=True):
        score, target = score[1:].float(), target[1:].to(score.device).float()
        keep = torch.isfinite(target)
        score, target = score[keep], target[keep]
        if len(target) < 2:
            continue
        target = (target - target.mean()) / target.std().clamp_min(1e-6)
        losses.append((score - target).pow(2).mean())
    if not losses:
        return torch.zeros((), device=predicted[0].device if predicted else None)
    return torch.stack(losses).mean()


@torch.no_grad()
def reconstruction_importance(
    lm: nn.Module,
    rows: Sequence[Sequence[int]],
    prompt_ids: Sequence[int],
    position_start: int,
    window: int,
) -> list[torch.Tensor]:
    """Per token of each row, KVzip's importance: the largest attention weight any head of
    any layer gives it while the model reproduces the row after ``prompt_ids``. Rows longer
    than ``window`` are scored window by window (KVzip's chunked scoring; SAC passes its
    chunk size), each window reconstructed on its own. float32 on the CPU, in [0, 1]."""
    device = lm.get_input_embeddings().weight.device
    prompt = list(prompt_ids)
    out = []
    with _eager_attention(lm), _attention_maxima(lm) as maxima:
        for row in rows:
            scores = torch.zeros(len(row))
            for start in range(0, len(row), window):
                piece = list(row[start : start + window])
                n, p = len(piece), len(prompt)
                ids = torch.tensor([piece + prompt + piece], dtype=torch.long, device=device)
                positions = torch.arange(ids.shape[1], device=device)[None] + position_start
                maxima.select(queries=slice(n + p, 2 * n + p), keys=slice(0, n))
                lm.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False)
                scores[start : start + n] = maxima.take()
            out.append(scores)
    return out


@contextlib.contextmanager
def _eager_attention(lm: nn.Module) -> Iterator[None]:
    """Run ``lm`` with eager attention, whose modules return their attention weights."""
    previous = lm.config._attn_implementation
    if previous == "eager":
        yield
        return
    lm.set_attn_implementation("eager")
    try:
        yield
    finally:
        lm.set_attn_implementation(previous)


class _Maxima:
    """Forward hooks that keep, per key, the largest weight of the selected queries, over
    heads and layers, and drop each layer's weights at once (no ``output_attentions``)."""

    def __init__(self) -> None:
        self.queries, self.keys = slice(None), slice(None)
        self.best: torch.Tensor | None = None

    def select(self, queries: slice, keys: slice) -> None:
        self.queries, self.keys, self.best = queries, keys, None

    def hook(self, module: nn.Module, args: object, output: object) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError(
                f"{type(module).__name__} returned no attention weights under eager attention: "
                "reconstruction importance cannot score this architecture"
            )
        layer = weights[0, :, self.queries, self.keys].float().amax(dim=(0, 1)).cpu()
        self.best = layer if self.best is None else torch.maximum(self.best, layer)

    def take(self) -> torch.Tensor:
        if self.best is None:
            raise RuntimeError("no attention layer reported its weights")
        best, self.best = self.best, None
        return best


@contextlib.contextmanager
def _attention_maxima(lm: nn.Module) -> Iterator[_Maxima]:
    maxima = _Maxima()
    handles = [layer.self_attn.register_forward_hook(maxima.hook) for layer in _layers(lm)]
    try:
        yield maxima
    finally:
        for handle in handles:
            handle.remove()


def _layers(lm: nn.Module) -> nn.ModuleList:
    return lm.get_decoder().layers


def top_scoring_offsets(scores: torch.Tensor, count: int, first: int = 0) -> list[int]:
    """The ``count`` offsets at or after ``first`` with the highest ``scores``, in increasing
    order (ties go to the earlier token, so the choice is deterministic)."""
    candidates = scores[first:]
    count = min(count, len(candidates))
    # A stable descending sort keeps equal scores in position order.
    order = torch.sort(candidates, descending=True, stable=True).indices[:count]
    return sorted((order + first).tolist())


__all__ = [
    "RECONSTRUCTION_PROMPT",
    "frozen_hidden",
    "imitation_loss",
    "reconstruction_importance",
    "surprisal",
    "top_scoring_offsets",
]
