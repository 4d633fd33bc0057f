"""A fair small-scale comparison: every system gets the same budget and the same two stages.

On SmolLM2-135M-Instruct and the shared NQ-open oracle data, at two settings:

* ``r4``:  ratio 4 on single gold passages (~150 tokens);
* ``r16``: ratio 16 on 5-passage contexts (~620 tokens: the gold passage among 4 distractors,
  at a position drawn per item, recorded in every prediction and tabulated).

Systems (all trained with the same data, steps, batch and optimiser; settings, systems, loop
settings and run order are defined in ``configs/benchmarks/fair.yaml``):

* the compressors SAC, PIC, ICAE, 500x, EPL (LoRA rank 32 on q/v, as ``configs/smollm2``);
* ``trained_truncation``: the head of the context cut to the same number of entries as the
  compressors keep (prompt prefix included), encoded by a LoRA
  encoder of the same rank and read by the frozen decoder after a learned ``[LM]``;
* ``trained_full``: the same with the whole context (no compression): the upper bound with
  the compressors' trainable budget;
* ``pt_full`` / ``pt_truncation`` / ``pt_none``: the frozen model reads the whole context /
  its head cut to the budget / nothing, and only a soft prompt (8 vectors + ``[LM]``) is
  trained (~5k parameters instead of LoRA's ~1.8M): the issue's prompt-tuned upper bound,
  the cheapest compressor, the lower bound;
* zero-shot full context and truncation through the chat template, for reference;
* ``<compressor>_recipe``: the five compressors again on the small-budget recipe of the
  "compressors that learn" issue (attention sink, token-scale learned vectors with 10x lr,
  no autoencoding, stage-2 distillation from this setting's ``trained_full``; docs/training.md).

Recipe: stage 1 (``--stage1-steps``) on offline text: the ACLSum full-text papers from PyPI
and the NQ-train long-answer paragraphs, cut into windows; continuation for everyone, plus
autoencoding for the methods whose papers use it (ICAE, 500x, EPL, PIC). Stage 2
(``--stage2-steps``) QA fine-tuning on the NQ train split, starting from stage 1. Learning
curve: dev-split F1 (first ``--dev-limit`` items) every ``--curve-every`` stage-2 steps, with
the cumulative training time, so "reaches a given quality sooner" can be read off in steps
and in seconds. Final scores on the first ``--eval-limit`` test items.

The driver is ``benchmarks/_trained.py`` (shared with the headline benchmark). Everything is
checkpointed under ``--out``; rerun the same command to resume (finished stages, curve points
and evaluations are reused). Writes per setting ``curves.json``, ``curves.png``,
``eval/<system>.json``, and ``summary.json`` overall.

    python benchmarks/fair/run.py --out benchmarks/fair/results
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._trained import Benchmark  # noqa: E402

BENCHMARK = Benchmark.from_yaml(
    "fair", "benchmarks/fair/run.py", ROOT / "configs" / "benchmarks" / "fair.yaml"
)

if __name__ == "__main__":
    BENCHMARK.main(description=__doc__.splitlines()[0])
