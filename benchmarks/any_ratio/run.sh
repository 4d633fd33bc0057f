#!/usr/bin/env bash
# One SAC for several ratios (train.ratios, issue 20 part 2) against single-ratio SACs of the
# same recipe and budget, on the embedded SmolLM2-135M: the recipe benchmark's best SAC row
# (sac-all_shared: sink, token-scale vectors at 10x lr, one shared anchor embedding,
# distillation from the trained full-context model; 150 QA steps on NQ-open) trained
#   - at ratios drawn from {4, 16} per micro-batch (any-ratio), and
#   - at 16 alone (the single-ratio 4x one is the recipe's own row),
# then each evaluated on the first 200 NQ-open test items at 4x and 16x, with the paired
# differences (ctxcompress report --against). Resumable: trainings resume from their
# checkpoints, finished evaluations are kept.
#
#   benchmarks/any_ratio/run.sh          (needs benchmarks/recipe/results/train/ from
#                                         benchmarks/recipe/run.py: the configs and teacher)
set -euo pipefail
OUT=${OUT:-benchmarks/any_ratio/results}
RUNS=${RUNS:-benchmarks/any_ratio/runs}   # gitignored training folders
CC=${CC:-.venv/bin/ctxcompress}
RECIPE=benchmarks/recipe/results/train/sac-all_shared
mkdir -p "$OUT" "$RUNS"

train() {  # train NAME OVERRIDES...
  local name=$1
  shift
  [ -d "$RUNS/$name/compressor" ] && { echo "have $name"; return; }
  local sets=()
  for item in "$@"; do sets+=(--set "$item"); done
  "$CC" train --config "$RECIPE/config.yaml" --set "output_dir=$RUNS/$name" "${sets[@]}"
}
train any_4_16 "train.ratios=[4, 16]" method_options.ratio=4
train single_16 method_options.ratio=16

run() {  # run NAME MODEL [ARGS...]: one evaluation, kept when it exists
  local name=$1 model=$2
  shift 2
  [ -f "$OUT/$name.json" ] && { echo "have $name"; return; }
  "$CC" eval --data nq-oracle:test --limit 200 --model "$model" --label "$name" \
    --out "$OUT/$name.json" "$@"
}
run single@4x "$RECIPE/compressor"
run single@16x "$RUNS/single_16/compressor"
run any@4x "$RUNS/any_4_16/compressor"
run any@16x "$RUNS/any_4_16/compressor" --at-ratio 16

"$CC" report "$OUT"/single@4x.json "$OUT"/any@4x.json --against single@4x \
  --out "$OUT/r4.png" | tee "$OUT/r4.md"
"$CC" report "$OUT"/single@16x.json "$OUT"/any@16x.json --against single@16x \
  --out "$OUT/r16.png" | tee "$OUT/r16.md"
