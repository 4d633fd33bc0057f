"""The headline compressors: SAC at 4x, SAC / PIC / ICAE at 16x, trained long on the standard QA
data, against trained truncation and trained full context at the same budget.

On SmolLM2-135M-Instruct (issue 19; settings, systems, budgets and targets in
``configs/benchmarks/headline.yaml``, the driver in ``benchmarks/_trained.py``):

* ``sac_4x``: ratio 4 on single paragraphs; QA on SQuAD train (23 articles) + NQ-open oracle
  train; learning curve on SQuAD dev (2 articles); tested on ``squad:test`` (the 100 items of
  ``benchmarks/standard/run.py``'s ``squad_r4``, whose zero-shot and kvpress rows the report
  adds, paired by item);
* ``multi_16x``: ratio 16 on multi-paragraph contexts; QA on HotpotQA train (2 distractors)
  + RULER-style qa at 768 tokens from SQuAD train; curve on HotpotQA dev; tested on HotpotQA
  (all 10 paragraphs) and RULER qa / niah at 2k and 4k tokens (again the standard items).

Stage 1 is continuation on offline text; stage 2 QA with distillation from the setting's
trained full-context model (the small-budget recipe of docs/training.md). The schedule is
constant, so a later run with a larger ``--stage2-steps`` continues the same training and
evaluates again. Resumable: rerun the same command.

    python benchmarks/headline/run.py --settings sac_4x
    python benchmarks/headline/run.py --report docs/results.md
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._trained import Benchmark  # noqa: E402

BENCHMARK = Benchmark.from_yaml(
    "headline", "benchmarks/headline/run.py", ROOT / "configs" / "benchmarks" / "headline.yaml"
)

if __name__ == "__main__":
    BENCHMARK.main(description=__doc__.splitlines()[0])
