"""Issue 38's lever screens: SAC at 4x with chosen anchors, a ratio ramp and a decoder adapter
(alone and combined, bf16 steps), against trained truncation at the same capacity.

On SmolLM2-135M-Instruct (settings, systems, budgets and targets in
``configs/benchmarks/levers.yaml``, the driver in ``benchmarks/_trained.py``): one stage 1
shared by every SAC row, then 400 QA steps on SQuAD train + NQ-open oracle train with a dev-F1
point every 100 steps on 100 ``squad:dev`` items; tested on the 100 ``squad:test`` items of the
headline (paired by item) and on RULER ``niah_single`` at 2k tokens. Resumable: rerun the same
command; a larger ``--stage2-steps`` continues the constant-schedule runs.

    python benchmarks/levers/run.py --systems sac_best,trained_truncation_decoder
    python benchmarks/levers/run.py --report docs/training.md
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._trained import Benchmark  # noqa: E402

BENCHMARK = Benchmark.from_yaml(
    "levers", "benchmarks/levers/run.py", ROOT / "configs" / "benchmarks" / "levers.yaml"
)

if __name__ == "__main__":
    BENCHMARK.main(description=__doc__.splitlines()[0])
